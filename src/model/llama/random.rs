//! Random weights for [`Llama::init_random`]: normal with std 0.02 (transformers'
//! `initializer_range`), norms at 1, seeded.

use candle_core::{DType, Device, Tensor};

use super::*;

/// Seeded random weights in the shapes the model asks for.
pub(super) struct RandomWeights {
    seed: u64,
    count: u64,
}

impl RandomWeights {
    pub(super) fn new(seed: u64) -> Self {
        Self { seed, count: 0 }
    }
}

impl WeightSource for RandomWeights {
    fn get(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        self.count += 1;
        if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            return Ok(Tensor::ones(shape, dtype, device)?);
        }
        let n: usize = shape.iter().product();
        let mut rng =
            StdRng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(self.count));
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // Box–Muller: N(0, 0.02²).
                let u1: f32 = rng.random::<f32>().max(1e-12);
                let u2: f32 = rng.random();
                0.02 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }
}
