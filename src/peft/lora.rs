//! The LoRA layer (Hu et al. 2021, *LoRA: Low-Rank Adaptation of Large Language Models*):
//!
//! ```text
//! h = W·x + (α/r) · B·A·dropout(x)        A: [r, in], B: [out, r], W frozen
//! ```
//!
//! A [`LoraLayer`] wraps any [`Linear`] — dense or quantized (NF4 + LoRA is QLoRA) — and holds
//! one or more named adapters. A and B are `Var`s (the only trainable tensors); the base weight
//! is a plain tensor or packed codes and never receives a gradient. `merge` folds the active
//! adapters into the base weight, `W ← W + (α/r)·B·A` (computed in f32, checked finite),
//! `unmerge` takes them out again.

use std::any::Any;
use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::model::linear::{linear_forward, Dense, Linear, LinearLayer};
use crate::{Error, Result};

/// One adapter of a layer: A, B and its scaling.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Rank r.
    pub r: usize,
    /// α.
    pub alpha: f64,
    /// α/r (or α/√r with rsLoRA).
    pub scaling: f64,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f64,
    /// A: `[r, in]`, f32.
    pub lora_a: Var,
    /// B: `[out, r]`, f32.
    pub lora_b: Var,
}

impl LoraAdapter {
    /// ΔW = scaling · B·A, `[out, in]`, f32.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        self.lora_b.as_tensor().matmul(self.lora_a.as_tensor())? * self.scaling
    }

    /// Parameters: r·(in + out).
    pub fn num_parameters(&self) -> usize {
        self.lora_a.elem_count() + self.lora_b.elem_count()
    }
}

/// A linear layer with LoRA adapters.
#[derive(Debug)]
pub struct LoraLayer {
    base: Linear,
    adapters: BTreeMap<String, LoraAdapter>,
    active: Vec<String>,
    merged: Vec<String>,
    disabled: bool,
    training: bool,
}

impl LoraLayer {
    /// Wraps `base` with no adapter yet.
    pub fn new(base: Linear) -> Self {
        Self {
            base,
            adapters: BTreeMap::new(),
            active: Vec::new(),
            merged: Vec::new(),
            disabled: false,
            training: false,
        }
    }

    /// Adds the adapter `name` (A `[r, in]`, B `[out, r]`) and makes it the active one.
    /// Errors when the shapes do not fit the base layer or the name exists.
    pub fn add_adapter(&mut self, name: &str, adapter: LoraAdapter) -> Result<()> {
        let (out, inp) = (self.base.out_features(), self.base.in_features());
        let r = adapter.r;
        for (what, t, want) in [
            ("lora_A", adapter.lora_a.as_tensor(), [r, inp]),
            ("lora_B", adapter.lora_b.as_tensor(), [out, r]),
        ] {
            if t.dims() != want {
                return Err(Error::Shape {
                    name: format!("{what} of adapter `{name}`"),
                    expected: want.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
        }
        if self.adapters.contains_key(name) {
            return Err(Error::Input(format!(
                "an adapter named `{name}` already exists"
            )));
        }
        self.adapters.insert(name.to_string(), adapter);
        self.active = vec![name.to_string()];
        Ok(())
    }

    /// The base layer.
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// The adapters by name.
    pub fn adapters(&self) -> &BTreeMap<String, LoraAdapter> {
        &self.adapters
    }

    /// The adapter `name`.
    pub fn adapter(&self, name: &str) -> Result<&LoraAdapter> {
        self.adapters.get(name).ok_or_else(|| {
            Error::Input(format!(
                "no adapter named `{name}`; this layer has {:?}",
                self.adapters.keys().collect::<Vec<_>>()
            ))
        })
    }

    /// Names of the active adapters.
    pub fn active_adapters(&self) -> &[String] {
        &self.active
    }

    /// Names of the adapters merged into the base weight.
    pub fn merged_adapters(&self) -> &[String] {
        &self.merged
    }

    /// Makes `names` the active adapters.
    pub fn set_active(&mut self, names: &[String]) -> Result<()> {
        for n in names {
            self.adapter(n)?;
        }
        self.active = names.to_vec();
        Ok(())
    }

    /// Turns all adapters off (forward = base) or back on.
    pub fn set_disabled(&mut self, disabled: bool) {
        self.disabled = disabled;
    }

    /// Training mode: dropout on the adapters' input.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Removes the adapter `name` (unmerging it first if merged) and returns it.
    pub fn delete_adapter(&mut self, name: &str) -> Result<LoraAdapter> {
        self.adapter(name)?;
        if self.merged.iter().any(|m| m == name) {
            self.unmerge_one(name)?;
        }
        self.active.retain(|a| a != name);
        Ok(self.adapters.remove(name).expect("checked above"))
    }

    /// Folds the active, not yet merged adapters into the base weight: `W ← W + ΔW`, in f32.
    /// A quantized base is dequantized and becomes a dense layer in its compute dtype (the
    /// merged weight is not on the quantization grid; requantizing it rounds the update).
    /// With `safe_merge`, a ΔW or merged weight with a NaN or ∞ is an error naming the adapter
    /// and nothing changes.
    pub fn merge(&mut self, safe_merge: bool) -> Result<()> {
        let todo: Vec<String> = self
            .active
            .iter()
            .filter(|a| !self.merged.contains(a))
            .cloned()
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let dtype = self.base.dtype();
        let mut w = self.base.dense_weight()?.to_dtype(DType::F32)?;
        for name in &todo {
            let delta = self.adapters[name].delta_weight()?;
            w = (w + delta)?;
            if safe_merge && !all_finite(&w)? {
                return Err(Error::Input(format!(
                    "merging adapter `{name}` gives a weight with NaN or infinite values; \
                     nothing was merged"
                )));
            }
        }
        self.base = Linear::new(Dense::new(w.to_dtype(dtype)?, self.base.bias().cloned())?);
        self.merged.extend(todo);
        Ok(())
    }

    fn unmerge_one(&mut self, name: &str) -> Result<()> {
        let dtype = self.base.dtype();
        let w = self.base.dense_weight()?.to_dtype(DType::F32)?;
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

    /// The base layer without merging (`unload`).
    pub fn unload(self) -> Linear {
        self.base
    }

    /// `max |W_merged − (W + (α/r)·B·A)|` for the active adapters, with the merged weight
    /// produced by [`LoraLayer::merge`] on a copy and the right side computed here from the
    /// base weight and the adapters: the PEFT notebook's check, as one call.
    pub fn verify_merge(&self) -> Result<f32> {
        let mut expected = self.base.dense_weight()?.to_dtype(DType::F32)?;
        for name in self.active.iter().filter(|a| !self.merged.contains(a)) {
            let a = &self.adapters[name];
            let ba = a.lora_b.as_tensor().matmul(a.lora_a.as_tensor())?;
            expected = (expected + (ba * a.scaling)?)?;
        }
        let mut copy = LoraLayer {
            base: Linear::new(Dense::new(
                self.base.dense_weight()?,
                self.base.bias().cloned(),
            )?),
            adapters: self.adapters.clone(),
            active: self.active.clone(),
            merged: self.merged.clone(),
            disabled: false,
            training: false,
        };
        copy.merge(false)?;
        let merged = copy.base.dense_weight()?.to_dtype(DType::F32)?;
        Ok((merged - expected)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?)
    }
}

fn all_finite(t: &Tensor) -> candle_core::Result<bool> {
    // A NaN or ±∞ anywhere makes the sum of |w| non-finite (weights never sum past f32::MAX).
    let s = t.abs()?.sum_all()?.to_scalar::<f32>()?;
    Ok(s.is_finite())
}

impl LinearLayer for LoraLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.base.forward(x)?;
        if self.disabled {
            return Ok(y);
        }
        let mut y = y;
        for name in self.active.iter().filter(|a| !self.merged.contains(a)) {
            let a = &self.adapters[name];
            let mut h = x.to_dtype(DType::F32)?;
            if self.training && a.dropout > 0.0 {
                h = candle_nn::ops::dropout(&h, a.dropout as f32)?;
            }
            let h = linear_forward(&h, a.lora_a.as_tensor(), None)?;
            let h = linear_forward(&h, a.lora_b.as_tensor(), None)?;
            let dt = y.dtype();
            y = (y + (h * a.scaling)?.to_dtype(dt)?)?;
        }
        Ok(y)
    }
    fn in_features(&self) -> usize {
        self.base.in_features()
    }
    fn out_features(&self) -> usize {
        self.base.out_features()
    }
    fn kind(&self) -> String {
        format!("lora({})", self.base.kind())
    }
    /// The weight forward effectively uses: base + the active, unmerged ΔW (f32, then the
    /// base's dtype).
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        let mut w = self.base.dense_weight()?;
        if self.disabled {
            return Ok(w);
        }
        let dtype = w.dtype();
        for name in self.active.iter().filter(|a| !self.merged.contains(a)) {
            w = (w.to_dtype(DType::F32)? + self.adapters[name].delta_weight()?)?.to_dtype(dtype)?;
        }
        Ok(w)
    }
    fn bias(&self) -> Option<&Tensor> {
        self.base.bias()
    }
    fn num_parameters(&self) -> usize {
        self.base.num_parameters()
            + self
                .adapters
                .values()
                .map(LoraAdapter::num_parameters)
                .sum::<usize>()
    }
    fn storage_bytes(&self) -> usize {
        self.base.storage_bytes()
            + self
                .adapters
                .values()
                .map(|a| 4 * a.num_parameters())
                .sum::<usize>()
    }
    fn dtype(&self) -> DType {
        self.base.dtype()
    }
    fn device(&self) -> Device {
        self.base.device()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
