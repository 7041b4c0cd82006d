//! A compact display of candle's `Tensor`: shape, dtype, device, the first values and summary
//! statistics (min, max, mean, std), computed on the tensor's device.

use candle_core::{DType, Tensor};

use crate::display::Html;
use crate::html::{escape, group};

/// Summary statistics of a tensor (population std, as `torch.std(unbiased=False)`).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorStats {
    /// Number of elements.
    pub numel: usize,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// Mean.
    pub mean: f32,
    /// Standard deviation.
    pub std: f32,
}

/// Statistics of `t` (in f32); `None` for an empty tensor or one that cannot be converted.
pub fn tensor_stats(t: &Tensor) -> Option<TensorStats> {
    if t.elem_count() == 0 {
        return None;
    }
    let f = t.to_dtype(DType::F32).ok()?.flatten_all().ok()?;
    let scalar = |x: candle_core::Result<Tensor>| x.ok()?.to_scalar::<f32>().ok();
    let mean = scalar(f.mean_all())?;
    let var = scalar(
        f.broadcast_sub(&Tensor::new(mean, f.device()).ok()?)
            .and_then(|d| d.sqr()?.mean_all()),
    )?;
    Some(TensorStats {
        numel: t.elem_count(),
        min: scalar(f.min(0))?,
        max: scalar(f.max(0))?,
        mean,
        std: var.sqrt(),
    })
}

/// The first `n` values of `t` in f32 (row-major).
pub fn head_values(t: &Tensor, n: usize) -> Vec<f32> {
    let flat = match t.to_dtype(DType::F32).and_then(|f| f.flatten_all()) {
        Ok(f) => f,
        Err(_) => return vec![],
    };
    let n = n.min(flat.elem_count());
    flat.narrow(0, 0, n)
        .and_then(|x| x.to_vec1::<f32>())
        .unwrap_or_default()
}

impl Html for Tensor {
    fn to_html(&self) -> String {
        let device = tunelab::device::device_name(self.device());
        let head = head_values(self, 8);
        let vals: Vec<String> = head.iter().map(|v| format!("{v:.4}")).collect();
        let more = if self.elem_count() > head.len() {
            ", …"
        } else {
            ""
        };
        let stats = match tensor_stats(self) {
            Some(s) => format!(
                "min {:.4} · max {:.4} · mean {:.4} · std {:.4}",
                s.min, s.max, s.mean, s.std
            ),
            None => "empty".into(),
        };
        format!(
            "<div><code>Tensor{} {:?} {}</code> · {} elements<br><code>[{}{}]</code><br><small>{}</small></div>",
            escape(&format!("{:?}", self.dims())),
            self.dtype(),
            escape(&device),
            group(self.elem_count() as u64),
            escape(&vals.join(", ")),
            more,
            escape(&stats)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn stats_match_numpy() {
        // numpy: x = [1, 2, 3, 4]; x.mean() = 2.5, x.std() = 1.118034
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let s = tensor_stats(&t).unwrap();
        assert_eq!((s.numel, s.min, s.max, s.mean), (4, 1.0, 4.0, 2.5));
        assert!((s.std - 1.118_034).abs() < 1e-6);
        let html = t.to_html();
        assert!(
            html.contains("Tensor[2, 2] F32 cpu")
                && html.contains("[1.0000, 2.0000, 3.0000, 4.0000]")
        );
        let big = Tensor::zeros(100, DType::BF16, &Device::Cpu).unwrap();
        assert!(big.to_html().contains(", …"));
    }
}
