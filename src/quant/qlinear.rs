//! The quantized linear layer behind the model's `Linear` seam.
//!
//! A [`QLinear`] holds a [`QuantizedWeight`] (packed codes and their constants, in any scheme of
//! this module) and an optional bias in the compute dtype. Forward dequantizes the weight to the
//! compute dtype and multiplies, `y = x·dequant(W)ᵀ + b`, unless the scheme brings its own
//! forward (LLM.int8's outlier decomposition, GGML's quantized matmul). The codes are integer
//! tensors outside any `VarMap`: no gradient ever reaches them, and [`QLinear::set_trainable`]
//! refuses, as slide 25 says: train adapters on top of a frozen quantized base (QLoRA).

use candle_core::{DType, Device, Tensor};

pub use crate::model::quantized::QuantizedWeight;

use crate::model::linear::{Linear, LinearLayer};
use crate::{Error, Result};

/// A linear layer with a quantized, frozen weight.
#[derive(Debug, Clone)]
pub struct QLinear {
    weight: Box<dyn QuantizedWeight>,
    /// The scheme's name, computed once (`kind()` hands out a borrow).
    kind: String,
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
            kind: weight.kind(),
            weight,
            bias,
            compute_dtype,
        })
    }

    /// The quantized weight.
    pub fn weight(&self) -> &dyn QuantizedWeight {
        self.weight.as_ref()
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
    fn kind(&self) -> &str {
        &self.kind
    }
    fn in_features(&self) -> usize {
        self.weight.in_features()
    }
    fn out_features(&self) -> usize {
        self.weight.out_features()
    }
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.weight.dequantize(self.compute_dtype)
    }
    fn quantized(&self) -> Option<&dyn QuantizedWeight> {
        Some(self.weight.as_ref())
    }
    fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// The bias in the compute dtype (a tensor already in it is kept as it is, so a trainable
    /// bias `Var` of that dtype stays the same tensor and receives its gradient).
    fn set_bias(&mut self, bias: Option<Tensor>) -> Result<()> {
        self.bias = match bias {
            Some(b) if b.dtype() != self.compute_dtype => Some(b.to_dtype(self.compute_dtype)?),
            b => b,
        };
        Ok(())
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
}

impl QLinear {
    /// The same layer with its weight quantized again from the dense `w` (same scheme,
    /// bias and compute dtype): a merged LoRA layer back to 4 bits.
    pub fn requantized(&self, w: &Tensor, name: &str) -> Result<Linear> {
        let q = QLinear::from_box(
            self.weight.requantize(w, name)?,
            self.bias.as_ref().map(Tensor::detach),
            self.compute_dtype,
        )?;
        Ok(Linear::new(q))
    }
}
