//! The one linear-layer abstraction every projection of the model goes through.
//!
//! `y = x·Wᵀ + b`, with `W` of shape `[out_features, in_features]` as in PyTorch's `nn.Linear`.
//!
//! This is the seam of the library: the model holds each projection (`q_proj`, ..., `down_proj`,
//! `lm_head`) as a [`Linear`], a box around any [`LinearLayer`], addressed by its HF module path
//! (`model.layers.0.self_attn.q_proj`). Quantization swaps a [`Dense`] for a quantized layer and
//! PEFT wraps a layer in a LoRA layer, both through [`crate::model::llama::Llama::map_linear`];
//! neither edits the model's code.
//!
//! What callers need of a layer is part of the trait, as *capabilities* with defaults, so that
//! nobody downcasts to find out:
//!
//! | capability | leaf layers (dense, quantized) | wrappers (LoRA, modules_to_save) |
//! |---|---|---|
//! | [`base`](LinearLayer::base) | `None` | the wrapped layer |
//! | [`quantized`](LinearLayer::quantized) | the packed storage, if quantized | the base's |
//! | [`bias`](LinearLayer::bias) / [`set_bias`](LinearLayer::set_bias) | their own | the base's |
//! | [`dense_weight`](LinearLayer::dense_weight) | `W` (dequantized) | what forward uses (`W + ΔW`) |
//! | [`trainable_parameters`](LinearLayer::trainable_parameters) | none | A, B, m ... by peft name |
//! | [`set_training`](LinearLayer::set_training) | nothing to do | dropout on/off, evaluation copies |
//!
//! Widths, dtype, device, parameter and byte counts default to the base's, so a wrapper writes
//! only what it changes. A new layer kind is one new file implementing the trait (it must be
//! `Clone`, which is cheap: tensors are reference-counted); no other file learns its name.
//! A module that needs *its own* type back from a slot (peft switching adapters) uses
//! [`Linear::get`] / [`Linear::get_mut`].

use std::borrow::Cow;

use candle_core::{DType, Device, Module, Tensor, Var};

use crate::{Error, Result};

pub use super::quantized::QuantizedWeight;

/// A linear map `[.., in_features] -> [.., out_features]` the model can hold.
///
/// Implementations: [`Dense`] here; `QLinear` in `quant/`; `LoraLayer` and
/// `ModulesToSaveLayer` in `peft/`. A *leaf* layer (no [`base`](LinearLayer::base)) must
/// implement the widths, [`dense_weight`](LinearLayer::dense_weight), the counts, dtype and
/// device; a wrapper inherits them from its base.
pub trait LinearLayer: Send + Sync + std::fmt::Debug + std::any::Any + CloneLayer {
    /// `y = x·Wᵀ + b` for `x` of shape `(.., in_features)`.
    ///
    /// # Shapes
    /// `x: (B, T, in)` or `(N, in)` → `(B, T, out)` or `(N, out)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// This layer's short name ("dense", "nf4", "lora", ...); [`Linear::kind`] spells out the
    /// whole stack ("lora(nf4)").
    fn kind(&self) -> &str;

    /// The layer under a wrapper (a LoRA layer's base layer), `None` for a leaf.
    fn base(&self) -> Option<&Linear> {
        None
    }

    /// The layer under a wrapper, mutably.
    fn base_mut(&mut self) -> Option<&mut Linear> {
        None
    }

    /// Input width `k`.
    fn in_features(&self) -> usize {
        self.base().map_or(0, Linear::in_features)
    }

    /// Output width `d`.
    fn out_features(&self) -> usize {
        self.base().map_or(0, Linear::out_features)
    }

    /// The effective weight `[out, in]` as a dense tensor — dequantized, and with unmerged
    /// adapters added as forward applies them — for inspection, merging and export.
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        match self.base() {
            Some(b) => b.dense_weight(),
            None => candle_core::bail!("a `{}` layer has no dense weight", self.kind()),
        }
    }

    /// The packed storage of a quantized layer (for a wrapper: of its base), `None` when dense.
    fn quantized(&self) -> Option<&dyn QuantizedWeight> {
        self.base().and_then(Linear::quantized)
    }

    /// The bias `[out]`, if any.
    fn bias(&self) -> Option<&Tensor> {
        self.base().and_then(Linear::bias)
    }

    /// Replaces the bias (`None` removes it). It must be `[out]`; a quantized layer keeps it in
    /// its compute dtype. A trainable bias is a `Var`'s tensor put here (peft's `bias="all"`).
    fn set_bias(&mut self, bias: Option<Tensor>) -> Result<()> {
        let kind = self.kind().to_string();
        match self.base_mut() {
            Some(b) => b.set_bias(bias),
            None => Err(Error::Input(format!("a `{kind}` layer has no bias to set"))),
        }
    }

    /// The trainable tensors this layer holds itself (not its base's: a base is frozen), with
    /// names relative to the layer as peft names them (`lora_A.default.weight`).
    fn trainable_parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    /// Training mode (`true`: dropout on) or evaluation mode, as PyTorch's `train()` / `eval()`.
    /// Wrappers pass it on to their base.
    fn set_training(&mut self, training: bool) {
        if let Some(b) = self.base_mut() {
            b.set_training(training);
        }
    }

    /// The number of parameters, counted as a user of transformers/peft would count them.
    fn num_parameters(&self) -> usize {
        self.base().map_or(0, Linear::num_parameters)
    }

    /// Bytes the layer's tensors occupy in memory.
    fn storage_bytes(&self) -> usize {
        self.base().map_or(0, Linear::storage_bytes)
    }

    /// The dtype forward computes in.
    fn dtype(&self) -> DType {
        self.base().map_or(DType::F32, Linear::dtype)
    }

    /// The device the layer lives on.
    fn device(&self) -> Device {
        self.base().map_or(Device::Cpu, Linear::device)
    }
}

/// Cloning a boxed layer; implemented for every `LinearLayer + Clone`, nothing to write.
pub trait CloneLayer {
    /// A copy of the layer in a new box (its tensors are shared, not copied).
    fn clone_layer(&self) -> Box<dyn LinearLayer>;
}

impl<T: LinearLayer + Clone> CloneLayer for T {
    fn clone_layer(&self) -> Box<dyn LinearLayer> {
        Box::new(self.clone())
    }
}

/// A projection of the model: any [`LinearLayer`] behind one type.
///
/// Cloning is cheap (tensors are reference-counted) and is how the model's edits are made
/// transactional: a new layer is built from a copy and put in place only when it is complete.
#[derive(Debug)]
pub struct Linear(Box<dyn LinearLayer>);

impl Clone for Linear {
    fn clone(&self) -> Self {
        Linear(self.0.clone_layer())
    }
}

impl Linear {
    /// Wraps a layer.
    pub fn new(layer: impl LinearLayer) -> Self {
        Linear(Box::new(layer))
    }

    /// The layer behind this projection.
    pub fn layer(&self) -> &dyn LinearLayer {
        self.0.as_ref()
    }

    /// The layer behind this projection, mutably.
    pub fn layer_mut(&mut self) -> &mut dyn LinearLayer {
        self.0.as_mut()
    }

    /// The concrete layer, if it is a `T` — for the module that defines `T` (peft reaching its
    /// own LoRA layer). Everyone else uses the capabilities.
    pub fn get<T: LinearLayer>(&self) -> Option<&T> {
        crate::downcast::layer_ref::<T>(self.0.as_ref())
    }

    /// The concrete layer, mutably, if it is a `T` (see [`Linear::get`]).
    pub fn get_mut<T: LinearLayer>(&mut self) -> Option<&mut T> {
        crate::downcast::layer_mut::<T>(self.0.as_mut())
    }

    /// Takes the concrete layer out if it is a `T`, or gives the projection back (see
    /// [`Linear::get`]).
    pub fn into_layer<T: LinearLayer>(self) -> std::result::Result<T, Linear> {
        crate::downcast::into_layer::<T>(self.0).map_err(Linear)
    }

    /// Whether the layer is a `T`.
    pub fn is<T: LinearLayer>(&self) -> bool {
        self.get::<T>().is_some()
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

    /// The whole stack of kinds, outermost first: `"dense"`, `"nf4"`, `"lora(nf4)"`. Borrowed
    /// for a leaf, built only for a wrapper.
    pub fn kind(&self) -> Cow<'_, str> {
        match self.0.base() {
            None => Cow::Borrowed(self.0.kind()),
            Some(b) => Cow::Owned(format!("{}({})", self.0.kind(), b.kind())),
        }
    }

    /// The layer under a wrapper (see [`LinearLayer::base`]).
    pub fn base(&self) -> Option<&Linear> {
        self.0.base()
    }

    /// The innermost layer: the base of the base ... of this one (itself for a leaf).
    pub fn innermost(&self) -> &Linear {
        let mut l = self;
        while let Some(b) = l.0.base() {
            l = b;
        }
        l
    }

    /// The innermost layer, mutably (what quantizing "under the adapters" replaces).
    pub fn innermost_mut(&mut self) -> &mut Linear {
        if self.0.base().is_some() {
            self.0
                .base_mut()
                .map(Linear::innermost_mut)
                .expect("base() and base_mut() agree")
        } else {
            self
        }
    }

    /// The effective weight `[out, in]` as a dense tensor (see [`LinearLayer::dense_weight`]).
    pub fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.0.dense_weight()
    }

    /// The quantized storage, if the layer (or the layer under it) is quantized.
    pub fn quantized(&self) -> Option<&dyn QuantizedWeight> {
        self.0.quantized()
    }

    /// Whether the weight is stored quantized.
    pub fn is_quantized(&self) -> bool {
        self.0.quantized().is_some()
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.0.bias()
    }

    /// Replaces the bias (see [`LinearLayer::set_bias`]).
    pub fn set_bias(&mut self, bias: Option<Tensor>) -> Result<()> {
        if let Some(b) = &bias {
            if b.dims() != [self.out_features()] {
                return Err(Error::Shape {
                    name: format!("bias of a {} layer", self.kind()),
                    expected: vec![self.out_features()],
                    found: b.dims().to_vec(),
                });
            }
        }
        self.0.set_bias(bias)
    }

    /// The trainable tensors of the layer, by peft's names relative to it.
    pub fn trainable_parameters(&self) -> Vec<(String, Var)> {
        self.0.trainable_parameters()
    }

    /// Training (`true`) or evaluation mode (see [`LinearLayer::set_training`]).
    pub fn set_training(&mut self, training: bool) {
        self.0.set_training(training)
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
    fn kind(&self) -> &str {
        "dense"
    }
    fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }
    fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        Ok(self.weight.clone())
    }
    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    fn set_bias(&mut self, bias: Option<Tensor>) -> Result<()> {
        self.bias = bias;
        Ok(())
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
        assert_eq!(lin.num_parameters(), 8);
        assert_eq!(lin.storage_bytes(), 32);
        assert_eq!(lin.kind(), "dense");
        assert!(lin.base().is_none() && !lin.is_quantized());
        assert_eq!(
            lin.get::<Dense>().map(|d| d.weight().dims()),
            Some(&[2, 3][..])
        );
        Ok(())
    }

    #[test]
    fn bias_shape_is_checked() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let b = Tensor::zeros(3, DType::F32, &dev)?;
        assert!(Dense::new(w.clone(), Some(b.clone())).is_err());
        let mut lin = Linear::new(Dense::new(w, None)?);
        assert!(
            lin.set_bias(Some(b)).is_err(),
            "a [3] bias on a [2, 3] layer"
        );
        lin.set_bias(Some(Tensor::new(&[1f32, 2.], &dev)?))?;
        let y = lin.forward(&Tensor::zeros((1, 3), DType::F32, &dev)?)?;
        assert_eq!(y.to_vec2::<f32>()?, vec![vec![1.0, 2.0]]);
        Ok(())
    }
}
