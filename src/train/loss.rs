//! The causal language-modelling loss with an ignore index, as transformers computes it:
//! logits at position t predict the token at t + 1, labels equal to −100 are left out, and the
//! loss is the mean negative log-likelihood over the remaining targets:
//!
//! ```text
//! L = −(1/N) · Σ_{(b,t): labels[b,t+1] ≠ −100} log softmax(logits[b,t])[labels[b,t+1]]
//! ```
//!
//! With gradient accumulation, N is the number of targets of the whole optimizer step
//! (transformers' `num_items_in_batch`), so that four micro-batches give the same gradient as
//! one batch four times larger. Only the rows that have a target go through `lm_head`: with loss
//! on assistant turns only, most positions never need their `[vocab]`-wide logits.

use candle_core::{DType, Tensor, D};

use crate::model::autograd::{attach1, supported};
use crate::{Error, Result};

pub use crate::data::batch::IGNORE_INDEX;

/// The targets of a `(B, T)` label matrix after the shift: for every `(b, t)` with
/// `labels[b][t + 1] ≠ −100`, the row `b·(T − 1) + t` of the flattened shifted logits and the
/// target id. Errors on a label that is negative but not −100.
pub fn shifted_targets(labels: &[Vec<i64>]) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (b, row) in labels.iter().enumerate() {
        let t_len = row.len();
        for (t, &l) in row.iter().enumerate().skip(1) {
            if l == IGNORE_INDEX {
                continue;
            }
            if l < 0 || l > u32::MAX as i64 {
                return Err(Error::Input(format!(
                    "label {l} at batch row {b}, position {t}: labels are token ids or \
                     {IGNORE_INDEX} (ignored)"
                )));
            }
            rows.push((b * (t_len - 1) + t - 1) as u32);
            targets.push(l as u32);
        }
    }
    Ok((rows, targets))
}

/// `Σ −log softmax(logits)[target]` over the rows of `logits: (N, V)` (computed in f32) with
/// `targets: (N)` u32 ids: a scalar, differentiable.
///
/// When `logits` needs a gradient the sum is one op whose backward is
/// `∂L/∂logits = g · (softmax(logits) − onehot(target))`, with the softmax recomputed from the
/// logits the graph keeps anyway: candle's autograd through `log_softmax` would keep four more
/// `(N, V)` tensors (800 MB for SmolLM2 at 1,020 targets) and make as many passes back.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if !logits.track_op() || !supported(logits) {
        return Ok(cross_entropy_plain(logits, targets)?);
    }
    let detached = logits.detach();
    let value = cross_entropy_plain(&detached, targets)?;
    let idx = targets.to_dtype(DType::U32)?.unsqueeze(1)?; // (N, 1)
    Ok(attach1(
        "cross-entropy",
        logits,
        &value,
        Box::new(move |g| {
            let p = candle_nn::ops::softmax_last_dim(&detached.to_dtype(DType::F32)?)?;
            let minus_one = Tensor::full(-1f32, idx.shape(), idx.device())?;
            let d = p.scatter_add(&idx, &minus_one, 1)?;
            let d = d.broadcast_mul(&g.to_dtype(DType::F32)?)?;
            Ok([Some(d.to_dtype(detached.dtype())?)])
        }),
    )?)
}

/// The same sum through candle's ops (differentiable by its autograd).
fn cross_entropy_plain(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let logits = logits.to_dtype(DType::F32)?;
    let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = lsm.gather(&targets.unsqueeze(1)?, 1)?;
    picked.sum_all()?.neg()
}

/// The mean loss of `logits: (B, T, V)` against `labels` (B rows of T), and the number of
/// targets N. N = 0 gives a zero loss (nothing to learn from this batch).
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        return Err(Error::Input(format!(
            "labels must be {b} rows of {t} to match logits {:?}",
            logits.dims()
        )));
    }
    let (rows, targets) = shifted_targets(labels)?;
    let n = rows.len();
    if n == 0 || t < 2 {
        return Ok((Tensor::zeros((), DType::F32, logits.device())?, 0));
    }
    let dev = logits.device();
    let flat = logits.narrow(1, 0, t - 1)?.reshape((b * (t - 1), v))?;
    let picked = flat.index_select(&Tensor::new(rows, dev)?, 0)?;
    let sum = cross_entropy_sum(&picked, &Tensor::new(targets, dev)?)?;
    Ok(((sum / n as f64)?, n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::Device;

    /// Against candle-nn's cross-entropy (mean over rows) on the kept targets only.
    #[test]
    fn equals_plain_cross_entropy_on_kept_targets() {
        let dev = Device::Cpu;
        let logits = Tensor::randn(0f32, 1.0, (2, 4, 7), &dev).unwrap();
        let labels = vec![vec![5, -100, 3, 1], vec![-100, 6, -100, 0]];
        let (loss, n) = causal_lm_loss(&logits, &labels).unwrap();
        assert_eq!(n, 4);
        // Kept: (0,1)->3, (0,2)->1, (1,0)->6, (1,2)->0.
        let rows: Vec<Tensor> = [(0, 1), (0, 2), (1, 0), (1, 2)]
            .iter()
            .map(|&(b, t)| logits.get(b).unwrap().get(t).unwrap())
            .collect();
        let picked = Tensor::stack(&rows, 0).unwrap();
        let want =
            candle_nn::loss::cross_entropy(&picked, &Tensor::new(&[3u32, 1, 6, 0], &dev).unwrap())
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        let got = loss.to_scalar::<f32>().unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    /// The op's gradient `softmax − onehot` equals candle's autograd through log_softmax.
    #[test]
    fn fused_gradient_matches_autograd() {
        let dev = Device::Cpu;
        let v = candle_core::Var::from_tensor(
            &(Tensor::randn(0f32, 1.0, (5, 11), &dev).unwrap() * 4.0).unwrap(),
        )
        .unwrap();
        let targets = Tensor::new(&[3u32, 0, 10, 3, 7], &dev).unwrap();
        let fused = (cross_entropy_sum(v.as_tensor(), &targets).unwrap() * 0.5).unwrap();
        let plain = (cross_entropy_plain(v.as_tensor(), &targets).unwrap() * 0.5).unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            plain.to_scalar::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        let ga = fused.backward().unwrap();
        let gb = plain.backward().unwrap();
        let d = max_abs_diff(
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
        );
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn bad_label_is_an_error() {
        assert!(shifted_targets(&[vec![0, -5]]).is_err());
        let (rows, _) = shifted_targets(&[vec![-100, -100]]).unwrap();
        assert!(rows.is_empty());
    }
}
