//! `prepare_model_for_kbit_training` (peft `utils/other.py`), the step QLoRA recipes run between
//! loading a 4/8-bit model and `get_peft_model`. peft does three things; here is what each
//! means in tunelab:
//!
//! 1. Freeze every base parameter (`requires_grad = False`). Already true by construction: base
//!    weights are plain tensors or integer codes, only a `PeftModel`'s `VarMap` trains.
//! 2. Cast every fp16/bf16 parameter that is not 4-bit to f32 — the norms, and in transformers
//!    also the embeddings and `lm_head`, which makes the whole residual stream f32. Here the
//!    **norm gains** are cast, when the model's `RmsNorm` can multiply an f32 gain into
//!    activations of the model's dtype (checked on a two-element probe; otherwise they stay and
//!    the report says why — the normalisation itself already runs in f32). Embeddings,
//!    `lm_head` and other dense layers stay in the model's dtype: tunelab's residual stream
//!    runs in it. LoRA's A and B are f32 in any case.
//! 3. Gradient checkpointing (`use_gradient_checkpointing=True`, peft's default): in tunelab it
//!    is the trainer's switch, not the model's (`TrainingArgs::gradient_checkpointing`); the
//!    report says so.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::model::llama::{Llama, RmsNorm};
use crate::Result;

/// What [`prepare_model_for_kbit_training`] did and did not do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KbitReport {
    /// Quantized linear layers found (paths).
    pub quantized: Vec<String>,
    /// Parameters cast to f32 (`model.layers.0.input_layernorm.weight`, ...).
    pub cast_to_f32: Vec<String>,
    /// Everything else worth knowing, one sentence each.
    pub notes: Vec<String>,
}

impl std::fmt::Display for KbitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "prepare_model_for_kbit_training: {} quantized layers, {} parameters cast to f32",
            self.quantized.len(),
            self.cast_to_f32.len()
        )?;
        for n in &self.notes {
            writeln!(f, "- {n}")?;
        }
        Ok(())
    }
}

/// Whether `RmsNorm` accepts an f32 gain with `dtype` activations and keeps their dtype.
fn f32_gain_supported(dtype: DType, model: &Llama) -> bool {
    let dev = model.device();
    let probe = || -> candle_core::Result<bool> {
        let norm = RmsNorm {
            weight: Tensor::ones(2, DType::F32, dev)?,
            eps: 1e-5,
        };
        let x = Tensor::ones((1, 2), dtype, dev)?;
        Ok(norm.forward(&x)?.dtype() == dtype)
    };
    probe().unwrap_or(false)
}

/// peft's `prepare_model_for_kbit_training(model, use_gradient_checkpointing)`: call it on the
/// quantized model before `get_peft_model`. Casts the norm gains to f32 where the model can run
/// them so and reports the rest (see the module docs); `use_gradient_checkpointing = true` adds
/// the note that checkpointing is not available yet.
pub fn prepare_model_for_kbit_training(
    model: &mut Llama,
    use_gradient_checkpointing: bool,
) -> Result<KbitReport> {
    let quantized: Vec<String> = model
        .linears()
        .into_iter()
        .filter(|(_, l)| l.is_quantized())
        .map(|(p, _)| p)
        .collect();
    let dtype = model.dtype();
    let mut report = KbitReport {
        quantized,
        cast_to_f32: Vec::new(),
        notes: vec!["every base parameter is frozen: base weights are plain tensors or codes, only the PeftModel's VarMap trains".into()],
    };
    if report.quantized.is_empty() {
        report.notes.push("no quantized linear layer: this is meant for a 4/8-bit base (quantize_model first); norms are handled all the same".into());
    }
    if dtype == DType::F32 {
        report
            .notes
            .push("the model is f32: nothing to cast".into());
    } else if f32_gain_supported(dtype, model) {
        let mut norms: Vec<(String, &mut Tensor)> = Vec::new();
        for (i, b) in model.layers.iter_mut().enumerate() {
            norms.push((
                format!("model.layers.{i}.input_layernorm.weight"),
                &mut b.input_layernorm.weight,
            ));
            norms.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                &mut b.post_attention_layernorm.weight,
            ));
        }
        norms.push(("model.norm.weight".into(), &mut model.norm.weight));
        for (name, w) in norms {
            if w.dtype() != DType::F32 {
                *w = w.to_dtype(DType::F32)?;
                report.cast_to_f32.push(name);
            }
        }
        report.notes.push(format!("norm gains cast to f32; embed_tokens, lm_head and dense layers stay {dtype:?}, since the residual stream runs in the model's dtype"));
    } else {
        report.notes.push(format!(
            "norm gains stay {dtype:?}: this model's RmsNorm multiplies the gain in the activations' dtype and cannot take an f32 gain yet; the normalisation itself (mean of squares, 1/√) already runs in f32"
        ));
    }
    report
        .notes
        .push("LoRA's A and B are f32 whatever the model's dtype".into());
    if use_gradient_checkpointing {
        report.notes.push("use_gradient_checkpointing: tunelab checkpoints in the trainer, not in the model — set TrainingArgs.gradient_checkpointing = true".into());
    }
    Ok(report)
}
