//! How much the loss cares about a layer's quantization error (slide 15): the first-order
//! Taylor estimate `Σ ∂L/∂W ⊙ ε` of the change in loss when one projection's weight moves by
//! `ε`, against the true change `L(W + ε) − L(W)`.
//!
//! The gradient comes from candle's autograd: for the duration of a call the layer is swapped
//! for a [`Dense`] layer over a `Var`, then put back (see [`sensitivity`]).

use candle_core::{DType, Tensor, Var, D};
use serde::Serialize;

use super::report::for_each_chunk;
use crate::model::linear::{Dense, Linear};
use crate::model::llama::Llama;
use crate::{Error, Result};

/// Slide 15: how much the loss moves when one layer's weight moves by `ε` — the first-order
/// Taylor estimate against the true change.
///
/// ```text
/// L(W + ε) − L(W)  =  Σ ∂L/∂W ⊙ ε  +  ½ εᵀ H ε  +  O(‖ε‖³)
///      actual           first_order     second order
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sensitivity {
    /// The layer.
    pub path: String,
    /// `L(W)`: mean next-token cross-entropy of the batch, in nats.
    pub loss: f64,
    /// `Σ ∂L/∂W ⊙ ε`.
    pub first_order: f64,
    /// `L(W + ε) − L(W)`.
    pub actual: f64,
    /// `‖ε‖_F`.
    pub delta_norm: f64,
    /// `‖∂L/∂W‖_F`.
    pub grad_norm: f64,
}

impl Sensitivity {
    /// `actual / first_order`: ≈ 1 while the change is linear in `ε`.
    pub fn ratio(&self) -> f64 {
        self.actual / self.first_order
    }

    /// What the first-order term misses: `actual − first_order` (≈ `½ εᵀHε`).
    pub fn remainder(&self) -> f64 {
        self.actual - self.first_order
    }
}

/// Per-token next-token NLL `(N,)` in f32 for `input_ids: (B, T)`, `N = B·(T−1)`:
/// `−log softmax(logits[b, t])[ids[b, t+1]]`. Differentiable (no KV cache, unfused kernels).
fn next_token_nll(model: &Llama, input_ids: &Tensor) -> Result<Tensor> {
    let (b, t) = input_ids.dims2()?;
    let v = model.config().vocab_size;
    let logits = model.forward(input_ids, None)?; // (B, T, V) f32
    let logits = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let targets = input_ids
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::U32)?
        .reshape((b * (t - 1), 1))?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    Ok(logp.gather(&targets, 1)?.squeeze(1)?.neg()?)
}

/// Mean of a 1-D tensor, summed in f64 on the host.
fn mean_f64(t: &Tensor) -> Result<f64> {
    let v = t.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    Ok(v.iter().sum::<f64>() / v.len().max(1) as f64)
}

/// `Σ a ⊙ b` in f64.
fn dot_f64(a: &Tensor, b: &Tensor) -> Result<f64> {
    let mut s = 0.0;
    for_each_chunk(a, b, "sensitivity", ["gradient", "delta"], |x, y| {
        s += x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
    })?;
    Ok(s)
}

/// First-order estimate and actual change of the loss when the weight of the projection at
/// `path` moves by `delta` (slide 15), on the batch `input_ids: (B, T)`, `T ≥ 2`.
///
/// `L` is the mean next-token cross-entropy of the batch. The base weights are plain tensors
/// (no gradient), so for `∂L/∂W` the layer is swapped, for the duration of the call, for a
/// [`Dense`] layer over a candle `Var` holding its effective weight `W = dense_weight()` (and
/// its bias); `L(W + ε)` uses a dense layer over `W + ε`. The original layer is put back
/// before returning, also on error — hence `&mut`, though the model is unchanged afterwards.
/// For a quantized layer the gradient is therefore taken at its dequantized weight; for a tied
/// `lm_head` only the output projection moves (the embedding lookup keeps its table).
pub fn sensitivity(
    model: &mut Llama,
    input_ids: &Tensor,
    path: &str,
    delta: &Tensor,
) -> Result<Sensitivity> {
    let lin = model.linear(path)?;
    let w = lin.dense_weight()?;
    let bias = lin.bias().cloned();
    if delta.dims() != w.dims() {
        return Err(Error::Shape {
            name: format!("delta for `{path}`"),
            expected: w.dims().to_vec(),
            found: delta.dims().to_vec(),
        });
    }
    match *input_ids.dims() {
        [b, t] if b > 0 && t >= 2 => {}
        _ => {
            return Err(Error::Input(format!(
                "sensitivity needs input_ids of shape (batch, seq_len) with seq_len >= 2 \
                 (the loss predicts token t+1 from tokens ..t), got {:?}",
                input_ids.dims()
            )))
        }
    }
    let delta = delta.to_dtype(w.dtype())?.to_device(w.device())?;
    let var = Var::from_tensor(&w)?;
    let probe = Linear::new(Dense::new(var.as_tensor().clone(), bias.clone())?);
    let original = model.replace_linear(path, probe)?;
    let result = (|| -> Result<Sensitivity> {
        let nll = next_token_nll(model, input_ids)?;
        let loss = mean_f64(&nll)?;
        let grads = nll.mean_all()?.backward()?;
        let g = grads.get(var.as_tensor()).ok_or_else(|| {
            Error::Input(format!(
                "sensitivity: no gradient reached `{path}` (is it used by forward?)"
            ))
        })?;
        let first_order = dot_f64(g, &delta)?;
        let grad_norm = dot_f64(g, g)?.sqrt();
        let moved = (var.as_tensor().detach() + &delta)?;
        model.replace_linear(path, Linear::new(Dense::new(moved, bias)?))?;
        let loss_moved = mean_f64(&next_token_nll(model, input_ids)?)?;
        Ok(Sensitivity {
            path: path.to_string(),
            loss,
            first_order,
            actual: loss_moved - loss,
            delta_norm: dot_f64(&delta, &delta)?.sqrt(),
            grad_norm,
        })
    })();
    // Put the original layer back whatever happened (same shape: this cannot fail).
    model.replace_linear(path, original)?;
    result
}

/// [`sensitivity`] with `ε = quantize(W) − W`: `quantize` maps the layer's effective weight
/// to its quantized-then-dequantized version (e.g. `|w| Ok(q.dequantize(w.dtype())?)`).
pub fn quantization_sensitivity(
    model: &mut Llama,
    input_ids: &Tensor,
    path: &str,
    quantize: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Sensitivity> {
    let w = model.linear(path)?.dense_weight()?;
    let q = quantize(&w)?;
    if q.dims() != w.dims() {
        return Err(Error::Shape {
            name: format!("quantized weight of `{path}`"),
            expected: w.dims().to_vec(),
            found: q.dims().to_vec(),
        });
    }
    let delta = (q.to_dtype(w.dtype())? - &w)?;
    sensitivity(model, input_ids, path, &delta)
}
