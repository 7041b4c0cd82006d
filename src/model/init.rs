//! Seeded initialisers shared by modules that start trainable tensors themselves (prompt and
//! prefix tuning's embeddings, the MoE router).

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use crate::Result;

/// N(0, std²) as `[rows, cols]`, f32, drawn from `rng` (Box–Muller in f64), as
/// `torch.nn.init.normal_` would be seeded here.
pub fn normal(
    rows: usize,
    cols: usize,
    std: f64,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, (rows, cols), device)?)
}
