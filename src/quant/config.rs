//! `QuantConfig` (transformers' `BitsAndBytesConfig`) and `quantize_model`: swap every dense
//! projection of a model for a [`QLinear`] through the `Linear` seam.
//!
//! ```text
//! BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
//!                    bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
//! QuantConfig::nf4_double_quant().with_compute_dtype(DType::BF16)
//! ```
//!
//! Embeddings and norms are not linear layers and stay in the model's dtype; `lm_head` is
//! skipped by default (`llm_int8_skip_modules`), as transformers does.

use candle_core::{DType, Tensor};
use serde::Serialize;

use candle_core::quantized::GgmlDType;

use super::affine::{quantize_affine, AffineConfig};
use super::ggml::GgmlWeight;
use super::int8::quantize_int8;
use super::nf4::{quantize_4bit_weight, FourBitConfig, FourBitType};
use super::{QLinear, QuantizedWeight};
use crate::model::linear::{Linear, LinearLayer};
use crate::model::llama::Llama;
use crate::{Error, Result};

/// What to quantize to, mirroring `BitsAndBytesConfig`'s fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantConfig {
    /// LLM.int8(): vector-wise int8 with outlier columns.
    pub load_in_8bit: bool,
    /// NF4/FP4.
    pub load_in_4bit: bool,
    /// LLM.int8()'s outlier threshold (6.0).
    pub llm_int8_threshold: f32,
    /// Modules left unquantized (`["lm_head"]` by default). An entry matches a module path
    /// equal to it or having it as a dotted component (`"q_proj"`, `"layers.0"`).
    pub llm_int8_skip_modules: Vec<String>,
    /// The dtype forward computes in (`bnb_4bit_compute_dtype`; transformers' default f32).
    #[serde(serialize_with = "dtype_name")]
    pub bnb_4bit_compute_dtype: DType,
    /// NF4 or FP4 (`bnb_4bit_quant_type`; transformers' default is FP4).
    pub bnb_4bit_quant_type: FourBitType,
    /// Double quantization of the absmax constants.
    pub bnb_4bit_use_double_quant: bool,
    /// Values per absmax block (64 in bitsandbytes; not a `BitsAndBytesConfig` field).
    pub bnb_4bit_blocksize: usize,
}

fn dtype_name<S: serde::Serializer>(d: &DType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(d.as_str())
}

impl Default for QuantConfig {
    /// `BitsAndBytesConfig()`'s defaults: nothing loaded in 4 or 8 bits yet, FP4, no double
    /// quantization, f32 compute, threshold 6.0, `lm_head` skipped.
    fn default() -> Self {
        Self {
            load_in_8bit: false,
            load_in_4bit: false,
            llm_int8_threshold: 6.0,
            llm_int8_skip_modules: vec!["lm_head".into()],
            bnb_4bit_compute_dtype: DType::F32,
            bnb_4bit_quant_type: FourBitType::Fp4,
            bnb_4bit_use_double_quant: false,
            bnb_4bit_blocksize: 64,
        }
    }
}

impl QuantConfig {
    /// 4-bit NF4 without double quantization.
    pub fn nf4() -> Self {
        Self {
            load_in_4bit: true,
            bnb_4bit_quant_type: FourBitType::Nf4,
            ..Self::default()
        }
    }

    /// QLoRA's setting: NF4 with double quantization.
    pub fn nf4_double_quant() -> Self {
        Self {
            bnb_4bit_use_double_quant: true,
            ..Self::nf4()
        }
    }

    /// 4-bit FP4.
    pub fn fp4() -> Self {
        Self {
            load_in_4bit: true,
            ..Self::default()
        }
    }

    /// LLM.int8() with the default threshold 6.0.
    pub fn int8() -> Self {
        Self {
            load_in_8bit: true,
            ..Self::default()
        }
    }

    /// The same with another compute dtype.
    pub fn with_compute_dtype(mut self, dtype: DType) -> Self {
        self.bnb_4bit_compute_dtype = dtype;
        self
    }

    /// The same with other modules to skip.
    pub fn with_skip_modules<S: Into<String>>(
        mut self,
        modules: impl IntoIterator<Item = S>,
    ) -> Self {
        self.llm_int8_skip_modules = modules.into_iter().map(Into::into).collect();
        self
    }

    /// The scheme this config selects. Errors when neither or both of `load_in_4bit` and
    /// `load_in_8bit` are set.
    pub fn scheme(&self) -> Result<QuantScheme> {
        match (self.load_in_4bit, self.load_in_8bit) {
            (true, false) => Ok(QuantScheme::FourBit(FourBitConfig {
                quant_type: self.bnb_4bit_quant_type,
                blocksize: self.bnb_4bit_blocksize,
                double_quant: self.bnb_4bit_use_double_quant,
            })),
            (false, true) => Ok(QuantScheme::Int8 {
                threshold: self.llm_int8_threshold,
            }),
            (true, true) => Err(Error::config(
                "load_in_4bit",
                "load_in_4bit and load_in_8bit are both true; choose one",
            )),
            (false, false) => Err(Error::config(
                "load_in_4bit",
                "neither load_in_4bit nor load_in_8bit is set; nothing to quantize to",
            )),
        }
    }

    /// Whether the module at `path` is left unquantized.
    pub fn skips(&self, path: &str) -> bool {
        // A key matches whole dotted components: `.path.` contains `.key.`.
        let path = format!(".{path}.");
        self.llm_int8_skip_modules
            .iter()
            .any(|key| path.contains(&format!(".{key}.")))
    }
}

/// One quantization scheme, for [`quantize_model_with`] and the chapter's comparison table.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantScheme {
    /// NF4/FP4 ([`super::nf4`]).
    FourBit(FourBitConfig),
    /// LLM.int8() with an outlier threshold ([`super::int8`]).
    Int8 {
        /// |x| at or above which an activation column is an outlier.
        threshold: f32,
    },
    /// Affine or absmax n-bit, per tensor / channel / group ([`super::affine`]).
    Affine(AffineConfig),
    /// One of candle's GGML types ([`super::ggml`]).
    Ggml(GgmlDType),
}

impl QuantScheme {
    /// Quantizes one weight `[out, in]`; `name` appears in errors.
    pub fn quantize(&self, w: &Tensor, name: &str) -> Result<Box<dyn QuantizedWeight>> {
        Ok(match self {
            QuantScheme::FourBit(cfg) => Box::new(quantize_4bit_weight(w, name, cfg)?),
            QuantScheme::Int8 { threshold } => {
                Box::new(quantize_int8(w, *threshold).map_err(|e| in_layer(name, e))?)
            }
            QuantScheme::Affine(cfg) => {
                Box::new(quantize_affine(w, cfg).map_err(|e| in_layer(name, e))?)
            }
            QuantScheme::Ggml(dtype) => Box::new(GgmlWeight::quantize(name, w, *dtype)?),
        })
    }

    /// A short name for tables ("nf4+dq", "int8", "affine-int4-g64", "q4_0").
    pub fn name(&self) -> String {
        match self {
            QuantScheme::FourBit(cfg) => {
                let dq = if cfg.double_quant { "+dq" } else { "" };
                match cfg.blocksize {
                    64 => format!("{}{dq}", cfg.quant_type.name()),
                    bs => format!("{}{dq}-b{bs}", cfg.quant_type.name()),
                }
            }
            QuantScheme::Int8 { .. } => "int8".into(),
            QuantScheme::Affine(cfg) => cfg.kind(),
            QuantScheme::Ggml(dtype) => super::ggml::ggml_kind(*dtype).into(),
        }
    }
}

/// An error from a scheme that does not know the layer's name, with the name added.
fn in_layer(name: &str, e: Error) -> Error {
    Error::Input(format!("layer `{name}`: {e}"))
}

/// What [`quantize_model`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizeSummary {
    /// Paths that were quantized.
    pub quantized: Vec<String>,
    /// Paths left as they were (skipped by the config).
    pub skipped: Vec<String>,
    /// Bytes of the projections before.
    pub bytes_before: usize,
    /// Bytes of the projections after.
    pub bytes_after: usize,
}

/// Quantizes every projection of `model` that `config` does not skip, in place, as
/// `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))` does on loading.
pub fn quantize_model(model: &mut Llama, config: &QuantConfig) -> Result<QuantizeSummary> {
    let scheme = config.scheme()?;
    quantize_model_with(model, &scheme, config)
}

/// Like [`quantize_model`] with an explicit scheme (the skip list and compute dtype come from
/// `config`). Each layer is quantized before it is swapped in, so an error leaves the layers
/// done so far quantized and the rest untouched; the error names the layer.
pub fn quantize_model_with(
    model: &mut Llama,
    scheme: &QuantScheme,
    config: &QuantConfig,
) -> Result<QuantizeSummary> {
    let compute = config.bnb_4bit_compute_dtype;
    let mut summary = QuantizeSummary {
        quantized: Vec::new(),
        skipped: Vec::new(),
        bytes_before: 0,
        bytes_after: 0,
    };
    model.edit(|model| {
        for path in model.linear_paths() {
            if config.skips(&path) {
                summary.skipped.push(path);
                continue;
            }
            let layer = model.linear(&path)?;
            if layer.is_quantized() {
                return Err(Error::Input(format!(
                    "`{path}` is already quantized ({}); quantize a model once, from its dense \
                     weights",
                    layer.kind()
                )));
            }
            // Under an adapter (LoRA, modules_to_save) the base is quantized and the adapter
            // stays as it is: its ΔW is never folded into the codes.
            let base = layer.innermost();
            let before = base.storage_bytes();
            let w = base.dense_weight()?;
            let q = QLinear::from_box(scheme.quantize(&w, &path)?, base.bias().cloned(), compute)?;
            summary.bytes_before += before;
            summary.bytes_after += LinearLayer::storage_bytes(&q);
            model.map_linear(&path, |mut l| {
                *l.innermost_mut() = Linear::new(q);
                Ok(l)
            })?;
            summary.quantized.push(path);
        }
        Ok(())
    })?;
    Ok(summary)
}
