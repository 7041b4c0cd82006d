//! One decoder block: RMSNorm, rotary embeddings, grouped-query attention and the SwiGLU MLP,
//! with each projection behind the `Linear` seam. An error inside a projection's forward names
//! the projection's path (`in \`model.layers.17.self_attn.q_proj\` (a lora(nf4) layer)`).

use candle_core::{DType, Tensor, D};

use super::*;

/// RMSNorm with a learned gain `g`: `x / sqrt(mean(x²) + ε) · g`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The gain `g`, `[hidden]`.
    pub weight: Tensor,
    /// ε.
    pub eps: f64,
}

impl RmsNorm {
    /// Applies the norm (candle's kernel when the gain has `x`'s dtype; with a hand-written
    /// backward when `x` or the gain needs a gradient: `model::fused::rms_norm`). A gain in
    /// another dtype than `x` (f32 norms in a bf16 model, after
    /// `prepare_model_for_kbit_training`) multiplies in its dtype, as transformers'
    /// `weight * hidden.to(input_dtype)` promotes, and the result is cast back to `x`'s dtype,
    /// the residual stream's.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        crate::model::fused::rms_norm(x, &self.weight, self.eps)
    }
}

/// Rotary embedding frequencies `θᵢ = base^(−2i/d)`, `i < d/2`, with Llama 3 scaling applied.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3RopeScaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            // As transformers: computed in f32.
            let f = 1f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            match scaling {
                None => f,
                Some(s) => {
                    let old = s.original_max_position_embeddings as f32;
                    let low_wavelen = old / s.low_freq_factor as f32;
                    let high_wavelen = old / s.high_freq_factor as f32;
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let factor = s.factor as f32;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor as f32)
                            / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                }
            }
        })
        .collect()
}

fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Applies RoPE to `x: (B, H, T, D)` with `cos, sin: (B, T, D/2)`: candle's kernel (with its
/// backward, [`crate::model::fused::rope`]), or the plain ops where a gradient is needed on a device
/// without custom ops.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(y) = crate::model::fused::rope(x, cos, sin)? {
        return Ok(y);
    }
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?; // (B, 1, T, D)
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

/// Repeats each k/v head `n_rep` times: `(B, KV, S, D) -> (B, KV·n_rep, S, D)`.
fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// Self-attention with its four projections.
#[derive(Debug, Clone)]
pub struct Attention {
    /// `q_proj`: `[heads·head_dim, hidden]`.
    pub q_proj: Linear,
    /// `k_proj`: `[kv_heads·head_dim, hidden]`.
    pub k_proj: Linear,
    /// `v_proj`: `[kv_heads·head_dim, hidden]`.
    pub v_proj: Linear,
    /// `o_proj`: `[hidden, heads·head_dim]`.
    pub o_proj: Linear,
    pub(super) num_heads: usize,
    pub(super) num_kv_heads: usize,
    pub(super) head_dim: usize,
}

/// The SwiGLU MLP (Shazeer 2020): `down(SiLU(gate(x)) ⊙ up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `gate_proj`: `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// `up_proj`: `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// `down_proj`: `[hidden, intermediate]`.
    pub down_proj: Linear,
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP.
    pub mlp: Mlp,
}

pub(super) struct Step<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: Option<&'a Tensor>,
}

/// The tensors of a [`Step`], owned.
pub(super) struct StepTensors {
    pub(super) cos: Tensor,
    pub(super) sin: Tensor,
    pub(super) mask: Option<Tensor>,
}

impl StepTensors {
    pub(super) fn step(&self) -> Step<'_> {
        Step {
            cos: &self.cos,
            sin: &self.sin,
            mask: self.mask.as_ref(),
        }
    }
}

impl Attention {
    /// `prefix`: this layer's `(keys, values)`, `(B|1, KV, P, D)`, placed before the keys and
    /// values of the tokens (prefix tuning; never rotated here).
    pub(super) fn forward(
        &self,
        layer: usize,
        x: &Tensor,
        step: &Step,
        prefix: Option<&(Tensor, Tensor)>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = proj(&self.q_proj, x, layer, "self_attn.q_proj")?
            .reshape((b, t, h, hd))?
            .transpose(1, 2)?; // (B, H, T, D)
        let k = proj(&self.k_proj, x, layer, "self_attn.k_proj")?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?; // (B, KV, T, D)
        let v = proj(&self.v_proj, x, layer, "self_attn.v_proj")?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = apply_rope(&q, step.cos, step.sin)?;
        let k = apply_rope(&k, step.cos, step.sin)?.contiguous()?;
        let (k, v) = match cache {
            Some((c, l)) => c.append(l, &k, &v)?,
            None => (k, v),
        };
        let (k, v) = match prefix {
            Some((pk, pv)) => {
                let p = pk.dim(2)?;
                let fit = |x: &Tensor| -> candle_core::Result<Tensor> {
                    x.to_dtype(k.dtype())?
                        .broadcast_as((b, kv, p, hd))?
                        .contiguous()
                };
                (
                    Tensor::cat(&[&fit(pk)?, &k], 2)?, // (B, KV, P + T, D)
                    Tensor::cat(&[&fit(pv)?, &v], 2)?,
                )
            }
            None => (k, v),
        };
        let k = repeat_kv(k, h / kv)?; // (B, H, S, D)
        let v = repeat_kv(v, h / kv)?;
        let dtype = q.dtype();
        let scale = 1.0 / (hd as f64).sqrt();
        if let Some(y) = crate::model::fused::attention(&q, &k, &v, step.mask, scale)? {
            let y = y.transpose(1, 2)?.reshape((b, t, h * hd))?;
            return proj(&self.o_proj, &y, layer, "self_attn.o_proj");
        }
        // Plain ops: a gradient is needed on a device without custom ops.
        let scores =
            (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?; // (B, H, T, S)
        let scores = match step.mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = probs.to_dtype(dtype)?.matmul(&v.contiguous()?)?; // (B, H, T, D)
        let y = y.transpose(1, 2)?.reshape((b, t, h * hd))?;
        proj(&self.o_proj, &y, layer, "self_attn.o_proj")
    }
}

impl Mlp {
    pub(super) fn forward(&self, layer: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&proj(&self.gate_proj, x, layer, "mlp.gate_proj")?)?;
        let up = proj(&self.up_proj, x, layer, "mlp.up_proj")?;
        proj(&self.down_proj, &(gate * up)?, layer, "mlp.down_proj")
    }
}

/// `linear.forward(x)`, an error naming the projection's path
/// (`model.layers.17.self_attn.q_proj: ...`).
fn proj(linear: &Linear, x: &Tensor, layer: usize, name: &str) -> candle_core::Result<Tensor> {
    linear.forward(x).map_err(|e| {
        e.context(format!(
            "in `model.layers.{layer}.{name}` (a {} layer)",
            linear.kind()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;
    use crate::model::linear::Dense;

    /// A projection whose forward fails (an f16 weight in an f32 model): the error says which.
    #[test]
    fn an_error_inside_a_projection_names_its_path() -> Result<()> {
        let c = Config::preset("tiny")?;
        let dev = candle_core::Device::Cpu;
        let mut m = Llama::init_random(&c, DType::F32, &dev, 0)?;
        let path = "model.layers.1.mlp.up_proj";
        let w = m.linear(path)?.dense_weight()?.to_dtype(DType::F16)?;
        m.replace_linear(path, Linear::new(Dense::new(w, None)?))?;
        let ids = Tensor::new(&[[1u32, 2, 3]], &dev)?;
        let e = m.forward(&ids, None).unwrap_err().to_string();
        assert!(
            e.contains("in `model.layers.1.mlp.up_proj` (a dense layer)"),
            "{e}"
        );
        Ok(())
    }
}
