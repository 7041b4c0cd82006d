//! Bytes per parameter in each precision, the weights' bytes, and an inference estimate.
//!
//! 4-bit formats (NF4, FP4) quantize blocks of 64 weights, each with its own absmax constant.
//! Dettmers et al. 2023, *QLoRA: Efficient Finetuning of Quantized LLMs*, §3 ("Double
//! Quantization"): fp32 constants for blocks of 64 cost 32/64 = 0.5 bits per parameter; double
//! quantization stores them as 8-bit floats with one fp32 constant per 256 of them,
//! 8/64 + 32/(64·256) ≈ 0.127 bits per parameter. bitsandbytes' `blocksize=64` default and its
//! `bnb_4bit_use_double_quant` follow this layout.

use candle_core::DType;
use serde::Serialize;

use super::{div_ceil, group_digits, MemoryBudget};
use crate::error::{Error, Result};

/// How the per-block constants of a 4-bit format are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QuantConstants {
    /// The bare 4 bits per weight (slide 14's "≈ 4 GB" for 8B).
    Uncounted,
    /// One fp32 absmax per block of 64: +32/64 = 0.5 bits per parameter.
    Absmax,
    /// Double quantization (QLoRA §3): an 8-bit absmax per block of 64 plus one fp32 constant
    /// per 256 blocks: +8/64 + 32/(64·256) ≈ 0.127 bits per parameter.
    DoubleQuant,
}

/// A storage precision of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Precision {
    /// IEEE float32, 4 bytes.
    Fp32,
    /// IEEE float16, 2 bytes.
    Fp16,
    /// bfloat16, 2 bytes.
    Bf16,
    /// 8-bit integers, 1 byte (per-row scales of LLM.int8() not counted).
    Int8,
    /// 4-bit NormalFloat (QLoRA), blocks of 64.
    Nf4(QuantConstants),
    /// 4-bit float (bitsandbytes `fp4`), blocks of 64.
    Fp4(QuantConstants),
}

/// Bits are kept as integers over this denominator, so 32/(64·256) bits stays exact.
const DENOM: u64 = 64 * 256;

impl Precision {
    /// The precisions the seminar compares, for tables.
    pub const ALL: [Precision; 10] = [
        Precision::Fp32,
        Precision::Fp16,
        Precision::Bf16,
        Precision::Int8,
        Precision::Nf4(QuantConstants::Uncounted),
        Precision::Nf4(QuantConstants::Absmax),
        Precision::Nf4(QuantConstants::DoubleQuant),
        Precision::Fp4(QuantConstants::Uncounted),
        Precision::Fp4(QuantConstants::Absmax),
        Precision::Fp4(QuantConstants::DoubleQuant),
    ];

    /// Bits per parameter × `DENOM`.
    fn scaled_bits(self) -> u64 {
        let four_bit = |c: QuantConstants| {
            4 * DENOM
                + match c {
                    QuantConstants::Uncounted => 0,
                    QuantConstants::Absmax => 32 * DENOM / 64,
                    QuantConstants::DoubleQuant => 8 * DENOM / 64 + 32 * DENOM / (64 * 256),
                }
        };
        match self {
            Precision::Fp32 => 32 * DENOM,
            Precision::Fp16 | Precision::Bf16 => 16 * DENOM,
            Precision::Int8 => 8 * DENOM,
            Precision::Nf4(c) | Precision::Fp4(c) => four_bit(c),
        }
    }

    /// Bits per parameter: 32, 16, 16, 8, or 4 (+0.5 with fp32 absmax, +0.126953125 with
    /// double quantization).
    pub fn bits_per_param(self) -> f64 {
        self.scaled_bits() as f64 / DENOM as f64
    }

    /// Bytes per parameter: bits / 8.
    pub fn bytes_per_param(self) -> f64 {
        self.bits_per_param() / 8.0
    }

    /// Whether this is a quantized (integer or 4-bit) format rather than a float dtype.
    pub fn is_quantized(self) -> bool {
        !matches!(self, Precision::Fp32 | Precision::Fp16 | Precision::Bf16)
    }

    /// A short name: `fp32`, `bf16`, `nf4`, `nf4+absmax`, `nf4+double-quant`, ...
    pub fn name(self) -> String {
        let four = |base: &str, c: QuantConstants| match c {
            QuantConstants::Uncounted => base.to_string(),
            QuantConstants::Absmax => format!("{base}+absmax"),
            QuantConstants::DoubleQuant => format!("{base}+double-quant"),
        };
        match self {
            Precision::Fp32 => "fp32".into(),
            Precision::Fp16 => "fp16".into(),
            Precision::Bf16 => "bf16".into(),
            Precision::Int8 => "int8".into(),
            Precision::Nf4(c) => four("nf4", c),
            Precision::Fp4(c) => four("fp4", c),
        }
    }

    /// The precision of a candle float dtype (f32, f16, bf16); other dtypes are an error.
    pub fn from_dtype(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Ok(Precision::Fp32),
            DType::F16 => Ok(Precision::Fp16),
            DType::BF16 => Ok(Precision::Bf16),
            other => Err(Error::config(
                "dtype",
                format!("expected a weight dtype f32, f16 or bf16, found {other:?}"),
            )),
        }
    }
}

/// Bytes of `params` weights stored in `precision`: ⌈params × bits_per_param / 8⌉.
///
/// Slide 6: 8B × 4 bytes (fp32) = 32 GB, × 2 bytes (fp16) = 16 GB. Slide 14: 8B × 0.5 bytes
/// (NF4) ≈ 4 GB. For 4-bit formats the block constants are averaged per parameter as in QLoRA
/// §3 (a last partial block and layers kept in 16-bit are not modelled here).
pub fn weights_bytes(params: u64, precision: Precision) -> u64 {
    div_ceil(
        params as u128 * precision.scaled_bits() as u128,
        DENOM as u128 * 8,
    )
}

/// The rule-of-thumb overhead factor for serving, 1.2 (20 % for KV cache, activations and the
/// framework): `M = (P × 4 B) / (32 / Q) × 1.2`, Sam Stoelinga, "Calculating GPU memory for
/// serving LLMs" (Substratus AI blog, 2023). A rule of thumb, not a measurement: the KV cache
/// grows with batch × context and can exceed the weights.
pub const RULE_OF_THUMB_OVERHEAD: f64 = 1.2;

/// Memory to run a model: its weights, optionally times an overhead factor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferenceEstimate {
    /// Parameters.
    pub params: u64,
    /// Storage precision of the weights.
    pub precision: Precision,
    /// Bytes of the weights ([`weights_bytes`]).
    pub weights: u64,
    /// Overhead factor, if one is applied (see [`RULE_OF_THUMB_OVERHEAD`]).
    pub overhead_factor: Option<f64>,
}

impl InferenceEstimate {
    /// Applies an overhead factor (≥ 1), e.g. [`RULE_OF_THUMB_OVERHEAD`].
    pub fn with_overhead(mut self, factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(Error::config(
                "overhead_factor",
                format!("should be a finite number ≥ 1 but is {factor}"),
            ));
        }
        self.overhead_factor = Some(factor);
        Ok(self)
    }

    /// The overhead's bytes: weights × (factor − 1), 0 without a factor.
    pub fn overhead(&self) -> u64 {
        self.overhead_factor
            .map_or(0, |f| (self.weights as f64 * (f - 1.0)).round() as u64)
    }

    /// Weights plus overhead.
    pub fn total(&self) -> u64 {
        self.weights + self.overhead()
    }

    /// The itemised budget.
    pub fn budget(&self) -> MemoryBudget {
        let b = MemoryBudget::new(format!(
            "Inference: {} parameters in {}",
            group_digits(self.params),
            self.precision.name()
        ))
        .with_line(
            format!("weights ({})", self.precision.name()),
            self.weights,
            format!(
                "{} bit × {} / 8",
                self.precision.bits_per_param(),
                group_digits(self.params)
            ),
        );
        match self.overhead_factor {
            Some(f) => b.with_line(
                "overhead (rule of thumb)",
                self.overhead(),
                format!("weights × ({f} − 1)"),
            ),
            None => b,
        }
    }
}

/// Memory to run a model of `params` parameters in `precision`: the weights only
/// ([`weights_bytes`]); add [`InferenceEstimate::with_overhead`] for the rule of thumb.
pub fn inference_estimate(params: u64, precision: Precision) -> InferenceEstimate {
    InferenceEstimate {
        params,
        precision,
        weights: weights_bytes(params, precision),
        overhead_factor: None,
    }
}
