//! Evaluation-mode LoRA on the CPU: `y + (x·Aᵀ)·(s·Bᵀ)` computed on the calling thread.
//!
//! The adapter's products are tiny (r = 16: 5.5 % of a layer's FLOPs at SmolLM2's widths), and
//! candle runs every matmul and every add on its thread pool: with two threads, waking the
//! second one for work of a few microseconds cost ≈ 20 % of the whole forward (r = 16 on all
//! linear layers, docs/benchmarks.md), against 4–8 % on one thread. Here the two products run
//! as GEMMs of the `gemm` crate that candle's CPU backend uses — single-threaded when small —
//! the second one accumulating into a copy of `y`, inside one custom op without a backward
//! (evaluation only).

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use gemm::{gemm, Parallelism};

/// `y + (x·at)·sbt` for contiguous f32 `x: (…, in)`, `y: (…, out)`, `at: [in, r]`,
/// `sbt: [r, out]` on the CPU with no gradient; `None` otherwise (the caller takes candle's
/// ops).
pub(crate) fn add_lora_eval(
    y: &Tensor,
    x: &Tensor,
    at: &Tensor,
    sbt: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let f32s = [y, x, at, sbt].iter().all(|t| t.dtype() == DType::F32);
    let contiguous = [y, x, at, sbt].iter().all(|t| t.is_contiguous());
    let tracked = [y, x, at, sbt].iter().any(|t| t.track_op());
    if !f32s || !contiguous || tracked || !x.device().is_cpu() || !y.device().is_cpu() {
        return Ok(None);
    }
    let op = AddLora {
        at: at.clone(),
        sbt: sbt.clone(),
    };
    y.apply_op2_no_bwd(x, &op).map(Some)
}

/// Above this many FLOPs the two products use candle's threads (measured on 2 threads: r = 16
/// at 128 tokens, ≈ 5 MFLOP, costs 1.07× the plain model single-threaded and 1.20× threaded;
/// r = 64, ≈ 19 MFLOP, 1.34× single-threaded and 1.21× threaded).
const PARALLEL_FLOPS: usize = 10_000_000;

struct AddLora {
    at: Tensor,
    sbt: Tensor,
}

/// The f32 slice of a contiguous CPU tensor.
fn slice_of<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("lora-eval: {what} is not contiguous")))?;
    match s {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => candle_core::bail!("lora-eval: {what} is not f32"),
    }
}

impl CustomOp2 for AddLora {
    fn name(&self) -> &'static str {
        "lora-eval"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (inp, r) = self.at.dims2()?;
        let (r2, out) = self.sbt.dims2()?;
        let y = slice_of(ys, yl, "y")?;
        let x = slice_of(xs, xl, "x")?;
        let rows = x.len() / inp.max(1);
        if r2 != r || x.len() != rows * inp || y.len() != rows * out {
            candle_core::bail!(
                "lora-eval: x {:?}, y {:?}, Aᵀ [{inp}, {r}], s·Bᵀ [{r2}, {out}] do not fit",
                xl.dims(),
                yl.dims()
            );
        }
        let (at_s, at_l) = self.at.storage_and_layout();
        let (sbt_s, sbt_l) = self.sbt.storage_and_layout();
        let (Storage::Cpu(at_s), Storage::Cpu(sbt_s)) = (&*at_s, &*sbt_s) else {
            candle_core::bail!("lora-eval: the adapter is not on the cpu");
        };
        let at = slice_of(at_s, at_l, "Aᵀ")?;
        let sbt = slice_of(sbt_s, sbt_l, "s·Bᵀ")?;
        // Small products (r = 16 on a 128-token prompt: ≈ 5 MFLOP per layer) on this thread;
        // larger ones (r = 64 and up, long inputs) are worth candle's thread pool again.
        let flops = 2 * rows * r * (inp + out);
        let parallelism = if flops > PARALLEL_FLOPS {
            Parallelism::Rayon(candle_core::utils::get_num_threads())
        } else {
            Parallelism::None
        };
        let mut u = vec![0f32; rows * r];
        let mut dst = y.to_vec();
        // Row-major everywhere: element (i, j) of an [m, n] matrix at i·n + j, so the column
        // stride is 1 and the row stride n. gemm computes dst = α·dst + β·lhs·rhs.
        // SAFETY: every pointer covers its [m, k], [k, n] or [m, n] matrix (checked above), and
        // `u`/`dst` are owned buffers that nothing else reads during the calls.
        unsafe {
            gemm(
                rows,
                r,
                inp,
                u.as_mut_ptr(),
                1,
                r as isize,
                false,
                x.as_ptr(),
                1,
                inp as isize,
                at.as_ptr(),
                1,
                r as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
            gemm(
                rows,
                out,
                r,
                dst.as_mut_ptr(),
                1,
                out as isize,
                true,
                u.as_ptr(),
                1,
                r as isize,
                sbt.as_ptr(),
                1,
                out as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        Ok((CpuStorage::F32(dst), yl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_abs_diff;
    use candle_core::Device;

    /// Equals candle's `y + (x·Aᵀ)·(s·Bᵀ)` for a batch of rows and for one row.
    #[test]
    fn matches_candle_ops() {
        let dev = Device::Cpu;
        for rows in [(2usize, 7usize), (1, 1)] {
            let x = Tensor::randn(0f32, 1.0, (rows.0, rows.1, 24), &dev).unwrap();
            let y = Tensor::randn(0f32, 1.0, (rows.0, rows.1, 40), &dev).unwrap();
            let at = Tensor::randn(0f32, 0.3, (24, 5), &dev).unwrap();
            let sbt = Tensor::randn(0f32, 0.3, (5, 40), &dev).unwrap();
            let got = add_lora_eval(&y, &x, &at, &sbt).unwrap().unwrap();
            let want = (&y
                + x.broadcast_matmul(&at)
                    .unwrap()
                    .broadcast_matmul(&sbt)
                    .unwrap())
            .unwrap();
            assert!(max_abs_diff(&got, &want) < 1e-5, "{rows:?}");
        }
        // Not contiguous: left to candle's ops.
        let x = Tensor::randn(0f32, 1.0, (24, 3), &dev)
            .unwrap()
            .t()
            .unwrap();
        let y = Tensor::zeros((3, 40), DType::F32, &dev).unwrap();
        let at = Tensor::zeros((24, 5), DType::F32, &dev).unwrap();
        let sbt = Tensor::zeros((5, 40), DType::F32, &dev).unwrap();
        assert!(add_lora_eval(&y, &x, &at, &sbt).unwrap().is_none());
    }
}
