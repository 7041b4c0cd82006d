//! Helpers of the library's unit tests (the integration tests have theirs in tests/common).

use candle_core::Tensor;

/// max |a − b| over all elements, as f32 (shapes must agree).
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_dtype(candle_core::DType::F32))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max |a - b|")
}
