//! Quantization (slides 9–29): store a weight in fewer bits, dequantize it on the fly.
//!
//! | file | scheme | source |
//! |---|---|---|
//! | `affine.rs` | affine n-bit (2..8) and symmetric absmax int8, per tensor / per channel / group-wise | slides 12, 17 |
//! | `nf4.rs` | NF4 and FP4, blockwise absmax, double quantization, in bitsandbytes' layout | QLoRA (Dettmers et al. 2023); bitsandbytes |
//! | `int8.rs` | LLM.int8(): vector-wise int8 with fp16 outlier columns | Dettmers et al. 2022 |
//! | `ggml.rs` | candle's GGML types (Q8_0, Q4_0, Q4_1, Q4K, ...) through `QTensor`/`QMatMul` | llama.cpp |
//! | `qlinear.rs` | [`QLinear`]: a frozen quantized weight behind the model's `Linear` seam | slide 25 |
//! | `config.rs` | [`QuantConfig`] (as transformers' `BitsAndBytesConfig`) and [`quantize_model`] | — |
//! | `report.rs` | footprint, per-layer error (MSE, max, SNR), histograms before/after | slides 24, 27 |
//! | `sensitivity.rs` | δL ≈ Σ ∂L/∂w·ε against the true change of the loss for one layer | slide 15 |
//! | `codes.rs`, `blockwise8.rs` | the NF4/FP4 tables and the 8-bit dynamic map of double quantization | — |
//! | `gemv4.rs` | the fused 4-bit × f32 product on CPU for decoding | — |
//!
//! Quantizing happens once, on the host, in f32 (so that the codes are bit-identical to the
//! reference implementations); the codes and constants then live on the model's device and
//! forward is device-generic candle code.

pub mod affine;
pub mod blockwise8;
pub mod codes;
pub mod config;
pub mod gemv4;
pub mod ggml;
pub mod int8;
pub mod nf4;
pub mod qlinear;
pub mod report;
pub mod sensitivity;

pub use affine::{
    absmax_params, affine_params, quantize_affine, AffineConfig, AffineParams, AffineWeight,
    Granularity,
};
pub use config::{quantize_model, quantize_model_with, QuantConfig, QuantScheme, QuantizeSummary};
pub use ggml::{quantize_ggml, GgmlWeight};
pub use int8::{int8_vectorwise_quant, quantize_int8, Int8VectorwiseQuant, Int8Weight};
pub use nf4::{quantize_4bit_weight, FourBitConfig, FourBitType, FourBitWeight, QuantState};
pub use qlinear::{QLinear, QuantizedWeight};
pub use report::{
    block_normalized_values, histogram_before_after, memory_footprint, quant_report, weight_error,
    LayerError, ModelFootprint, QuantReport, WeightError,
};
pub use sensitivity::{quantization_sensitivity, sensitivity, Sensitivity};

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// A weight matrix checked for quantization and copied to the host as f32, row-major:
/// `(values, out_features, in_features)`.
///
/// Errors name the tensor: a rank other than 2, an empty tensor, a non-float dtype, or a
/// non-finite value (with its row and column).
pub(crate) fn host_matrix(w: &Tensor, name: &str) -> Result<(Vec<f32>, usize, usize)> {
    let (rows, cols) = match *w.dims() {
        [r, c] => (r, c),
        _ => {
            return Err(Error::Input(format!(
                "tensor `{name}`: quantization needs a 2-D weight [out_features, in_features], \
                 got shape {:?}",
                w.dims()
            )))
        }
    };
    if rows == 0 || cols == 0 {
        return Err(Error::Input(format!(
            "tensor `{name}`: cannot quantize an empty weight of shape [{rows}, {cols}]"
        )));
    }
    if !w.dtype().is_float() {
        return Err(Error::Input(format!(
            "tensor `{name}`: quantization needs a float weight (f32, bf16, f16), got {:?}",
            w.dtype()
        )));
    }
    let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "tensor `{name}`: value at row {}, column {} is {}; quantization needs finite weights",
            i / cols,
            i % cols,
            values[i]
        )));
    }
    Ok((values, rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn host_matrix_rejects_bad_weights() {
        let dev = Device::Cpu;
        let e = host_matrix(&Tensor::zeros(4, DType::F32, &dev).unwrap(), "w")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`w`") && e.contains("2-D") && e.contains("[4]"),
            "{e}"
        );
        let e = host_matrix(&Tensor::zeros((0, 4), DType::F32, &dev).unwrap(), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = host_matrix(&Tensor::zeros((2, 2), DType::U8, &dev).unwrap(), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("float"), "{e}");
        let t = Tensor::new(&[[1f32, 2.0], [f32::NAN, 0.0]], &dev).unwrap();
        let e = host_matrix(&t, "w").unwrap_err().to_string();
        assert!(e.contains("row 1, column 0"), "{e}");
        let (v, r, c) = host_matrix(&t.ones_like().unwrap(), "w").unwrap();
        assert_eq!((v.len(), r, c), (4, 2, 2));
    }
}
