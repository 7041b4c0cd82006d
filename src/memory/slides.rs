//! The seminar's tables (slides 6 and 14) and the footprint of a loaded model counted from its
//! tensors, beside the formula.

use serde::Serialize;

use super::QuantConstants;
use super::{full_finetune_slide5, gb, group_digits, weights_bytes, Precision};
use crate::error::Result;
use crate::model::config::{Config, Family};
use crate::model::llama::Llama;
use crate::model::summary::ModelSummary;

/// One row of slide 6's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slide6Row {
    /// The model.
    pub model: String,
    /// Its parameters.
    pub params: u64,
    /// Weights in fp32: 4 B × P.
    pub fp32: u64,
    /// Weights in fp16: 2 B × P.
    pub fp16: u64,
    /// Full fine-tuning by slide 5 without activations: 4·P·(1 + 2 + 2).
    pub full_finetune: u64,
}

fn row(model: &str, params: u64) -> Slide6Row {
    Slide6Row {
        model: model.to_string(),
        params,
        fp32: weights_bytes(params, Precision::Fp32),
        fp16: weights_bytes(params, Precision::Fp16),
        full_finetune: full_finetune_slide5(params).total(),
    }
}

/// Slide 6 with the rounded counts the slide uses: Phi-3 mini 3.8B, Llama 3 8B, Llama 3 70B
/// (fp32 15.2 / 32 / 280 GB, fp16 7.6 / 16 / 140 GB).
pub fn slide6_table() -> Vec<Slide6Row> {
    vec![
        row("Phi-3 mini (3.8B)", 3_800_000_000),
        row("Llama 3 8B", 8_000_000_000),
        row("Llama 3 70B", 70_000_000_000),
    ]
}

/// A Llama-shaped config with only the shape fields that count parameters set.
fn shape(vocab: usize, h: usize, i: usize, layers: usize, heads: usize, kv: usize) -> Config {
    Config {
        family: Family::Llama,
        vocab_size: vocab,
        hidden_size: h,
        intermediate_size: i,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim: h / heads,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 8192,
        tie_word_embeddings: false,
        attention_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// Slide 6 with the true parameter counts, computed with [`Config::num_parameters`] from the
/// models' `config.json` shapes: Phi-3-mini-4k-instruct (vocab 32064, hidden 3072, MLP 8192,
/// 32 layers, 32 heads, no GQA; its fused `qkv_proj`/`gate_up_proj` hold as many parameters as
/// separate projections), Meta-Llama-3-8B (128256, 4096, 14336, 32 layers, 32 heads, 8 kv) and
/// Meta-Llama-3-70B (128256, 8192, 28672, 80 layers, 64 heads, 8 kv); none ties embeddings.
pub fn slide6_table_true_counts() -> Vec<Slide6Row> {
    [
        ("Phi-3 mini", shape(32064, 3072, 8192, 32, 32, 32)),
        ("Llama 3 8B", shape(128256, 4096, 14336, 32, 32, 8)),
        ("Llama 3 70B", shape(128256, 8192, 28672, 80, 64, 8)),
    ]
    .iter()
    .map(|(name, cfg)| row(name, cfg.num_parameters() as u64))
    .collect()
}

/// Slide 6's rows as a plain-text table in GB (10⁹ bytes).
pub fn slide6_text(rows: &[Slide6Row]) -> String {
    let mut s = format!(
        "{:<20} {:>16} {:>10} {:>10} {:>22}\n",
        "model", "parameters", "FP32 GB", "FP16 GB", "full FT GB (slide 5)"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<20} {:>16} {:>10.1} {:>10.1} {:>22.1}\n",
            r.model,
            group_digits(r.params),
            gb(r.fp32),
            gb(r.fp16),
            gb(r.full_finetune)
        ));
    }
    s
}

/// A model's weights in fp32 and in NF4, with and without the block constants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuantizedSizes {
    /// Parameters.
    pub params: u64,
    /// fp32: 32 bits each.
    pub fp32: u64,
    /// NF4, bare 4 bits.
    pub nf4: u64,
    /// NF4 + fp32 absmax per 64: 4.5 bits.
    pub nf4_absmax: u64,
    /// NF4 + double-quantized constants: ≈ 4.127 bits.
    pub nf4_double_quant: u64,
}

/// fp32 vs NF4 sizes of `params` weights ([`weights_bytes`]).
pub fn quantized_sizes(params: u64) -> QuantizedSizes {
    let nf4 = |c| weights_bytes(params, Precision::Nf4(c));
    QuantizedSizes {
        params,
        fp32: weights_bytes(params, Precision::Fp32),
        nf4: nf4(QuantConstants::Uncounted),
        nf4_absmax: nf4(QuantConstants::Absmax),
        nf4_double_quant: nf4(QuantConstants::DoubleQuant),
    }
}

/// Slide 14: an 8B model, 32 GB in fp32 vs ≈ 4 GB in NF4 (4.5 GB with fp32 absmax constants,
/// ≈ 4.13 GB with double quantization).
pub fn slide14() -> QuantizedSizes {
    quantized_sizes(8_000_000_000)
}

/// A loaded model's bytes counted from its tensors, beside the formula.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// The model's dtype.
    pub dtype: String,
    /// Its precision.
    pub precision: Precision,
    /// Parameters counted from the tensors (a tied `lm_head` once).
    pub counted_params: u64,
    /// Bytes counted from the tensors ([`ModelSummary::total_bytes`]).
    pub counted_bytes: u64,
    /// [`Config::num_parameters`].
    pub config_params: u64,
    /// [`weights_bytes`]`(config_params, precision)`.
    pub formula_bytes: u64,
}

impl Footprint {
    /// Whether the counted bytes equal the formula's.
    pub fn agrees(&self) -> bool {
        self.counted_bytes == self.formula_bytes
    }

    /// Counted and formula side by side, as plain text.
    pub fn to_text(&self) -> String {
        format!(
            "counted from tensors: {:>16} bytes ({:.3} GB)  Σ elements × dtype size, {} params\n\
             formula:              {:>16} bytes ({:.3} GB)  {} bit × {} / 8\n\
             agree: {}\n",
            group_digits(self.counted_bytes),
            gb(self.counted_bytes),
            group_digits(self.counted_params),
            group_digits(self.formula_bytes),
            gb(self.formula_bytes),
            self.precision.bits_per_param(),
            group_digits(self.config_params),
            if self.agrees() { "yes" } else { "no" },
        )
    }
}

/// The bytes of `model`'s tensors ([`ModelSummary::of`]) beside
/// `weights_bytes(config.num_parameters(), precision of model.dtype())`. They agree exactly for
/// a dense model; a quantized or adapted model shows the difference. Errors for a dtype other
/// than f32, f16 or bf16.
pub fn footprint_of_model(model: &Llama) -> Result<Footprint> {
    let precision = Precision::from_dtype(model.dtype())?;
    let summary = ModelSummary::of(model);
    let config_params = model.config().num_parameters() as u64;
    Ok(Footprint {
        dtype: summary.dtype.clone(),
        precision,
        counted_params: summary.total_parameters as u64,
        counted_bytes: summary.total_bytes as u64,
        config_params,
        formula_bytes: weights_bytes(config_params, precision),
    })
}
