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
//!
//! DoRA (Liu et al. 2024, *DoRA: Weight-Decomposed Low-Rank Adaptation*) adds a trainable
//! magnitude m per output row: `W' = m · (W + ΔW) / ‖W + ΔW‖` (row norm, detached in forward
//! as in peft's `dora.py`); m starts at ‖W + ΔW‖, so the model starts unchanged.
//!
//! Merging lives in `merge.rs`. Speed: entering evaluation mode (`model.eval()`, i.e.
//! [`LinearLayer::set_training`]`(false)`) makes contiguous copies of Aᵀ and s·Bᵀ, which
//! forward then multiplies by (candle multiplies by the strided transpose of the `[out, r]` B
//! several times slower, and the copies are not part of the autograd graph). Training mode
//! (`model.train()`) drops them and reads A and B, which an optimizer changes in place. The
//! mode is explicit state set by those two calls only: after changing A or B by hand in
//! evaluation mode, call `eval()` again; before training A and B in a loop of your own, call
//! `train()` (the trainer does both). A layer never put in evaluation mode reads A and B.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::model::linear::{linear_forward, Linear, LinearLayer};

use super::lora_delta::lora_delta;
use super::lora_eval::add_lora_eval;
use crate::peft::dropout::{dropout_key, DropoutRng};
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
    /// DoRA's magnitude m: `[out]`, f32 (`None` for plain LoRA).
    pub magnitude: Option<Var>,
}

impl LoraAdapter {
    /// ΔW = scaling · B·A, `[out, in]`, f32.
    pub fn delta_weight(&self) -> candle_core::Result<Tensor> {
        // (s·B)·A: the scaling on the small [out, r] factor.
        (self.lora_b.as_tensor() * self.scaling)?.matmul(self.lora_a.as_tensor())
    }

    /// Parameters: r·(in + out), plus `out` for DoRA's magnitude.
    pub fn num_parameters(&self) -> usize {
        self.lora_a.elem_count()
            + self.lora_b.elem_count()
            + self.magnitude.as_ref().map_or(0, |m| m.elem_count())
    }
}

/// ‖W‖ per output row, `[out]` (f32): DoRA's column norm of the `[in, out]` weight in the paper,
/// which is the row norm of PyTorch's `[out, in]` layout.
pub fn row_norm(w: &Tensor) -> candle_core::Result<Tensor> {
    w.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()
}

/// A linear layer with LoRA adapters.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub(super) base: Linear,
    pub(super) adapters: BTreeMap<String, LoraAdapter>,
    pub(super) active: Vec<String>,
    pub(super) merged: Vec<String>,
    pub(super) disabled: bool,
    pub(super) training: bool,
    /// DoRA: the row norm of W + ΔW at merge time, to unmerge exactly.
    pub(super) merge_norms: BTreeMap<String, Tensor>,
    /// Seeded dropout masks and this layer's key (its module path); `None` draws from
    /// candle's unseeded generator.
    pub(super) dropout_rng: Option<(DropoutRng, String)>,
    /// Made on entering evaluation mode: per plain-LoRA adapter, contiguous Aᵀ `[in, r]` and
    /// s·Bᵀ `[r, out]` (f32, detached). Empty in training mode.
    eval_copies: BTreeMap<String, (Tensor, Tensor)>,
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
            merge_norms: BTreeMap::new(),
            dropout_rng: None,
            eval_copies: BTreeMap::new(),
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

    /// Whether forward runs in training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Number of adapters whose evaluation copies forward uses (0 in training mode).
    pub fn eval_copies_len(&self) -> usize {
        self.eval_copies.len()
    }

    /// The evaluation copies Aᵀ and s·Bᵀ of every plain-LoRA adapter (DoRA reads its `Var`s).
    fn make_eval_copies(&self) -> candle_core::Result<BTreeMap<String, (Tensor, Tensor)>> {
        let mut copies = BTreeMap::new();
        for (name, a) in self.adapters.iter().filter(|(_, a)| a.magnitude.is_none()) {
            let at = a.lora_a.as_tensor().detach().t()?.contiguous()?; // [in, r]
            let sbt = (a.lora_b.as_tensor().detach().t()? * a.scaling)?.contiguous()?; // [r, out]
            copies.insert(name.clone(), (at, sbt));
        }
        Ok(copies)
    }

    /// Draws dropout masks from `rng` with keys from this layer's module `path` and the adapter
    /// name, so that a run is reproducible and resumable (see [`DropoutRng`]).
    pub fn set_dropout_rng(&mut self, rng: DropoutRng, path: &str) {
        self.dropout_rng = Some((rng, path.to_string()));
    }

    /// Removes the adapter `name` (unmerging it first if merged) and returns it.
    pub fn delete_adapter(&mut self, name: &str) -> Result<LoraAdapter> {
        self.adapter(name)?;
        if self.merged.iter().any(|m| m == name) {
            self.unmerge_one(name)?;
        }
        self.active.retain(|a| a != name);
        self.eval_copies.remove(name);
        Ok(self.adapters.remove(name).expect("checked above"))
    }
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
            if let (false, Some((at, sbt))) = (self.training, self.eval_copies.get(name)) {
                // Evaluation: x·Aᵀ·(s·Bᵀ) against contiguous copies, s folded into the copy.
                if let Some(sum) = add_lora_eval(&y, x, at, sbt)? {
                    // f32 on the CPU: both products on this thread (lora_eval.rs).
                    y = sum;
                    continue;
                }
                let lora = matmul_2d(&matmul_2d(&to_f32(x)?, at)?, sbt)?;
                let dt = y.dtype();
                y = (y + to_dtype(lora, dt)?)?;
                continue;
            }
            let mut h = to_f32(x)?;
            if self.training && a.dropout > 0.0 {
                h = match &self.dropout_rng {
                    Some((rng, path)) => rng.dropout(&h, a.dropout, dropout_key(path, name))?,
                    None => candle_nn::ops::dropout(&h, a.dropout as f32)?,
                };
            }
            let (la, lb) = (a.lora_a.as_tensor(), a.lora_b.as_tensor());
            let lora = match (&a.magnitude, lora_delta(&h, la, lb, a.scaling)?) {
                // Training: one op with its own backward (lora_delta.rs).
                (None, Some(delta)) => delta,
                _ => {
                    // Scale the r-wide intermediate, not the [.., out] result: one pass less.
                    let xa = (linear_forward(&h, la, None)? * a.scaling)?;
                    linear_forward(&xa, lb, None)?
                }
            };
            match &a.magnitude {
                None => {
                    let dt = y.dtype();
                    y = (y + to_dtype(lora, dt)?)?;
                }
                Some(m) => {
                    // DoRA (peft's dora.py): with W·x the base output without bias and
                    // n = ‖W + ΔW‖ per row, detached,
                    //   y = W·x + b + (m/n − 1)·W·x + (m/n)·ΔW·x = (m/n)·(W + ΔW)·x + b.
                    let w = self.base.dense_weight()?.to_dtype(DType::F32)?;
                    let norm = row_norm(&(&w + a.delta_weight()?.detach())?)?.detach();
                    let scale = (m.as_tensor() / norm)?;
                    let base_x = linear_forward(&to_f32(x)?, &w, None)?;
                    let dora = ((base_x.broadcast_mul(&(&scale - 1.0)?)?)
                        + lora.broadcast_mul(&scale)?)?;
                    let dt = y.dtype();
                    y = (y + to_dtype(dora, dt)?)?;
                }
            }
        }
        Ok(y)
    }
    fn kind(&self) -> &str {
        "lora"
    }
    fn base(&self) -> Option<&Linear> {
        Some(&self.base)
    }
    fn base_mut(&mut self) -> Option<&mut Linear> {
        Some(&mut self.base)
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
            let a = &self.adapters[name];
            let mut m = (w.to_dtype(DType::F32)? + a.delta_weight()?)?;
            if let Some(mag) = &a.magnitude {
                let factor = (mag.as_tensor() / row_norm(&m)?)?;
                m = m.broadcast_mul(&factor.unsqueeze(1)?)?;
            }
            w = m.to_dtype(dtype)?;
        }
        Ok(w)
    }
    /// A, B (and DoRA's m) of every adapter, as peft names them inside the layer.
    fn trainable_parameters(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (name, a) in &self.adapters {
            out.push((format!("lora_A.{name}.weight"), a.lora_a.clone()));
            out.push((format!("lora_B.{name}.weight"), a.lora_b.clone()));
            if let Some(m) = &a.magnitude {
                out.push((format!("lora_magnitude_vector.{name}.weight"), m.clone()));
            }
        }
        out
    }
    /// Training mode: dropout on, A and B read directly. Evaluation mode: dropout off, forward
    /// multiplies by contiguous copies of Aᵀ and s·Bᵀ made here (see the module docs).
    fn set_training(&mut self, training: bool) {
        self.training = training;
        self.base.set_training(training);
        self.eval_copies = if training {
            BTreeMap::new()
        } else {
            // A copy that cannot be made (out of memory) only costs speed: forward reads A, B.
            self.make_eval_copies().unwrap_or_default()
        };
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
}

/// `t` in f32 (no copy when it already is).
fn to_f32(t: &Tensor) -> candle_core::Result<Tensor> {
    if t.dtype() == DType::F32 {
        Ok(t.clone())
    } else {
        t.to_dtype(DType::F32)
    }
}

fn to_dtype(t: Tensor, dtype: DType) -> candle_core::Result<Tensor> {
    if t.dtype() == dtype {
        Ok(t)
    } else {
        t.to_dtype(dtype)
    }
}

/// `x·m` for `x: [.., k]` and a matrix `m: [k, n]`: the leading dims of `x` as one batch of rows.
fn matmul_2d(x: &Tensor, m: &Tensor) -> candle_core::Result<Tensor> {
    match *x.dims() {
        [_, _] => x.matmul(m),
        [b, _, _] => x.matmul(&m.broadcast_left(b)?),
        [b1, b2, _, _] => x.matmul(&m.broadcast_left((b1, b2))?),
        _ => candle_core::bail!("LoRA input of shape {:?}: expected 2 to 4 dims", x.dims()),
    }
}
