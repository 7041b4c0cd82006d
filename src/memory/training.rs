//! Full fine-tuning: the seminar's slide-5 estimate, the mixed-precision Adam accounting of the
//! ZeRO paper, and the activations of a decoder transformer (Korthikanti et al. 2022).

use serde::Serialize;

use super::{div_ceil, group_digits, MemoryBudget};
use crate::error::{Error, Result};
use crate::model::config::Config;

/// Slide 5's estimate for full fine-tuning with Adam, split into its terms.
///
/// The slide writes **VRAM ≈ 4·P·(1 + 2 + 2) + activations**: `4·P` is the bytes of the fp32
/// weights (4 bytes × P parameters) and the bracket counts weight-sized fp32 copies, five in all,
/// so **20 bytes per parameter** before activations. The slide gives the factors, not their
/// labels; we read them as
///
/// | term | bytes | our reading |
/// |---|---|---|
/// | `4·P·1` | 4 B/param | the weights |
/// | `4·P·2` | 8 B/param | Adam's two moments m and v, fp32 |
/// | `4·P·2` | 8 B/param | the gradients (fp32, 4 B) and one more weight-sized buffer |
///
/// Plain fp32 Adam needs only weights + gradients + m + v = 4·P·(1 + 1 + 2) = 16 B/param, so the
/// slide's fifth copy is a margin. The slide's 20 B/param equals the fullest mixed-precision
/// count, [`AdamAccounting::Fp32GradientCopy`]: there the extra 4 B are the 16-bit weight and
/// gradient copies (2 + 2). The total is the slide's; the labels of the last term are our
/// reading. See [`slide5_vs_mixed_precision_note`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FullFinetune {
    /// Parameters P.
    pub params: u64,
    /// `4·P·1`: the fp32 weights.
    pub weights: u64,
    /// `4·P·2`: Adam's m and v.
    pub adam_states: u64,
    /// `4·P·2`: gradients and one more weight-sized buffer.
    pub gradients: u64,
    /// Activations, if given (see [`activation_estimate`]).
    pub activations: Option<u64>,
}

/// Slide 5: `4·P·(1 + 2 + 2)` bytes, without activations (add them with
/// [`FullFinetune::with_activations`]). The terms are explained on [`FullFinetune`].
pub fn full_finetune_slide5(params: u64) -> FullFinetune {
    let fp32_weights = 4 * params;
    FullFinetune {
        params,
        weights: fp32_weights,
        adam_states: 2 * fp32_weights,
        gradients: 2 * fp32_weights,
        activations: None,
    }
}

impl FullFinetune {
    /// The same estimate with activation bytes added.
    pub fn with_activations(mut self, bytes: u64) -> Self {
        self.activations = Some(bytes);
        self
    }

    /// All terms, activations included when given.
    pub fn total(&self) -> u64 {
        self.weights + self.adam_states + self.gradients + self.activations.unwrap_or(0)
    }

    /// Bytes per parameter without activations (20 for slide 5).
    pub fn bytes_per_param(&self) -> f64 {
        (self.weights + self.adam_states + self.gradients) as f64 / self.params.max(1) as f64
    }

    /// The itemised budget.
    pub fn budget(&self) -> MemoryBudget {
        let p = group_digits(self.params);
        let b = MemoryBudget::new(format!("Full fine-tuning, slide 5: {p} parameters"))
            .with_line("weights (fp32)", self.weights, format!("4 B × {p} × 1"))
            .with_line(
                "Adam m and v (fp32)",
                self.adam_states,
                format!("4 B × {p} × 2"),
            )
            .with_line(
                "gradients + one more copy",
                self.gradients,
                format!("4 B × {p} × 2"),
            );
        match self.activations {
            Some(a) => b.with_line("activations", a, "given"),
            None => b,
        }
    }
}

/// Which mixed-precision Adam accounting to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AdamAccounting {
    /// ZeRO (Rajbhandari et al. 2020, §3.1): 16-bit weights and gradients (2 + 2 B) plus
    /// K = 12 B of fp32 optimizer state (master weights, m, v): 16 B/param.
    ZeroPaper,
    /// fp32 gradients instead of 16-bit ones: 2 + 4 + 12 = 18 B/param (PyTorch AMP keeps the
    /// gradients in fp32; the Hugging Face "model training anatomy" guide counts 18).
    Fp32Gradients,
    /// 16-bit gradients and an fp32 copy of them: 2 + 2 + 4 + 12 = 20 B/param.
    Fp32GradientCopy,
}

impl AdamAccounting {
    /// A short label: `ZeRO (16-bit grads)`, `fp32 grads`, `16-bit grads + fp32 copy`.
    pub fn name(self) -> &'static str {
        match self {
            AdamAccounting::ZeroPaper => "ZeRO, 16-bit grads",
            AdamAccounting::Fp32Gradients => "fp32 grads",
            AdamAccounting::Fp32GradientCopy => "16-bit grads + fp32 copy",
        }
    }
}

/// Mixed-precision Adam, itemised per the chosen [`AdamAccounting`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MixedPrecisionAdam {
    /// Parameters P.
    pub params: u64,
    /// Which accounting.
    pub accounting: AdamAccounting,
    /// 16-bit working weights, 2·P.
    pub weights_16bit: u64,
    /// 16-bit gradients, 2·P (0 with [`AdamAccounting::Fp32Gradients`]).
    pub gradients_16bit: u64,
    /// fp32 gradients, 4·P (0 with [`AdamAccounting::ZeroPaper`]).
    pub gradients_fp32: u64,
    /// fp32 master weights, 4·P.
    pub master_weights: u64,
    /// Adam's first moment m, fp32, 4·P.
    pub adam_m: u64,
    /// Adam's second moment v, fp32, 4·P.
    pub adam_v: u64,
    /// Activations, if given.
    pub activations: Option<u64>,
}

/// Mixed-precision Adam: `2·P` (16-bit weights) + gradients + `K·P` with K = 12 (fp32 master
/// weights, m and v, 4 B each) — 16 B/param in ZeRO (Rajbhandari et al. 2020, *ZeRO: Memory
/// Optimizations Toward Training Trillion Parameter Models*, §3.1), 18 with fp32 gradients, 20
/// with 16-bit gradients and an fp32 copy.
pub fn mixed_precision_adam(params: u64, accounting: AdamAccounting) -> MixedPrecisionAdam {
    let (g16, g32) = match accounting {
        AdamAccounting::ZeroPaper => (2, 0),
        AdamAccounting::Fp32Gradients => (0, 4),
        AdamAccounting::Fp32GradientCopy => (2, 4),
    };
    MixedPrecisionAdam {
        params,
        accounting,
        weights_16bit: 2 * params,
        gradients_16bit: g16 * params,
        gradients_fp32: g32 * params,
        master_weights: 4 * params,
        adam_m: 4 * params,
        adam_v: 4 * params,
        activations: None,
    }
}

impl MixedPrecisionAdam {
    /// The same estimate with activation bytes added.
    pub fn with_activations(mut self, bytes: u64) -> Self {
        self.activations = Some(bytes);
        self
    }

    fn states(&self) -> u64 {
        self.weights_16bit
            + self.gradients_16bit
            + self.gradients_fp32
            + self.master_weights
            + self.adam_m
            + self.adam_v
    }

    /// All items, activations included when given.
    pub fn total(&self) -> u64 {
        self.states() + self.activations.unwrap_or(0)
    }

    /// Bytes per parameter without activations (16, 18 or 20).
    pub fn bytes_per_param(&self) -> f64 {
        self.states() as f64 / self.params.max(1) as f64
    }

    /// The itemised budget (items of 0 bytes left out).
    pub fn budget(&self) -> MemoryBudget {
        let p = group_digits(self.params);
        let mut b = MemoryBudget::new(format!(
            "Mixed-precision Adam ({}): {p} parameters",
            self.accounting.name()
        ));
        for (name, bytes, per) in [
            ("weights (16-bit)", self.weights_16bit, 2),
            ("gradients (16-bit)", self.gradients_16bit, 2),
            ("gradients (fp32)", self.gradients_fp32, 4),
            ("master weights (fp32)", self.master_weights, 4),
            ("Adam m (fp32)", self.adam_m, 4),
            ("Adam v (fp32)", self.adam_v, 4),
        ] {
            if bytes > 0 {
                b = b.with_line(name, bytes, format!("{per} B × {p}"));
            }
        }
        match self.activations {
            Some(a) => b.with_line("activations", a, "given"),
            None => b,
        }
    }
}

/// Why slide 5 and the mixed-precision accounting differ, in one sentence (numbers computed).
pub fn slide5_vs_mixed_precision_note() -> String {
    let slide = full_finetune_slide5(1).bytes_per_param();
    let per = |a| mixed_precision_adam(1, a).bytes_per_param();
    let plain_fp32 = 4 * (1 + 1 + 2); // weights, gradients, m, v
    format!(
        "Slide 5 counts five fp32 weight-sized copies, {slide} bytes/param (weights, Adam's m and v, \
         gradients and one more buffer), while mixed-precision Adam as in ZeRO keeps 16-bit \
         weights and gradients beside fp32 master weights, m and v (K = 12), {} bytes/param ({} \
         with fp32 gradients, {} with an fp32 gradient copy); plain fp32 Adam would be {plain_fp32}, so \
         the slide is a rounded-up upper bound, and neither counts activations, temporary buffers or \
         allocator fragmentation.",
        per(AdamAccounting::ZeroPaper),
        per(AdamAccounting::Fp32Gradients),
        per(AdamAccounting::Fp32GradientCopy),
    )
}

/// Which activations are kept for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Recompute {
    /// Everything is stored: `s·b·h·(34 + 5·a·s/h)` bytes per layer.
    None,
    /// Selective recomputation of the attention scores (or a fused attention that never
    /// stores them): `34·s·b·h` bytes per layer.
    Selective,
    /// Full recomputation, i.e. gradient checkpointing per layer: only each layer's input,
    /// `2·s·b·h` bytes per layer.
    Full,
}

/// The shape that activation memory depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ActivationShape {
    /// Micro-batch size b.
    pub batch: u64,
    /// Sequence length s.
    pub seq_len: u64,
    /// Hidden size h.
    pub hidden: u64,
    /// Attention heads a.
    pub heads: u64,
    /// Transformer layers L.
    pub layers: u64,
    /// Bytes per stored activation value (2 for 16-bit, the formula's assumption).
    pub bytes_per_value: u64,
}

impl ActivationShape {
    /// The shape of `config` for a batch of `batch` sequences of `seq_len` tokens, 16-bit.
    pub fn of_config(config: &Config, batch: u64, seq_len: u64) -> Self {
        Self {
            batch,
            seq_len,
            hidden: config.hidden_size as u64,
            heads: config.num_attention_heads as u64,
            layers: config.num_hidden_layers as u64,
            bytes_per_value: 2,
        }
    }
}

/// Activation memory of the transformer layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivationEstimate {
    /// The shape.
    pub shape: ActivationShape,
    /// What is recomputed.
    pub recompute: Recompute,
    /// Bytes per layer.
    pub per_layer: u64,
    /// Bytes for all layers (`per_layer × L`).
    pub total: u64,
    /// The formula used.
    pub formula: String,
}

/// Activations of a decoder transformer's layers, from Korthikanti et al. 2022, *Reducing
/// Activation Recomputation in Large Transformer Models*, §4 (no tensor or sequence
/// parallelism):
///
/// - no recomputation (eq. 1): `s·b·h·(34 + 5·a·s/h)` bytes per layer — 34·s·b·h for the
///   linear, norm, GeLU and dropout inputs (16-bit values, 1-byte dropout masks) and
///   5·a·s²·b for the attention scores, softmax and its dropout;
/// - selective recomputation (§5): `34·s·b·h`;
/// - full recomputation (gradient checkpointing): `2·s·b·h`, the layer's 16-bit input.
///
/// The paper's block is GPT's (4h GeLU MLP, dropout); a Llama block (SwiGLU, RMSNorm, no
/// dropout) differs in the constant, so read this as an estimate. The formula assumes 16-bit
/// activations; other `bytes_per_value` scale it by `bytes_per_value / 2`. Embeddings, the
/// final norm and the logits (`s·b·vocab`, often fp32 in the loss) are not included.
pub fn activation_estimate(
    shape: ActivationShape,
    recompute: Recompute,
) -> Result<ActivationEstimate> {
    for (field, v) in [
        ("batch", shape.batch),
        ("seq_len", shape.seq_len),
        ("hidden", shape.hidden),
        ("heads", shape.heads),
        ("layers", shape.layers),
        ("bytes_per_value", shape.bytes_per_value),
    ] {
        if v == 0 {
            return Err(Error::config(
                field,
                format!("`{field}` should be a positive integer but is 0"),
            ));
        }
    }
    let (s, b, h, a) = (
        shape.seq_len as u128,
        shape.batch as u128,
        shape.hidden as u128,
        shape.heads as u128,
    );
    // s·b·h·(34 + 5as/h) = s·b·(34h + 5as), in bytes for 16-bit values.
    let (bytes16, formula) = match recompute {
        Recompute::None => (s * b * (34 * h + 5 * a * s), "s·b·h·(34 + 5·a·s/h)"),
        Recompute::Selective => (34 * s * b * h, "34·s·b·h"),
        Recompute::Full => (2 * s * b * h, "2·s·b·h"),
    };
    let per_layer = div_ceil(bytes16 * shape.bytes_per_value as u128, 2);
    Ok(ActivationEstimate {
        shape,
        recompute,
        per_layer,
        total: per_layer * shape.layers,
        formula: if shape.bytes_per_value == 2 {
            format!("{formula} per layer × {} layers", shape.layers)
        } else {
            let bytes = shape.bytes_per_value;
            format!("{formula} per layer × {bytes}/2 × {} layers", shape.layers)
        },
    })
}
