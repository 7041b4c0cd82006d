//! AdamW (Loshchilov & Hutter 2019, *Decoupled Weight Decay Regularization*) with its state in
//! the open, so that a checkpoint can save and restore it, and global gradient-norm clipping.
//!
//! For a parameter θ with gradient g at step t = 1, 2, ... (as `torch.optim.AdamW`):
//!
//! ```text
//! θ ← θ − lr·λ·θ                                   decoupled weight decay
//! m ← β₁·m + (1 − β₁)·g        v ← β₂·v + (1 − β₂)·g²
//! θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//!
//! Clipping (`torch.nn.utils.clip_grad_norm_`): with ‖g‖ the 2-norm of all gradients together,
//! every gradient is multiplied by `min(1, max_norm / (‖g‖ + 1e-6))`.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};

use crate::{Error, Result};

/// AdamW's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// λ, the decoupled weight decay.
    pub weight_decay: f64,
}

/// AdamW over named `Var`s, with first and second moments kept per name.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    vars: Vec<(String, Var)>,
    /// m and v per var (f32, same shape), created on the first step.
    moments: Vec<Option<(Tensor, Tensor)>>,
    step: usize,
}

impl AdamW {
    /// An optimizer for `vars` (name, var); names key the saved state.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Self {
        let n = vars.len();
        Self {
            config,
            vars,
            moments: vec![None; n],
            step: 0,
        }
    }

    /// The parameters, with their names.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Optimizer steps taken (t).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// One update with learning rate `lr`; `grads[i]` belongs to `vars()[i]` (`None`: no
    /// gradient reached it, the parameter and its moments are left as they are, as torch does).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            return Err(Error::Input(format!(
                "AdamW: {} gradients for {} parameters",
                grads.len(),
                self.vars.len()
            )));
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let var = &self.vars[i].1;
            let g = g.to_dtype(DType::F32)?;
            let (m, v) = match self.moments[i].take() {
                Some(mv) => mv,
                None => (g.zeros_like()?, g.zeros_like()?),
            };
            let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let theta = var.as_tensor().to_dtype(DType::F32)?;
            let theta = if c.weight_decay > 0.0 {
                (&theta * (1.0 - lr * c.weight_decay))?
            } else {
                theta
            };
            let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            let theta = (theta - update)?;
            var.set(&theta.to_dtype(var.dtype())?)?;
            self.moments[i] = Some((m, v));
        }
        Ok(())
    }

    /// The state as tensors: `{name}.exp_avg` (m) and `{name}.exp_avg_sq` (v), torch's names.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for ((name, _), mv) in self.vars.iter().zip(&self.moments) {
            if let Some((m, v)) = mv {
                out.insert(format!("{name}.exp_avg"), m.clone());
                out.insert(format!("{name}.exp_avg_sq"), v.clone());
            }
        }
        out
    }

    /// Restores the state saved by [`AdamW::state_tensors`] at step `step`. Every moment must
    /// have its parameter's shape; a parameter without saved moments starts fresh.
    pub fn load_state(&mut self, mut state: BTreeMap<String, Tensor>, step: usize) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let m = state.remove(&format!("{name}.exp_avg"));
            let v = state.remove(&format!("{name}.exp_avg_sq"));
            self.moments[i] = match (m, v) {
                (Some(m), Some(v)) => {
                    for (what, t) in [("exp_avg", &m), ("exp_avg_sq", &v)] {
                        if t.dims() != var.dims() {
                            return Err(Error::Shape {
                                name: format!("optimizer state {name}.{what}"),
                                expected: var.dims().to_vec(),
                                found: t.dims().to_vec(),
                            });
                        }
                    }
                    Some((
                        m.to_dtype(DType::F32)?.to_device(var.device())?,
                        v.to_dtype(DType::F32)?.to_device(var.device())?,
                    ))
                }
                _ => None,
            };
        }
        if let Some(extra) = state.keys().next() {
            return Err(Error::Input(format!(
                "optimizer state has `{extra}`, which belongs to no trainable parameter"
            )));
        }
        self.step = step;
        Ok(())
    }
}

/// The 2-norm of all gradients together: `√(Σ ‖gᵢ‖²)`, in f64.
pub fn global_grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum = 0.0f64;
    for g in grads.iter().flatten() {
        sum += g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
    }
    Ok(sum.sqrt())
}

/// Scales the gradients so that their global norm is at most `max_norm` (torch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e-6)` when below 1). Returns the norm before
/// clipping, which is what transformers logs as `grad_norm`.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    if max_norm > 0.0 && norm.is_finite() {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads.iter_mut().flatten() {
                *g = (&*g * coef)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps of torch.optim.AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    /// on θ = [1, −2] with gradients [0.5, 0.25] then [−1, 2], worked through the formulas:
    /// step 1: θ·(1 − 0.01) then −0.1·sign(g) (m̂/√v̂ = ±1): [0.89, −2.08];
    /// step 2 by the same formulas in f64 below.
    #[test]
    fn matches_the_formulas() {
        let dev = Device::Cpu;
        let var = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![("p".into(), var.clone())], cfg);
        let g1 = Tensor::new(&[0.5f32, 0.25], &dev).unwrap();
        opt.step(&[Some(g1)], 0.1).unwrap();
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        assert!(
            (got[0] - 0.89).abs() < 1e-6 && (got[1] + 2.08).abs() < 1e-6,
            "{got:?}"
        );
        let g2 = [-1.0f64, 2.0];
        let mut want = [0.89f64, -2.08];
        let g1 = [0.5f64, 0.25];
        for i in 0..2 {
            let m = 0.9 * 0.1 * g1[i] + 0.1 * g2[i];
            let v = 0.999 * 0.001 * g1[i] * g1[i] + 0.001 * g2[i] * g2[i];
            want[i] *= 1.0 - 0.1 * 0.1;
            let denom = v.sqrt() / (1.0 - 0.999f64.powi(2)).sqrt() + 1e-8;
            want[i] -= 0.1 / (1.0 - 0.9f64.powi(2)) * m / denom;
        }
        opt.step(&[Some(Tensor::new(&[-1.0f32, 2.0], &dev).unwrap())], 0.1)
            .unwrap();
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - want[i]).abs() < 1e-6,
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Some(Tensor::new(&[3.0f32], &dev).unwrap()),
            None,
            Some(Tensor::new(&[4.0f32], &dev).unwrap()),
        ];
        let norm = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-12);
        let after = global_grad_norm(&g).unwrap();
        assert!((after - 5.0 / (5.0 + 1e-6)).abs() < 1e-6);
    }
}
