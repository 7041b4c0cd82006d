//! The quantized storage a layer may hold, as the `Linear` seam sees it.
//!
//! A [`QuantizedWeight`] is a weight matrix `[out_features, in_features]` kept as packed codes
//! and their constants. The schemes live in `quant/` (NF4/FP4, affine n-bit, LLM.int8, GGML
//! types) and implement this trait; `quant::QLinear` puts one behind the seam. The trait is
//! defined here, beside [`LinearLayer`](super::linear::LinearLayer), because
//! [`LinearLayer::quantized`](super::linear::LinearLayer::quantized) hands it out: callers
//! (reports, merging, `prepare_model_for_kbit_training`) ask a layer for its storage instead of
//! downcasting to a concrete type.

use std::fmt::Debug;

use candle_core::{DType, Device, Tensor};

use super::linear::linear_forward;

/// A weight matrix `[out_features, in_features]` stored quantized.
pub trait QuantizedWeight: Send + Sync + Debug + CloneWeight + 'static {
    /// The scheme's short name ("nf4", "nf4+dq", "int8", "affine-int4-g64", "q4_0", ...).
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
    /// A dense `w` `[out, in]` quantized with this weight's own scheme and parameters (the
    /// same block size, threshold, group, GGML type): how a merged LoRA layer is quantized
    /// again. `name` is the tensor's name for errors.
    fn requantize(&self, w: &Tensor, name: &str) -> crate::Result<Box<dyn QuantizedWeight>>;
}

/// Cloning a boxed weight; implemented for every `QuantizedWeight + Clone`.
pub trait CloneWeight {
    /// A copy in a new box (tensors shared).
    fn clone_weight(&self) -> Box<dyn QuantizedWeight>;
}

impl<T: QuantizedWeight + Clone> CloneWeight for T {
    fn clone_weight(&self) -> Box<dyn QuantizedWeight> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn QuantizedWeight> {
    fn clone(&self) -> Self {
        self.clone_weight()
    }
}
