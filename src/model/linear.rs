//! The one linear-layer abstraction every projection of the model goes through.
//!
//! `y = x·Wᵀ + b`, with `W` of shape `[out_features, in_features]` as in PyTorch's `nn.Linear`.
//!
//! This is the seam of the library: the model holds each projection (`q_proj`, ..., `down_proj`,
//! `lm_head`) as a [`Linear`], a box around any [`LinearLayer`]. Quantization swaps a [`Dense`]
//! for a quantized layer and PEFT wraps a layer in a LoRA layer, both through
//! [`crate::model::llama::Llama::replace_linear`] — neither ever edits the model's code. A layer
//! implementation lives with its concept (quant/, peft/); this file only defines the trait and
//! the plain dense layer.

use std::any::Any;

use candle_core::{DType, Device, Module, Tensor};

/// A linear map `[.., in_features] -> [.., out_features]` the model can hold.
///
/// Implementations: [`Dense`] here; quantized layers in `quant/`, LoRA-family wrappers in `peft/`.
pub trait LinearLayer: Send + Sync + std::fmt::Debug + Any {
    /// `y = x·Wᵀ + b` for `x` of shape `(.., in_features)`.
    ///
    /// # Shapes
    /// `x: (B, T, in)` or `(N, in)` → `(B, T, out)` or `(N, out)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    /// Input width `k`.
    fn in_features(&self) -> usize;
    /// Output width `d`.
    fn out_features(&self) -> usize;
    /// A short name of the implementation ("dense", "nf4", "lora", ...), shown in summaries.
    fn kind(&self) -> String;
    /// The effective weight `[out, in]` as a dense tensor (dequantized, or with adapters merged
    /// as forward sees them), for inspection, merging and export.
    fn dense_weight(&self) -> candle_core::Result<Tensor>;
    /// The bias `[out]`, if any.
    fn bias(&self) -> Option<&Tensor>;
    /// The number of parameters, counted as a user of transformers/peft would count them.
    fn num_parameters(&self) -> usize;
    /// Bytes the layer's tensors occupy in memory.
    fn storage_bytes(&self) -> usize;
    /// The dtype forward computes in.
    fn dtype(&self) -> DType;
    /// The device the layer lives on.
    fn device(&self) -> Device;
    /// For downcasting to the concrete layer.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the concrete layer, mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// For taking the concrete layer out of its box (e.g. to unwrap a LoRA layer's base).
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// A projection of the model: any [`LinearLayer`] behind one type.
#[derive(Debug)]
pub struct Linear(Box<dyn LinearLayer>);

impl Linear {
    /// Wraps a layer.
    pub fn new(layer: impl LinearLayer) -> Self {
        Linear(Box::new(layer))
    }

    /// Wraps an already boxed layer.
    pub fn from_box(layer: Box<dyn LinearLayer>) -> Self {
        Linear(layer)
    }

    /// The layer behind this projection.
    pub fn layer(&self) -> &dyn LinearLayer {
        self.0.as_ref()
    }

    /// The layer behind this projection, mutably.
    pub fn layer_mut(&mut self) -> &mut dyn LinearLayer {
        self.0.as_mut()
    }

    /// Takes the boxed layer out.
    pub fn into_box(self) -> Box<dyn LinearLayer> {
        self.0
    }

    /// The concrete layer, if it is a `T`.
    pub fn downcast_ref<T: LinearLayer>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }

    /// The concrete layer, mutably, if it is a `T`.
    pub fn downcast_mut<T: LinearLayer>(&mut self) -> Option<&mut T> {
        self.0.as_any_mut().downcast_mut::<T>()
    }

    /// Unwraps the concrete layer if it is a `T`, or gives the projection back.
    pub fn downcast<T: LinearLayer>(self) -> std::result::Result<T, Linear> {
        if self.0.as_any().is::<T>() {
            match self.0.into_any().downcast::<T>() {
                Ok(b) => Ok(*b),
                Err(_) => unreachable!("type checked just above"),
            }
        } else {
            Err(self)
        }
    }

    /// `y = x·Wᵀ + b`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(x)
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.0.in_features()
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.0.out_features()
    }

    /// The implementation's short name.
    pub fn kind(&self) -> String {
        self.0.kind()
    }

    /// The effective weight `[out, in]` as a dense tensor (see [`LinearLayer::dense_weight`]).
    pub fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.0.dense_weight()
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.0.bias()
    }

    /// Parameters, counted as transformers/peft count them.
    pub fn num_parameters(&self) -> usize {
        self.0.num_parameters()
    }

    /// Bytes the layer's tensors occupy.
    pub fn storage_bytes(&self) -> usize {
        self.0.storage_bytes()
    }

    /// The dtype forward computes in.
    pub fn dtype(&self) -> DType {
        self.0.dtype()
    }

    /// The device the layer lives on.
    pub fn device(&self) -> Device {
        self.0.device()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.0.forward(xs)
    }
}

/// The plain dense layer: a `[out, in]` weight and an optional `[out]` bias, in the model's dtype.
/// Its tensors are plain (not `Var`s): a base weight is never seen by an optimizer.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// A dense layer from `weight: [out, in]` and an optional `bias: [out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> candle_core::Result<Self> {
        let (out, _in) = weight.dims2()?;
        if let Some(b) = &bias {
            if b.dims() != [out] {
                candle_core::bail!(
                    "bias of shape {:?} does not match weight of shape {:?}",
                    b.dims(),
                    weight.dims()
                )
            }
        }
        Ok(Self { weight, bias })
    }

    /// The weight `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

/// `x·Wᵀ (+ b)` for `x` of rank 2 or 3 (or more), as candle-nn's `Linear` does it: the 3-D case
/// broadcasts `Wᵀ` over the batch so that the matmul stays one batched GEMM.
///
/// When `x` is part of an autograd graph and `W` is not trainable (a frozen base weight under
/// LoRA), the backward pass computes only the input gradient (see [`super::frozen`]).
pub fn linear_forward(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let w = match *x.dims() {
        [b1, b2, _, _] => weight.broadcast_left((b1, b2))?.t()?,
        [bsize, _, _] => weight.broadcast_left(bsize)?.t()?,
        _ => weight.t()?,
    };
    let y = if x.track_op() && !weight.track_op() {
        let y = x.detach().matmul(&w)?;
        super::frozen::attach_frozen(x, weight, &y)?.map_or_else(|| x.matmul(&w), Ok)?
    } else {
        x.matmul(&w)?
    };
    match bias {
        None => Ok(y),
        Some(b) => y.broadcast_add(b),
    }
}

impl LinearLayer for Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        linear_forward(x, &self.weight, self.bias.as_ref())
    }
    fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    fn kind(&self) -> String {
        "dense".to_string()
    }
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        Ok(self.weight.clone())
    }
    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    fn num_parameters(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
    fn storage_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        t(&self.weight) + self.bias.as_ref().map_or(0, t)
    }
    fn dtype(&self) -> DType {
        self.weight.dtype()
    }
    fn device(&self) -> Device {
        self.weight.device().clone()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matches_formula() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // W = [[1, 2, 3], [4, 5, 6]], b = [0.5, -1], x = [1, 0, -1] -> [1-3+0.5, 4-6-1] = [-1.5, -3]
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev)?;
        let b = Tensor::new(&[0.5f32, -1.], &dev)?;
        let lin = Linear::new(Dense::new(w, Some(b))?);
        let x = Tensor::new(&[[[1f32, 0., -1.]]], &dev)?; // (1, 1, 3)
        let y = lin.forward(&x)?;
        assert_eq!(y.dims(), [1, 1, 2]);
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![-1.5, -3.0]);
        let y2 = lin.forward(&x.squeeze(0)?)?;
        assert_eq!(y2.flatten_all()?.to_vec1::<f32>()?, vec![-1.5, -3.0]);
        assert_eq!(lin.layer().num_parameters(), 8);
        assert_eq!(lin.layer().storage_bytes(), 32);
        assert!(lin.downcast_ref::<Dense>().is_some());
        let dense = lin.downcast::<Dense>().expect("is dense");
        assert_eq!(dense.weight().dims(), [2, 3]);
        Ok(())
    }

    #[test]
    fn bias_shape_is_checked() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
        assert!(Dense::new(w, Some(b)).is_err());
    }
}
