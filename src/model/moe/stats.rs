//! What a router did with a batch, for logs and figures: per expert the share of the top-k
//! slots it received (its load) and its mean gate weight when chosen, the mean routing entropy
//! `−Σ_e P_e·ln P_e` (nats; ln E is uniform, 0 is one expert), and the experts that collapsed
//! (a load under `1/(4E)`).

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::router::Routing;
use crate::Result;

/// Routing statistics over the real tokens of a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingStats {
    /// Tokens counted (padding excluded).
    pub tokens: usize,
    /// Per expert, the share of all top-k slots it received (sums to 1).
    pub load: Vec<f64>,
    /// Per expert, its mean weight over the slots it received (0 when never chosen).
    pub mean_gate: Vec<f64>,
    /// Mean per-token entropy of the router probabilities, in nats.
    pub entropy: f64,
}

impl RoutingStats {
    /// The statistics of `routing` over the tokens where `mask` (`(N,)`, optional) is 1.
    pub fn of(routing: &Routing, mask: Option<&Tensor>) -> Result<Self> {
        let probs = routing.probs.detach().to_vec2::<f32>()?;
        let idx = routing.indices.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let w = routing.weights.detach().to_vec2::<f32>()?;
        let keep: Vec<bool> = match mask {
            None => vec![true; probs.len()],
            Some(m) => m
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|x| x > 0.0)
                .collect(),
        };
        let e = probs.first().map_or(0, Vec::len);
        let (mut slots, mut gate) = (vec![0f64; e], vec![0f64; e]);
        let (mut tokens, mut entropy) = (0usize, 0f64);
        for n in (0..probs.len()).filter(|&n| keep.get(n).copied().unwrap_or(false)) {
            tokens += 1;
            entropy -= probs[n]
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| p as f64 * (p as f64).ln())
                .sum::<f64>();
            for (j, &ex) in idx[n].iter().enumerate() {
                if let Some(s) = slots.get_mut(ex as usize) {
                    *s += 1.0;
                    gate[ex as usize] += w[n][j] as f64;
                }
            }
        }
        let total: f64 = slots.iter().sum();
        Ok(Self {
            tokens,
            load: slots.iter().map(|s| s / total.max(1.0)).collect(),
            mean_gate: slots
                .iter()
                .zip(&gate)
                .map(|(s, g)| if *s > 0.0 { g / s } else { 0.0 })
                .collect(),
            entropy: entropy / tokens.max(1) as f64,
        })
    }

    /// Experts whose load is under `1/(4E)`: the "expert collapse" warning.
    pub fn collapsed(&self) -> Vec<usize> {
        let floor = 1.0 / (4.0 * self.load.len().max(1) as f64);
        (0..self.load.len())
            .filter(|&e| self.load[e] < floor)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::moe::{Router, RouterConfig};
    use candle_core::Device;

    #[test]
    fn load_gate_entropy_and_collapse() -> Result<()> {
        let cfg = RouterConfig {
            num_experts: 4,
            top_k: 2,
            ..Default::default()
        };
        let w = Tensor::eye(4, DType::F32, &Device::Cpu)?;
        let r = Router::from_tensors(&cfg, &w, None)?;
        // Three tokens prefer experts (0, 1); the padding token would prefer (2, 3).
        let h = Tensor::new(
            &[
                [5f32, 4., 0., 0.],
                [5., 4., 0., 0.],
                [5., 4., 0., 0.],
                [0., 0., 5., 4.],
            ],
            &Device::Cpu,
        )?;
        let routing = r.route(&h)?;
        let mask = Tensor::new(&[1u32, 1, 1, 0], &Device::Cpu)?;
        let s = RoutingStats::of(&routing, Some(&mask))?;
        assert_eq!(s.tokens, 3);
        assert_eq!(s.load, vec![0.5, 0.5, 0.0, 0.0]);
        assert_eq!(s.collapsed(), vec![2, 3]);
        let p = routing.probs.to_vec2::<f32>()?;
        assert!((s.mean_gate[0] - p[0][0] as f64).abs() < 1e-6);
        let h0: f64 = -p[0]
            .iter()
            .map(|&x| x as f64 * (x as f64).ln())
            .sum::<f64>();
        assert!((s.entropy - h0).abs() < 1e-6);
        Ok(())
    }
}
