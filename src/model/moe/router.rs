//! The top-k router (Shazeer et al. 2017, *Outrageously Large Neural Networks*):
//!
//! ```text
//! logits = W·h (+ b)              W: [E, C]                      (N, E)
//! P      = softmax(logits)        in f32                          (N, E)
//! idx, w = top-k(P)               the k largest, in decreasing order   (N, k)
//! w      = w / Σ w                only with norm_topk_prob (Mixtral: true; the guide: false)
//! ```
//!
//! The guide's `MoERouter` is `nn.Linear(hidden, E)` (with a bias) → softmax → `torch.topk`,
//! without renormalizing; Mixtral's gate has no bias and renormalizes. The kept weights are
//! gathered from `P`, so a loss on the experts' weighted outputs reaches the router.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// How a router is built.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Number of experts E (8).
    pub num_experts: usize,
    /// Experts per token k (2).
    pub top_k: usize,
    /// Divide the k weights by their sum (false, as the guide; Mixtral: true).
    pub norm_topk_prob: bool,
    /// A bias in the routing layer (true, as the guide's `nn.Linear`; Mixtral's gate: false).
    pub bias: bool,
    /// Standard deviation of the normal initialisation of `W` (0.02, transformers'
    /// `initializer_range`); the bias starts at zero.
    pub init_std: f64,
    /// Multiplicative jitter on the router's input while training: `h · U(1 − ε, 1 + ε)` per
    /// element (Mixtral's `router_jitter_noise`; 0 = off).
    pub jitter_noise: f64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            num_experts: 8,
            top_k: 2,
            norm_topk_prob: false,
            bias: true,
            init_std: 0.02,
            jitter_noise: 0.0,
        }
    }
}

impl RouterConfig {
    /// Checks the fields, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.num_experts == 0 {
            return Err(Error::config("num_experts", "must be at least 1, got 0"));
        }
        if self.top_k == 0 || self.top_k > self.num_experts {
            return Err(Error::config(
                "top_k",
                format!(
                    "must be in 1..={} (num_experts), got {}",
                    self.num_experts, self.top_k
                ),
            ));
        }
        if !(self.init_std.is_finite() && self.init_std >= 0.0) {
            return Err(Error::config(
                "init_std",
                format!("must be a finite number ≥ 0, got {}", self.init_std),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter_noise) {
            return Err(Error::config(
                "jitter_noise",
                format!("must be in [0, 1), got {}", self.jitter_noise),
            ));
        }
        Ok(())
    }
}

/// What the router decided for `N` tokens.
#[derive(Debug, Clone)]
pub struct Routing {
    /// `W·h + b`, `(N, E)`, f32.
    pub logits: Tensor,
    /// `softmax(logits)`, `(N, E)`, f32.
    pub probs: Tensor,
    /// The chosen experts, `(N, k)` u32, most probable first.
    pub indices: Tensor,
    /// Their weights, `(N, k)` f32 (renormalized with `norm_topk_prob`); differentiable.
    pub weights: Tensor,
}

/// A routing layer with trainable `W: [E, C]` (and `b: [E]`), f32.
#[derive(Debug, Clone)]
pub struct Router {
    config: RouterConfig,
    weight: Var,
    bias: Option<Var>,
}

impl Router {
    /// A router for `hidden_size`-wide tokens, `W ~ N(0, init_std²)` from `seed`.
    pub fn new(
        config: &RouterConfig,
        hidden_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let w = crate::model::init::normal(
            config.num_experts,
            hidden_size,
            config.init_std,
            &mut rng,
            device,
        )?;
        let weight = Var::from_tensor(&w)?;
        let bias = if config.bias {
            Some(Var::zeros(config.num_experts, DType::F32, device)?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            weight,
            bias,
        })
    }

    /// A router with the given `weight: [E, C]` and `bias: [E]` (f32), e.g. from a file.
    pub fn from_tensors(
        config: &RouterConfig,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<Self> {
        config.validate()?;
        let (e, _) = weight.dims2()?;
        if e != config.num_experts {
            return Err(Error::Shape {
                name: "router.weight".into(),
                expected: vec![config.num_experts, weight.dim(1)?],
                found: weight.dims().to_vec(),
            });
        }
        if let Some(b) = bias {
            if b.dims() != [e] {
                return Err(Error::Shape {
                    name: "router.bias".into(),
                    expected: vec![e],
                    found: b.dims().to_vec(),
                });
            }
        }
        Ok(Self {
            config: config.clone(),
            weight: Var::from_tensor(&weight.to_dtype(DType::F32)?)?,
            bias: bias
                .map(|b| Var::from_tensor(&b.to_dtype(DType::F32)?))
                .transpose()?,
        })
    }

    /// The config.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// The trainable tensors: `("weight", W)` and `("bias", b)`.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }

    /// [`Router::route`] while training: the input jittered first (see
    /// [`RouterConfig::jitter_noise`]), the noise drawn from `seed`.
    pub fn route_training(&self, h: &Tensor, seed: u64) -> Result<Routing> {
        let eps = self.config.jitter_noise;
        if eps == 0.0 {
            return self.route(h);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let noise: Vec<f32> = (0..h.elem_count())
            .map(|_| rng.random_range(1.0 - eps..1.0 + eps) as f32)
            .collect();
        let noise = Tensor::from_vec(noise, h.dims(), h.device())?;
        self.route(&h.to_dtype(DType::F32)?.mul(&noise)?)
    }

    /// Routes `h: (N, C)` (any float dtype; the router computes in f32).
    ///
    /// # Shapes
    /// `h: (N, C)` → logits, probs `(N, E)`; indices, weights `(N, k)`.
    pub fn route(&self, h: &Tensor) -> Result<Routing> {
        let (_, c) = h.dims2()?;
        if c != self.weight.dim(1)? {
            return Err(Error::Shape {
                name: "router input".into(),
                expected: vec![h.dim(0)?, self.weight.dim(1)?],
                found: h.dims().to_vec(),
            });
        }
        let h = h.to_dtype(DType::F32)?;
        let mut logits = h.matmul(&self.weight.as_tensor().t()?)?; // (N, E)
        if let Some(b) = &self.bias {
            logits = logits.broadcast_add(b.as_tensor())?;
        }
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?; // plain ops: differentiable
        let k = self.config.top_k;
        let indices = probs
            .detach()
            .arg_sort_last_dim(false)?
            .narrow(D::Minus1, 0, k)?
            .contiguous()?; // (N, k)
        let mut weights = probs.gather(&indices, D::Minus1)?;
        if self.config.norm_topk_prob {
            weights = weights.broadcast_div(&weights.sum_keepdim(D::Minus1)?)?;
        }
        Ok(Routing {
            logits,
            probs,
            indices,
            weights,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(norm: bool) -> Router {
        let cfg = RouterConfig {
            num_experts: 4,
            top_k: 2,
            norm_topk_prob: norm,
            ..Default::default()
        };
        // W rows are one-hot, so logits = h[e] + b[e].
        let w = Tensor::eye(4, DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::new(&[0f32, 0., 0., 0.], &Device::Cpu).unwrap();
        Router::from_tensors(&cfg, &w, Some(&b)).unwrap()
    }

    #[test]
    fn top_k_takes_the_largest_probabilities_in_order() -> Result<()> {
        let h = Tensor::new(&[[0f32, 2., 1., -1.], [3., 0., 0., 1.]], &Device::Cpu)?;
        let r = router(false).route(&h)?;
        assert_eq!(r.indices.to_vec2::<u32>()?, vec![vec![1, 2], vec![0, 3]]);
        // softmax([0, 2, 1, -1]): e^x / Σ e^x.
        let z: f64 = [0f64, 2., 1., -1.].iter().map(|x| x.exp()).sum();
        let w = r.weights.to_vec2::<f32>()?;
        assert!((w[0][0] as f64 - 2f64.exp() / z).abs() < 1e-6);
        assert!((w[0][1] as f64 - 1f64.exp() / z).abs() < 1e-6);
        // Renormalized: the k weights sum to one, in the same ratio.
        let n = router(true).route(&h)?.weights.to_vec2::<f32>()?;
        assert!((n[0][0] + n[0][1] - 1.0).abs() < 1e-6);
        assert!((n[0][0] / n[0][1] - w[0][0] / w[0][1]).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn gradients_reach_the_router_through_the_kept_weights() -> Result<()> {
        let r = router(false);
        let h = Tensor::new(&[[0f32, 2., 1., -1.]], &Device::Cpu)?;
        // L = Σ kept weights = P₁ + P₂: ∂L/∂b_e = P_e·(1[e kept] − L).
        let out = r.route(&h)?;
        let g = out.weights.sum_all()?.backward()?;
        let gb = g
            .get(r.named_vars()[1].1.as_tensor())
            .expect("the bias gets a gradient")
            .to_vec1::<f32>()?;
        let p = out.probs.squeeze(0)?.to_vec1::<f32>()?;
        let l = p[1] + p[2];
        for (e, &ge) in gb.iter().enumerate() {
            let kept = if e == 1 || e == 2 { 1.0 } else { 0.0 };
            assert!((ge - p[e] * (kept - l)).abs() < 1e-6, "expert {e}: {ge}");
        }
        Ok(())
    }

    #[test]
    fn jitter_is_bounded_seeded_and_off_by_default() -> Result<()> {
        let h = Tensor::new(&[[0f32, 2., 1., -1.]], &Device::Cpu)?;
        let plain = router(false);
        let a = plain.route(&h)?.logits.to_vec2::<f32>()?;
        assert_eq!(plain.route_training(&h, 1)?.logits.to_vec2::<f32>()?, a);
        let cfg = RouterConfig {
            num_experts: 4,
            jitter_noise: 0.1,
            ..Default::default()
        };
        let w = Tensor::eye(4, DType::F32, &Device::Cpu)?;
        let j = Router::from_tensors(&cfg, &w, None)?;
        let x = j.route_training(&h, 7)?.logits.to_vec2::<f32>()?;
        assert_eq!(j.route_training(&h, 7)?.logits.to_vec2::<f32>()?, x);
        assert_ne!(x, a);
        for (xi, ai) in x[0].iter().zip(&a[0]) {
            assert!((xi - ai).abs() <= 0.1 * ai.abs() + 1e-6, "{xi} vs {ai}");
        }
        Ok(())
    }

    #[test]
    fn bad_configs_are_named() {
        let cfg = RouterConfig {
            top_k: 9,
            ..Default::default()
        };
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("top_k") && e.contains("1..=8"), "{e}");
    }
}
