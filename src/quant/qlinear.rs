//! The quantized linear layer behind the model's `Linear` seam.
//!
//! A [`QLinear`] holds a [`QuantizedWeight`] (packed codes and their constants, in any scheme of
//! this module) and an optional bias in the compute dtype. Forward dequantizes the weight to the
//! compute dtype and multiplies, `y = x·dequant(W)ᵀ + b`, unless the scheme brings its own
//! forward (LLM.int8's outlier decomposition, GGML's quantized matmul). The codes are integer
//! tensors outside any `VarMap`: no gradient ever reaches them, and [`QLinear::set_trainable`]
//! refuses, as slide 25 says: train adapters on top of a frozen quantized base (QLoRA).

use std::any::Any;
use std::fmt::Debug;

use candle_core::{DType, Device, Tensor};

use crate::model::linear::{linear_forward, LinearLayer};
use crate::{Error, Result};

/// A weight matrix `[out_features, in_features]` stored quantized.
///
/// Implemented by each scheme: NF4/FP4 ([`super::nf4`]), affine n-bit ([`super::affine`]),
/// LLM.int8 ([`super::int8`]), GGML types ([`super::ggml`]).
pub trait QuantizedWeight: Send + Sync + Debug + Any {
    /// The scheme's short name ("nf4", "fp4", "int8", "affine-int4-g64", "q4_0", ...).
    fn kind(&self) -> String;
    /// Rows of the weight: output width.
    fn out_features(&self) -> usize;
    /// Columns of the weight: input width.
    fn in_features(&self) -> usize;
    /// The weight, dequantized to `dtype`, shape `[out, in]`, on the weight's device.
    fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor>;
    /// Bytes of everything stored: codes and all constants (absmax, scales, zero points, the
    /// second-level state of double quantization).
    fn storage_bytes(&self) -> usize;
    /// The device the codes live on.
    fn device(&self) -> Device;
    /// `x·Wᵀ` in `x`'s dtype. The default dequantizes and multiplies.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.dequantize(x.dtype())?;
        linear_forward(x, &w, None)
    }
    /// For downcasting to the concrete weight.
    fn as_any(&self) -> &dyn Any;
}

/// A linear layer with a quantized, frozen weight.
#[derive(Debug)]
pub struct QLinear {
    weight: Box<dyn QuantizedWeight>,
    bias: Option<Tensor>,
    compute_dtype: DType,
}

impl QLinear {
    /// A layer from a quantized `weight`, an optional `bias: [out]` and the dtype forward
    /// computes in (`bnb_4bit_compute_dtype`). The bias is cast to the compute dtype.
    pub fn new(
        weight: impl QuantizedWeight,
        bias: Option<Tensor>,
        compute_dtype: DType,
    ) -> Result<Self> {
        Self::from_box(Box::new(weight), bias, compute_dtype)
    }

    /// Like [`QLinear::new`] for an already boxed weight.
    pub fn from_box(
        weight: Box<dyn QuantizedWeight>,
        bias: Option<Tensor>,
        compute_dtype: DType,
    ) -> Result<Self> {
        if !compute_dtype.is_float() {
            return Err(Error::config(
                "bnb_4bit_compute_dtype",
                format!("must be f32, bf16 or f16, got {compute_dtype:?}"),
            ));
        }
        let bias = match bias {
            Some(b) => {
                if b.dims() != [weight.out_features()] {
                    return Err(Error::Shape {
                        name: format!("bias of a {} layer", weight.kind()),
                        expected: vec![weight.out_features()],
                        found: b.dims().to_vec(),
                    });
                }
                Some(b.to_dtype(compute_dtype)?)
            }
            None => None,
        };
        Ok(Self {
            weight,
            bias,
            compute_dtype,
        })
    }

    /// The quantized weight.
    pub fn weight(&self) -> &dyn QuantizedWeight {
        self.weight.as_ref()
    }

    /// The concrete quantized weight, if it is a `T`.
    pub fn weight_as<T: QuantizedWeight>(&self) -> Option<&T> {
        self.weight.as_any().downcast_ref::<T>()
    }

    /// The dtype forward computes in.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// `requires_grad_(true)` for the quantized weight: always an error. Quantized codes are
    /// integers on a fixed grid; a gradient step of size η·∂L/∂w would be rounded away, and
    /// rounding itself has zero gradient almost everywhere (slide 25). Freeze the quantized base
    /// and train LoRA adapters on top of it instead (QLoRA). `false` is accepted (it is frozen).
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        if trainable {
            return Err(Error::Input(format!(
                "a {} weight cannot be trained: its values are integer codes on a fixed grid, \
                 a small gradient step rounds back to the same code and rounding has no useful \
                 gradient (slide 25); keep the quantized base frozen and train LoRA adapters on \
                 top of it (QLoRA)",
                self.weight.kind()
            )));
        }
        Ok(())
    }
}

impl LinearLayer for QLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let in_dtype = x.dtype();
        let x = x.to_dtype(self.compute_dtype)?;
        let y = self.weight.forward(&x)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.to_dtype(in_dtype)
    }
    fn in_features(&self) -> usize {
        self.weight.in_features()
    }
    fn out_features(&self) -> usize {
        self.weight.out_features()
    }
    fn kind(&self) -> String {
        self.weight.kind()
    }
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.weight.dequantize(self.compute_dtype)
    }
    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// Logical parameters, `out·in` (+ bias), as peft counts a 4-bit layer (not the packed
    /// byte count that `numel()` of a bitsandbytes `Params4bit` gives).
    fn num_parameters(&self) -> usize {
        self.weight.out_features() * self.weight.in_features()
            + self.bias.as_ref().map_or(0, |b| b.elem_count())
    }
    fn storage_bytes(&self) -> usize {
        self.weight.storage_bytes()
            + self
                .bias
                .as_ref()
                .map_or(0, |b| b.elem_count() * b.dtype().size_in_bytes())
    }
    fn dtype(&self) -> DType {
        self.compute_dtype
    }
    fn device(&self) -> Device {
        self.weight.device()
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
