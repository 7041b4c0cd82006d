//! RMSNorm, RoPE and attention with a hand-written backward (see [`super::autograd`]), used by
//! [`super::llama`] on every path: each computes its forward with candle's fused kernels (where
//! the dtypes allow) on detached tensors, so training, evaluation and generation see the same
//! numbers, and when an input needs a gradient attaches it with a backward that keeps only what
//! it needs — PyTorch's
//! `F.rms_norm`, `apply_rotary_pos_emb` and `scaled_dot_product_attention` keep as much.
//!
//! Gradients (`g` the output gradient, rows along the last dimension):
//! - RMSNorm `y = w ⊙ x·r`, `r = 1/√(mean(x²) + ε)`, `n = x·r`:
//!   `∂x = r·(g⊙w − n·mean(g⊙w⊙n))`, `∂w = Σ_rows g⊙n` (Zhang & Sennrich 2019).
//! - RoPE is a rotation by `θ`: `∂x = rope(g, cos, −sin)`, the rotation by `−θ` (Su et al. 2021).
//! - Attention `O = P·V`, `P = softmax(s·QKᵀ + M)`: `∂V = Pᵀ·∂O`, `∂P = ∂O·Vᵀ`,
//!   `∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))`, `∂Q = s·∂S·K`, `∂K = s·∂Sᵀ·Q` (the backward of
//!   Dao et al. 2022, without the recomputation: P is kept, `(B, H, T, S)` in f32).
//!
//! Tests compare every gradient with candle's autograd on the plain ops.

use candle_core::{DType, Tensor, D};

use super::autograd::{attach1, attach2, attach3, supported};

/// The plain RMSNorm: `x` normalized in f32, cast back, times the gain (in the gain's dtype when
/// it differs, as transformers promotes). Differentiable by candle's autograd.
pub(crate) fn rms_norm_plain(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x32.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    if w.dtype() == dtype {
        normed.broadcast_mul(w)
    } else {
        normed
            .to_dtype(w.dtype())?
            .broadcast_mul(w)?
            .to_dtype(dtype)
    }
}

/// RMSNorm over the last dimension: candle's kernel when the dtypes agree, with its backward
/// when an input needs a gradient; the plain ops on a device without custom ops.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let tracked = x.track_op() || w.track_op();
    if tracked && !supported(x) {
        return rms_norm_plain(x, w, eps);
    }
    let (xd, wd) = (x.detach().contiguous()?, w.detach());
    let value = if wd.dtype() == xd.dtype() {
        candle_nn::ops::rms_norm(&xd, &wd, eps as f32)?
    } else {
        rms_norm_plain(&xd, &wd, eps)?
    };
    if !tracked {
        return Ok(value);
    }
    let w_grad = w.track_op();
    attach2(
        "rms-norm",
        (x, w),
        &value,
        Box::new(move |g| {
            let dtype = xd.dtype();
            let x32 = xd.to_dtype(DType::F32)?;
            let r = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?
                .sqrt()?
                .recip()?;
            let n = x32.broadcast_mul(&r)?;
            let g32 = g.to_dtype(DType::F32)?;
            let gw = g32.broadcast_mul(&wd.to_dtype(DType::F32)?)?;
            let dot = (&gw * &n)?.mean_keepdim(D::Minus1)?;
            let dx = (gw - n.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
            let dw = if w_grad {
                let c = n.dim(D::Minus1)?;
                let rows = n.elem_count() / c.max(1);
                let dw = (g32 * &n)?.reshape((rows, c))?.sum(0)?;
                Some(dw.to_dtype(wd.dtype())?)
            } else {
                None
            };
            Ok([Some(dx.to_dtype(dtype)?), dw])
        }),
    )
}

/// RoPE with `cos, sin: (B, T, D/2)` on `x: (B, H, T, D)` (halves rotated, as Llama), through
/// candle's kernel, with the backward `rope(g, cos, −sin)` when `x` needs a gradient. `None`
/// when a gradient is needed on a device without custom ops (or for `cos`/`sin`): the caller
/// takes the plain ops.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if cos.track_op() || sin.track_op() || (x.track_op() && !supported(x)) {
        return Ok(None);
    }
    let value = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    if !x.track_op() {
        return Ok(Some(value));
    }
    let (cos, neg_sin) = (cos.clone(), sin.neg()?);
    let y = attach1(
        "rope",
        x,
        &value,
        Box::new(move |g| {
            let dx = candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &neg_sin)?;
            Ok([Some(dx)])
        }),
    )?;
    Ok(Some(y))
}

/// `softmax(scale·QKᵀ + mask)·V` with `q: (B, H, T, D)`, `k, v: (B, H, S, D)` (heads already
/// repeated for GQA), `mask: (B|1, 1, T, S)` additive in f32; scores and softmax in f32, the
/// products in the inputs' dtype. With its backward when an input needs a gradient; `None` when
/// one does on a device without custom ops (the caller takes the plain ops).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> candle_core::Result<Option<Tensor>> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    if tracked && !supported(q) {
        return Ok(None);
    }
    let dtype = q.dtype();
    let (qd, kd, vd) = (
        q.detach().contiguous()?,
        k.detach().contiguous()?,
        v.detach().contiguous()?,
    );
    let scores = (qd.matmul(&kd.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?; // (B, H, T, S), f32
    drop(scores);
    let value = probs.to_dtype(dtype)?.matmul(&vd)?;
    if !tracked {
        return Ok(Some(value));
    }
    attach3(
        "attention",
        (q, k, v),
        &value,
        Box::new(move |g| {
            let g = g.contiguous()?;
            let p = probs.to_dtype(dtype)?;
            let dv = p.t()?.matmul(&g)?; // (B, H, S, D)
            let dp = g.matmul(&vd.t()?)?.to_dtype(DType::F32)?; // (B, H, T, S)
            let row = (&dp * &probs)?.sum_keepdim(D::Minus1)?;
            let ds = ((dp.broadcast_sub(&row)? * &probs)? * scale)?.to_dtype(dtype)?;
            let dq = ds.matmul(&kd)?; // (B, H, T, D)
            let dk = ds.t()?.matmul(&qd)?; // (B, H, S, D)
            Ok([Some(dq), Some(dk), Some(dv)])
        }),
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    /// A fixed random cotangent so the loss `Σ y ⊙ c` exercises every output element.
    fn cotangent(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn rms_norm_value_and_gradients_match_plain_ops() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(cotangent(&[2, 5, 8], 1) * 3.0).unwrap()).unwrap();
        let w = Var::from_tensor(&(cotangent(&[8], 2) + 1.0).unwrap()).unwrap();
        let c = cotangent(&[2, 5, 8], 3);
        let run = |fused: bool| {
            let y = if fused {
                rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap()
            } else {
                rms_norm_plain(x.as_tensor(), w.as_tensor(), 1e-5).unwrap()
            };
            let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(x.as_tensor()).unwrap().clone();
            let gw = g.get(w.as_tensor()).unwrap().clone();
            (y, gx, gw)
        };
        let (y0, gx0, gw0) = run(false);
        let (y1, gx1, gw1) = run(true);
        assert!(max_abs_diff(&y0, &y1) < 1e-5);
        assert!(
            max_abs_diff(&gx0, &gx1) < 1e-5,
            "{}",
            max_abs_diff(&gx0, &gx1)
        );
        assert!(
            max_abs_diff(&gw0, &gw1) < 1e-5,
            "{}",
            max_abs_diff(&gw0, &gw1)
        );
        // A frozen gain gets no gradient, the input still does.
        let frozen = w.as_tensor().detach();
        let y = rms_norm(x.as_tensor(), &frozen, 1e-5).unwrap();
        let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(g.get(x.as_tensor()).unwrap(), &gx0) < 1e-5);
        let _ = dev;
    }

    #[test]
    fn rope_gradient_is_the_inverse_rotation() {
        let (b, h, t, d) = (2, 3, 5, 8);
        let x = Var::from_tensor(&cotangent(&[b, h, t, d], 4)).unwrap();
        let ang = (cotangent(&[b, t, d / 2], 5) * 6.0).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let c = cotangent(&[b, h, t, d], 6);
        let y = rope(x.as_tensor(), &cos, &sin).unwrap().unwrap();
        let g1 = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        // The plain formula: x·cos + rotate_half(x)·sin, rotate_half(x) = [−x₂, x₁].
        let y0 = {
            let cat = |t: &Tensor| Tensor::cat(&[t, t], D::Minus1)?.unsqueeze(1);
            let x = x.as_tensor();
            let (x1, x2) = (
                x.narrow(3, 0, d / 2).unwrap(),
                x.narrow(3, d / 2, d / 2).unwrap(),
            );
            let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
            (x.broadcast_mul(&cat(&cos).unwrap()).unwrap()
                + rot.broadcast_mul(&cat(&sin).unwrap()).unwrap())
            .unwrap()
        };
        let g0 = (&y0 * &c).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(&y0, &y) < 1e-6);
        let d = max_abs_diff(
            g0.get(x.as_tensor()).unwrap(),
            g1.get(x.as_tensor()).unwrap(),
        );
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn attention_value_and_gradients_match_plain_ops() {
        let (b, h, t, s, d) = (2, 3, 4, 6, 8);
        let q = Var::from_tensor(&cotangent(&[b, h, t, d], 7)).unwrap();
        let k = Var::from_tensor(&cotangent(&[b, h, s, d], 8)).unwrap();
        let v = Var::from_tensor(&cotangent(&[b, h, s, d], 9)).unwrap();
        // Causal with a 2-key prefix, and batch row 1's first key padded out.
        let mut m = vec![0f32; b * t * s];
        for bi in 0..b {
            for i in 0..t {
                for j in 0..s {
                    if j > i + 2 || (bi == 1 && j == 0) {
                        m[(bi * t + i) * s + j] = f32::MIN;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, t, s), &Device::Cpu).unwrap();
        let c = cotangent(&[b, h, t, d], 10);
        let scale = 1.0 / (d as f64).sqrt();
        let y0 = {
            let sc = ((q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale)
                .unwrap()
                .broadcast_add(&mask))
            .unwrap();
            candle_nn::ops::softmax(&sc, D::Minus1)
                .unwrap()
                .matmul(v.as_tensor())
                .unwrap()
        };
        let g0 = (&y0 * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let y1 = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            Some(&mask),
            scale,
        )
        .unwrap()
        .unwrap();
        let g1 = (&y1 * &c).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(&y0, &y1) < 1e-6);
        for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
            let d = max_abs_diff(
                g0.get(var.as_tensor()).unwrap(),
                g1.get(var.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "d{name}: {d}");
        }
    }
}
