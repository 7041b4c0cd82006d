//! Reproducible dropout for adapters (Srivastava et al. 2014): `y = x · mask / (1 − p)` with
//! `mask ~ Bernoulli(1 − p)` per element.
//!
//! candle's own `dropout` draws from an unseeded CPU generator, so two runs (or a run and its
//! resumption from a checkpoint) see different masks. Here the mask of one call is a pure
//! function of `(seed, tick, key)`: `seed` is the run's seed, `tick` a counter the trainer sets
//! before every micro-batch (so a resumed run sets the same ticks again), and `key` names the
//! layer (a hash of its module path and adapter name). Each element's uniform number comes from
//! SplitMix64 (Steele, Lea & Flood 2014) over that triple and the element index, generated on
//! the host and moved to the tensor's device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::Tensor;

/// The shared source of dropout masks: a seed and the tick of the current micro-batch.
/// Clones share the tick.
#[derive(Debug, Clone, Default)]
pub struct DropoutRng {
    seed: u64,
    tick: Arc<AtomicU64>,
}

impl DropoutRng {
    /// A source with this seed, at tick 0.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            tick: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sets the tick (the trainer: one per micro-batch, from the global step).
    pub fn set_tick(&self, tick: u64) {
        self.tick.store(tick, Ordering::Relaxed);
    }

    /// The current tick.
    pub fn tick(&self) -> u64 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Inverted dropout of `x` with probability `p` for the layer `key`: the same
    /// `(seed, tick, key)` always gives the same mask. `p = 0` returns `x`.
    pub fn dropout(&self, x: &Tensor, p: f64, key: u64) -> candle_core::Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        if p >= 1.0 {
            return x.zeros_like();
        }
        let n = x.elem_count();
        let base = splitmix64(splitmix64(self.seed ^ splitmix64(self.tick())) ^ key);
        // Keep when u ≥ p, u uniform in [0, 1) from the top 53 bits.
        let threshold = p * (1u64 << 53) as f64;
        let scale = (1.0 / (1.0 - p)) as f32;
        let mask: Vec<f32> = (0..n as u64)
            .map(|i| {
                let u = (splitmix64(base.wrapping_add(i.wrapping_mul(GOLDEN))) >> 11) as f64;
                if u >= threshold {
                    scale
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function of `z + golden`.
fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A layer's dropout key: FNV-1a of its module path and adapter name.
pub fn dropout_key(path: &str, adapter: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes().chain([0u8]).chain(adapter.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn same_tick_same_mask_and_rate() {
        let x = Tensor::ones((64, 256), DType::F32, &Device::Cpu).unwrap();
        let rng = DropoutRng::new(7);
        rng.set_tick(3);
        let a = rng.dropout(&x, 0.25, 11).unwrap();
        let b = rng.dropout(&x, 0.25, 11).unwrap();
        let diff = (&a - &b).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // Another tick or key gives another mask.
        rng.set_tick(4);
        let c = rng.dropout(&x, 0.25, 11).unwrap();
        let diff = (&a - &c).unwrap().abs().unwrap().sum_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
        // The kept fraction is 1 − p within 4σ (σ = √(p(1−p)/n) ≈ 0.0027), kept values 1/(1−p),
        // so the mean stays 1.
        let v: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let kept = v.iter().filter(|&&e| e > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.75).abs() < 4.0 * 0.0027, "kept {kept}");
        assert!(v.iter().all(|&e| e == 0.0 || (e - 4.0 / 3.0).abs() < 1e-6));
    }
}
