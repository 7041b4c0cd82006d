//! Merging LoRA into the base weight (slides 44–46): `W ← W + (α/r)·B·A`, computed in f32 and
//! checked finite with `safe_merge`; `unmerge` takes it out again.
//!
//! A quantized base (QLoRA) is dequantized to f32 for the merge. Plain [`LoraLayer::merge`]
//! leaves a dense layer in the compute dtype; [`LoraLayer::merge_and_requantize`] quantizes the
//! merged weight again with the base's own scheme, as peft does when it merges into a
//! bitsandbytes `Linear4bit` ("Merge lora module to 4-bit linear may get different generations
//! due to rounding errors"), and measures that rounding:
//!
//! ```text
//! W_merged = dequant(W_q) + s·B·A          (f32)
//! W_q'     = quant(W_merged)               (the base's scheme: nf4 + double quant, int8, ...)
//! rounding = max |W_merged − dequant(W_q')|   vs   max |s·B·A|
//! ```
//!
//! With 4-bit levels the rounding is of the order of the quantization step, which is often as
//! large as the update itself: requantizing keeps the memory footprint but loses part of ΔW.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::lora::{row_norm, LoraLayer};
use crate::model::linear::{Dense, Linear};
use crate::quant::QLinear;
use crate::{Error, Result};

/// What requantizing one merged layer cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerRounding {
    /// Module path.
    pub path: String,
    /// The scheme the layer was quantized with, and is again ("nf4+dq", "int8", ...).
    pub scheme: String,
    /// `max |W_merged − dequant(quant(W_merged))|`: the rounding of the requantization.
    pub max_abs_rounding: f32,
    /// `max |W_merged − dequant(W_q)|`: the largest entry of the merged update.
    pub max_abs_delta: f32,
}

/// Every requantized layer's rounding, with a one-line warning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequantizeReport {
    /// One entry per layer whose quantized base was merged and requantized, in model order.
    pub layers: Vec<LayerRounding>,
}

impl RequantizeReport {
    /// The layer with the largest rounding, if any was requantized.
    pub fn worst(&self) -> Option<&LayerRounding> {
        self.layers
            .iter()
            .max_by(|a, b| a.max_abs_rounding.total_cmp(&b.max_abs_rounding))
    }

    /// "warning: requantized 4 merged layers (nf4+dq): max |merged − requantized| = 0.0877
    /// (model.layers.0.self_attn.q_proj), max |ΔW| = 0.123; the rounding is 71 % of the
    /// largest update", or a note that nothing was requantized.
    pub fn warning(&self) -> String {
        let Some(w) = self.worst() else {
            return "no quantized layer was merged: nothing requantized".into();
        };
        let delta = self
            .layers
            .iter()
            .map(|l| l.max_abs_delta)
            .fold(0f32, f32::max);
        let mut schemes: Vec<&str> = self.layers.iter().map(|l| l.scheme.as_str()).collect();
        schemes.dedup();
        format!(
            "warning: requantized {} merged layer(s) ({}): max |merged − requantized| = {:.4e} \
             ({}), max |ΔW| = {:.4e}; the rounding is {:.0} % of the largest update",
            self.layers.len(),
            schemes.join(", "),
            w.max_abs_rounding,
            w.path,
            delta,
            100.0 * w.max_abs_rounding / delta.max(f32::MIN_POSITIVE)
        )
    }
}

impl std::fmt::Display for RequantizeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.warning())
    }
}

fn max_abs(t: &Tensor) -> candle_core::Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    // A NaN or ±∞ anywhere makes the sum of |w| non-finite (weights never sum past f32::MAX).
    let s = t.abs()?.sum_all()?.to_scalar::<f32>()?;
    Ok(s.is_finite())
}

impl LoraLayer {
    /// The base weight in f32; a quantized base dequantized straight to f32.
    pub(super) fn base_weight_f32(&self) -> candle_core::Result<Tensor> {
        match self.base.quantized() {
            Some(q) => q.dequantize(DType::F32),
            None => self.base.dense_weight()?.to_dtype(DType::F32),
        }
    }

    /// `w` with the adapters `todo` folded in (f32), and DoRA's per-row factors.
    fn fold(
        &self,
        mut w: Tensor,
        todo: &[String],
        safe: bool,
    ) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let mut norms = Vec::new();
        for name in todo {
            let a = &self.adapters[name];
            w = (w + a.delta_weight()?)?;
            if let Some(m) = &a.magnitude {
                // DoRA: W' = m/‖W + ΔW‖ · (W + ΔW), per output row.
                let factor = (m.as_tensor() / row_norm(&w)?)?;
                w = w.broadcast_mul(&factor.unsqueeze(1)?)?;
                norms.push((name.clone(), factor));
            }
            if safe && !all_finite(&w)? {
                return Err(Error::Input(format!(
                    "merging adapter `{name}` gives a weight with NaN or infinite values; \
                     nothing was merged"
                )));
            }
        }
        Ok((w, norms))
    }

    fn unmerged_active(&self) -> Vec<String> {
        self.active
            .iter()
            .filter(|a| !self.merged.contains(a))
            .cloned()
            .collect()
    }

    /// Folds the active, not yet merged adapters into the base weight: `W ← W + ΔW`, in f32.
    /// A quantized base is dequantized and becomes a dense layer in its compute dtype (the
    /// merged weight is not on the quantization grid; see [`LoraLayer::merge_and_requantize`]).
    /// With `safe_merge`, a ΔW or merged weight with a NaN or ∞ is an error naming the adapter
    /// and nothing changes.
    pub fn merge(&mut self, safe_merge: bool) -> Result<()> {
        let todo = self.unmerged_active();
        if todo.is_empty() {
            return Ok(());
        }
        let dtype = self.base.dtype();
        let (w, norms) = self.fold(self.base_weight_f32()?, &todo, safe_merge)?;
        self.merge_norms.extend(norms);
        self.base = Linear::new(Dense::new(w.to_dtype(dtype)?, self.base.bias().cloned())?);
        self.merged.extend(todo);
        Ok(())
    }

    pub(super) fn unmerge_one(&mut self, name: &str) -> Result<()> {
        let dtype = self.base.dtype();
        let mut w = self.base.dense_weight()?.to_dtype(DType::F32)?;
        if let Some(factor) = self.merge_norms.remove(name) {
            w = w.broadcast_div(&factor.unsqueeze(1)?)?;
        }
        let w = (w - self.adapters[name].delta_weight()?)?;
        self.base = Linear::new(Dense::new(w.to_dtype(dtype)?, self.base.bias().cloned())?);
        self.merged.retain(|m| m != name);
        Ok(())
    }

    /// Takes the merged adapters out of the base weight again, `W ← W − ΔW` (exact up to
    /// float rounding; a base that was quantized stays dense).
    pub fn unmerge(&mut self) -> Result<()> {
        for name in self.merged.clone().iter().rev() {
            self.unmerge_one(name)?;
        }
        Ok(())
    }

    /// Merges the active adapters and returns the base layer alone (`merge_and_unload`).
    pub fn merge_and_unload(mut self, safe_merge: bool) -> Result<Linear> {
        self.merge(safe_merge)?;
        Ok(self.base)
    }

    /// Like [`LoraLayer::merge_and_unload`], but a quantized base is quantized again with its
    /// own scheme and compute dtype after the merge (peft's merge into a 4-bit layer). Returns
    /// the layer and, for a quantized base, the measured rounding (`path` names the layer in
    /// it). A dense base merges as usual (`None`). Adapters already merged are an error: their
    /// sum with the base is no longer the quantized weight.
    pub fn merge_and_requantize(
        self,
        safe_merge: bool,
        path: &str,
    ) -> Result<(Linear, Option<LayerRounding>)> {
        let Some(q) = self.base.quantized() else {
            return Ok((self.merge_and_unload(safe_merge)?, None));
        };
        if !self.merged.is_empty() {
            return Err(Error::Input(format!(
                "`{path}`: adapters {:?} are merged already (the base is dense now); unmerge \
                 before merge_and_requantize",
                self.merged
            )));
        }
        let compute = self.base.dtype();
        let w0 = q.dequantize(DType::F32)?;
        let (merged, _) = self.fold(w0.clone(), &self.unmerged_active(), safe_merge)?;
        let requantized = q.requantize(&merged, path)?;
        let back = requantized.dequantize(DType::F32)?;
        let report = LayerRounding {
            path: path.to_string(),
            scheme: requantized.kind(),
            max_abs_rounding: max_abs(&(&merged - &back)?)?,
            max_abs_delta: max_abs(&(&merged - &w0)?)?,
        };
        let bias = self.base.bias().map(Tensor::detach);
        let layer = QLinear::from_box(requantized, bias, compute)?;
        Ok((Linear::new(layer), Some(report)))
    }

    /// The base layer without merging (`unload`).
    pub fn unload(self) -> Linear {
        self.base
    }

    /// `max |W_merged − (W + (α/r)·B·A)|` for the active adapters, with the merged weight
    /// produced by [`LoraLayer::merge`] on a copy and the right side computed here from the
    /// base weight and the adapters: the PEFT notebook's check, as one call.
    pub fn verify_merge(&self) -> Result<f32> {
        let mut expected = self.base.dense_weight()?.to_dtype(DType::F32)?;
        for name in self.unmerged_active() {
            let a = &self.adapters[&name];
            let ba = a.lora_b.as_tensor().matmul(a.lora_a.as_tensor())?;
            expected = (expected + (ba * a.scaling)?)?;
            if let Some(m) = &a.magnitude {
                let factor = (m.as_tensor() / row_norm(&expected)?)?;
                expected = expected.broadcast_mul(&factor.unsqueeze(1)?)?;
            }
        }
        let base = Dense::new(self.base.dense_weight()?, self.base.bias().cloned())?;
        let mut copy = LoraLayer::new(Linear::new(base));
        copy.adapters = self.adapters.clone();
        copy.active = self.active.clone();
        copy.merged = self.merged.clone();
        copy.merge(false)?;
        let merged = copy.base.dense_weight()?.to_dtype(DType::F32)?;
        Ok(max_abs(&(merged - expected)?)?)
    }
}
