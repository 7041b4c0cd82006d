//! The LoRA update `Δ = s·(h·Aᵀ)·Bᵀ` (s = α/r) as one op with a hand-written backward, the
//! training path of [`super::lora::LoraLayer`]. With `u = h·Aᵀ` (rows × r, kept) and `g` the
//! gradient of Δ, all as 2-D GEMMs over the rows:
//!
//! ```text
//! ∂B = s·gᵀ·u     ∂u = s·g·B     ∂A = ∂uᵀ·h     ∂h = ∂u·A
//! ```
//!
//! candle's autograd through the plain ops keeps `u`, `s·u` and Δ, and takes the gradient of a
//! weight broadcast over the batch as one `[r, in]` product per batch element, summed after;
//! here A and B get theirs in one product each (see [`crate::model::autograd`]).

use candle_core::{DType, Tensor};

use crate::model::autograd::{attach3, supported};

/// `s·(h·Aᵀ)·Bᵀ` for `h: (…, in)` f32, `a: [r, in]`, `b: [out, r]`, with its backward when an
/// input needs a gradient; `None` otherwise (or on a device without custom ops), so the caller
/// takes the plain ops.
pub(crate) fn lora_delta(
    h: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
) -> candle_core::Result<Option<Tensor>> {
    if !(h.track_op() || a.track_op() || b.track_op()) || !supported(h) {
        return Ok(None);
    }
    if h.dtype() != DType::F32 || a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return Ok(None);
    }
    let (inp, out) = (a.dim(1)?, b.dim(0)?);
    let mut out_shape = h.dims().to_vec();
    let Some(last) = out_shape.last_mut() else {
        return Ok(None);
    };
    *last = out;
    let rows = h.elem_count() / inp.max(1);
    let h2 = h.detach().contiguous()?.reshape((rows, inp))?;
    let (ad, bd) = (a.detach(), b.detach());
    let u = h2.matmul(&ad.t()?)?; // (rows, r)
    let value = (u.matmul(&bd.t()?)? * scaling)?.reshape(out_shape)?;
    let (needs_h, needs_a, needs_b) = (h.track_op(), a.track_op(), b.track_op());
    let h_shape = h.shape().clone();
    attach3(
        "lora-delta",
        (h, a, b),
        &value,
        Box::new(move |g| {
            let g2 = g.contiguous()?.reshape((rows, out))?;
            let db = if needs_b {
                Some((g2.t()?.matmul(&u)? * scaling)?) // (out, r)
            } else {
                None
            };
            let du = (g2.matmul(&bd)? * scaling)?; // (rows, r)
            let da = if needs_a {
                Some(du.t()?.matmul(&h2)?) // (r, in)
            } else {
                None
            };
            let dh = if needs_h {
                Some(du.matmul(&ad)?.reshape(h_shape.clone())?) // (…, in)
            } else {
                None
            };
            Ok([dh, da, db])
        }),
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::{Device, Var};

    /// Value and the gradients of h, A and B equal candle's autograd on the plain ops.
    #[test]
    fn matches_plain_ops() {
        let dev = Device::Cpu;
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 7), &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&Tensor::randn(0f32, 0.5, (3, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, (4, 3), &dev).unwrap()).unwrap();
        let c = Tensor::randn(0f32, 1.0, (2, 5, 4), &dev).unwrap();
        let s = 8.0 / 3.0;
        let plain = {
            let at = a.as_tensor().t().unwrap().broadcast_left(2).unwrap();
            let bt = b.as_tensor().t().unwrap().broadcast_left(2).unwrap();
            (h.as_tensor().matmul(&at).unwrap() * s)
                .unwrap()
                .matmul(&bt)
                .unwrap()
        };
        let fused = lora_delta(h.as_tensor(), a.as_tensor(), b.as_tensor(), s)
            .unwrap()
            .unwrap();
        assert!(max_abs_diff(&plain, &fused) < 1e-5);
        let g0 = (&plain * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g1 = (&fused * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("h", &h), ("A", &a), ("B", &b)] {
            let d = max_abs_diff(
                g0.get(v.as_tensor()).unwrap(),
                g1.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "d{name}: {d}");
        }
    }
}
