//! How an adapter starts (`init_lora_weights`): peft's default (Kaiming-uniform A, B = 0),
//! Gaussian, random (tests), or PiSSA, which also replaces the base weight by its residual.

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;

use super::config::{InitLoraWeights, LoraConfig};
use super::lora::{row_norm, LoraAdapter, LoraLayer};
use super::pissa::{niter_of, pissa_base_error, pissa_init};
use crate::model::linear::{Dense, Linear};
use crate::model::llama::Llama;
use crate::Result;

/// A Kaiming-uniform A (a = √5: U(−1/√in, 1/√in)), or N(0, 1/r²), or uniform; B zeros unless
/// `Random`. PiSSA is [`init_layer`]'s.
pub(super) fn init_adapter(
    cfg: &LoraConfig,
    r: usize,
    alpha: f64,
    (out, inp): (usize, usize),
    rng: &mut rand::rngs::StdRng,
    device: &Device,
    base_weight: Option<&Tensor>,
) -> Result<LoraAdapter> {
    let uniform = |n: usize, bound: f64, rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect()
    };
    let a = match cfg.init_lora_weights {
        InitLoraWeights::Gaussian => {
            // Box–Muller, σ = 1/r.
            (0..r * inp)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() / r as f64)
                        as f32
                })
                .collect()
        }
        _ => uniform(r * inp, 1.0 / (inp as f64).sqrt(), rng),
    };
    let b = match cfg.init_lora_weights {
        InitLoraWeights::Random => uniform(out * r, 1.0 / (r as f64).sqrt(), rng),
        _ => vec![0f32; out * r],
    };
    let mut adapter = LoraAdapter {
        r,
        alpha,
        scaling: cfg.scaling(r, alpha),
        dropout: cfg.lora_dropout,
        lora_a: Var::from_tensor(&Tensor::from_vec(a, (r, inp), device)?)?,
        lora_b: Var::from_tensor(&Tensor::from_vec(b, (out, r), device)?)?,
        magnitude: None,
    };
    if let Some(w) = base_weight {
        // DoRA: m starts at ‖W + ΔW‖ per row, so the adapted layer starts equal to W + ΔW.
        let w = (w.to_dtype(DType::F32)? + adapter.delta_weight()?)?;
        adapter.magnitude = Some(Var::from_tensor(&row_norm(&w)?)?);
    }
    Ok(adapter)
}

/// The dense base under the layer at `path` (the layer itself, or a LoRA layer's base), if any.
fn dense_base(model: &Llama, path: &str) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let layer = model.linear(path)?;
    let base = layer.innermost();
    if base.is_quantized() {
        return Ok(None);
    }
    Ok(Some((base.dense_weight()?, base.bias().cloned())))
}

/// Checks that PiSSA can start on every layer of `paths` (all dense), before anything changes.
pub(super) fn check_layers(model: &Llama, config: &LoraConfig, paths: &[String]) -> Result<()> {
    if !config.init_lora_weights.is_pissa() {
        return Ok(());
    }
    for path in paths {
        if dense_base(model, path)?.is_none() {
            return Err(pissa_base_error(path, &model.linear(path)?.kind()));
        }
    }
    Ok(())
}

/// The adapter for the layer at `path`; with PiSSA the layer's base weight becomes the residual
/// `W − s·B·A` here.
pub(super) fn init_layer(
    model: &mut Llama,
    path: &str,
    config: &LoraConfig,
    rng: &mut rand::rngs::StdRng,
) -> Result<LoraAdapter> {
    let device = model.device().clone();
    let layer = model.linear(path)?;
    let (r, alpha) = config.rank_and_alpha(path);
    let (out, inp) = (layer.out_features(), layer.in_features());
    if !config.init_lora_weights.is_pissa() {
        let base_weight = if config.use_dora {
            Some(layer.dense_weight()?)
        } else {
            None
        };
        return init_adapter(
            config,
            r,
            alpha,
            (out, inp),
            rng,
            &device,
            base_weight.as_ref(),
        );
    }
    let Some((w, bias)) = dense_base(model, path)? else {
        return Err(pissa_base_error(path, &layer.kind()));
    };
    let scaling = config.scaling(r, alpha);
    let (a, b, w_res) = pissa_init(&w, r, scaling, niter_of(config.init_lora_weights), rng)?;
    let residual = Linear::new(Dense::new(w_res, bias)?);
    match model.linear_mut(path)?.get_mut::<LoraLayer>() {
        Some(l) => l.base = residual,
        None => {
            model.replace_linear(path, residual)?;
        }
    }
    Ok(LoraAdapter {
        r,
        alpha,
        scaling,
        dropout: config.lora_dropout,
        lora_a: Var::from_tensor(&a)?,
        lora_b: Var::from_tensor(&b)?,
        magnitude: None,
    })
}
