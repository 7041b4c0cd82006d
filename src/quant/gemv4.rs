//! CPU fast path of a 4-bit linear layer for a few rows of input (token-by-token decoding):
//! `y[m, o] = Σ_b absmax_b · Σ_{k ∈ b} code[q_{o,k}] · x[m, k]`, read straight from the packed
//! codes. Dequantizing first would write and read back 4 bytes per weight; this reads half a
//! byte. Used when the input has at most [`MAX_ROWS`] rows, the weight's blocks do not straddle
//! rows (`in_features % blocksize == 0`) and everything is f32 on the CPU; otherwise the layer
//! dequantizes and multiplies. The block sums are scaled once per block, so the result differs
//! from dequantize-then-matmul only by float32 summation order.

/// Most input rows the fused path takes; more rows amortise a dequantized matmul better.
pub const MAX_ROWS: usize = 8;

/// `y = x·Wᵀ` for `x: [m, in]` (row-major) and the 4-bit weight `[out, in]` given by its packed
/// bytes, per-block absmax (float32), code table and block size. Splits the output rows over
/// the available cores when the weight is large.
pub fn gemv_4bit(
    packed: &[u8],
    absmax: &[f32],
    code: &[f32; 16],
    (out_f, in_f): (usize, usize),
    blocksize: usize,
    x: &[f32],
) -> Vec<f32> {
    let m = x.len() / in_f;
    let pairs: Vec<[f32; 2]> = (0..256usize)
        .map(|b| [code[b >> 4], code[b & 15]])
        .collect();
    let row_bytes = in_f / 2;
    let blocks_per_row = in_f / blocksize;
    // y is computed transposed, [out, m], so that threads own disjoint output rows.
    let mut yt = vec![0f32; out_f * m];
    let work = |first_row: usize, yt: &mut [f32]| {
        for (r, y_row) in yt.chunks_mut(m).enumerate() {
            let o = first_row + r;
            let bytes = &packed[o * row_bytes..(o + 1) * row_bytes];
            let ams = &absmax[o * blocks_per_row..(o + 1) * blocks_per_row];
            for (i, y) in y_row.iter_mut().enumerate() {
                let xr = &x[i * in_f..(i + 1) * in_f];
                let mut acc = 0f32;
                for ((bb, xb), am) in bytes
                    .chunks_exact(blocksize / 2)
                    .zip(xr.chunks_exact(blocksize))
                    .zip(ams)
                {
                    // Four partial sums keep the multiply-adds independent.
                    let mut s = [0f32; 4];
                    for (b2, x4) in bb.chunks_exact(2).zip(xb.chunks_exact(4)) {
                        let [a0, a1] = pairs[b2[0] as usize];
                        let [a2, a3] = pairs[b2[1] as usize];
                        s[0] += a0 * x4[0];
                        s[1] += a1 * x4[1];
                        s[2] += a2 * x4[2];
                        s[3] += a3 * x4[3];
                    }
                    acc += am * ((s[0] + s[1]) + (s[2] + s[3]));
                }
                *y = acc;
            }
        }
    };
    let threads = if out_f * in_f >= 1 << 18 {
        std::thread::available_parallelism().map_or(1, |t| t.get())
    } else {
        1
    };
    let per = out_f.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = yt.chunks_mut(per * m).enumerate().peekable();
        while let Some((t, chunk)) = chunks.next() {
            let work = &work;
            if chunks.peek().is_none() {
                work(t * per, chunk);
            } else {
                scope.spawn(move || work(t * per, chunk));
            }
        }
    });
    // Back to [m, out].
    let mut y = vec![0f32; m * out_f];
    for o in 0..out_f {
        for i in 0..m {
            y[i * out_f + o] = yt[o * m + i];
        }
    }
    y
}
