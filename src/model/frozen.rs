//! `x·Wᵀ` for a frozen weight W, with a backward pass that computes only `∂L/∂x = ∂L/∂y · W`.
//!
//! candle's autograd differentiates both sides of every matmul in the graph, whether or not a
//! side can ever receive a gradient: a LoRA or QLoRA step would compute (and keep until the end
//! of backward) a `[in, out]` gradient per batch element for every frozen base weight — as much
//! work again as the forward, and gigabytes of memory for SmolLM2 at batch 4. Here the product
//! is computed outside the graph and attached to `x` by a custom op whose backward is the input
//! gradient alone, as PyTorch does for a weight with `requires_grad=False`.

use candle_core::Tensor;

use super::autograd::{attach1, supported};

/// `x·Wᵀ` where `y_detached = x·Wᵀ` was computed without a graph: returns it attached to `x`'s
/// graph when `x` needs gradients (and W does not), on devices with the op; otherwise `None`.
/// The backward is `∂L/∂x = ∂L/∂y · W`, one 2-D GEMM over all rows.
pub(crate) fn attach_frozen(
    x: &Tensor,
    weight: &Tensor,
    y_detached: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    if !x.track_op() || weight.track_op() || !supported(x) {
        return Ok(None);
    }
    let weight = weight.clone();
    let in_shape = x.shape().clone();
    let y = attach1(
        "frozen-matmul",
        x,
        y_detached,
        Box::new(move |grad| {
            // (…, out) · (out, in) → (…, in).
            let out = weight.dim(0)?;
            let rows = grad.elem_count() / out.max(1);
            let g = grad
                .contiguous()?
                .reshape((rows, out))?
                .matmul(&weight.to_dtype(grad.dtype())?)?;
            Ok([Some(g.reshape(in_shape.clone())?)])
        }),
    )?;
    Ok(Some(y))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::model::linear::linear_forward;

    /// The gradient through a frozen linear equals the gradient of the plain matmul, and the
    /// weight (not a Var) gets none.
    #[test]
    fn input_gradient_matches_plain_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (5, 3), &dev).unwrap();
        let x = Var::new(&[[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]]], &dev).unwrap();
        let y = linear_forward(x.as_tensor(), &w, None).unwrap();
        let loss = y.sqr().unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let got = g.get(x.as_tensor()).unwrap();
        // ∂(Σ y²)/∂x = 2·y·W.
        let want = (y.detach() * 2.0).unwrap().broadcast_matmul(&w).unwrap();
        let d = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        assert!(g.get(&w).is_none());
        // Forward value unchanged.
        let plain = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let d = (y - plain).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}
