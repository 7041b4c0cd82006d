//! 8-bit blockwise quantization with the dynamic map: the second level of double quantization
//! (QLoRA, Dettmers et al. 2023, §3 "Double Quantization"), exactly as bitsandbytes 0.50.2
//! computes it on CPU.
//!
//! The first-level absmax constants `c` (float32, one per block of 64 weights) are centred,
//! `c − mean(c)`, and quantized in blocks of 256 with the signed dynamic map
//! ([`super::codes::dynamic_map_signed`]); what is kept is one byte per constant, one float32
//! absmax per 256 constants and the float32 mean (the `offset`). That costs
//! 8/64 + 32/(64·256) ≈ 0.127 bits per weight instead of 32/64 = 0.5.
//!
//! bitsandbytes' CPU kernel (`cquantize_blockwise_cpu_fp32`) does not search the map: it maps
//! `(1 + v)/2`, v = x/absmax ∈ [−1, 1], to one of 65,536 grid points and reads the code from a
//! lookup table built from the map's midpoints ([`DynamicLut`]). That lookup differs from the
//! exact nearest code for a few values (it never yields the codes next to 0), so it is
//! reproduced here step by step (see `scripts/ref/bitsandbytes_cpu_notes.md` §4).
//!
//! The mean is torch's float32 CPU mean ([`torch_mean_f32`]): a cascade sum over 8 float lanes,
//! not a float64 mean, so that the stored offset is bit-identical too (single-threaded torch;
//! with several threads torch splits sums over 32,768 elements differently).

use super::codes::dynamic_map_signed;

/// Block size of the second quantization level (bitsandbytes fixes it at 256).
pub const NESTED_BLOCKSIZE: usize = 256;

/// bitsandbytes' 65,536-entry lookup from a grid point to a code index.
#[derive(Debug, Clone)]
pub struct DynamicLut {
    /// The 256 code values (the signed dynamic map).
    pub code: Vec<f32>,
    lut: Vec<u8>,
}

impl DynamicLut {
    /// The lookup table of `code` (256 sorted values): grid point i stands for
    /// `2i/65535 − 1` (float32) and maps to the first code whose float32 midpoint with the next
    /// one is not below it.
    pub fn new(code: Vec<f32>) -> Self {
        let mids: Vec<f32> = code.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect();
        let mut lut = vec![0u8; 65536];
        let mut c = 0usize;
        for (i, slot) in lut.iter_mut().enumerate() {
            let val = (2 * i) as f32 / 65535.0 - 1.0;
            while c < 255 && mids[c] < val {
                c += 1;
            }
            *slot = c as u8;
        }
        Self { code, lut }
    }

    /// The table of the signed dynamic map.
    pub fn signed_dynamic() -> Self {
        Self::new(dynamic_map_signed())
    }

    /// The code index of `x`, a value of a block whose absmax has reciprocal `inv`.
    fn index(&self, x: f32, inv: f32) -> u8 {
        let v = (x * inv).clamp(-1.0, 1.0);
        let t = (1.0 + v) * 0.5;
        // One rounding, as the kernel's fused multiply-add.
        let y = t.mul_add(65535.0, 0.5);
        self.lut[(y as i32 as u32 & 0xffff) as usize]
    }

    /// Quantizes `x` in blocks of `blocksize`: per block the float32 absmax and one code index
    /// per value. An all-zero block gets index 0 throughout (and dequantizes to 0).
    pub fn quantize(&self, x: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
        let mut q = Vec::with_capacity(x.len());
        let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
        for block in x.chunks(blocksize) {
            let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(am);
            if am == 0.0 {
                q.extend(std::iter::repeat_n(0u8, block.len()));
                continue;
            }
            let inv = 1.0 / am;
            q.extend(block.iter().map(|&v| self.index(v, inv)));
        }
        (q, absmax)
    }

    /// `code[q[i]] · absmax[i / blocksize]` (float32).
    pub fn dequantize(&self, q: &[u8], absmax: &[f32], blocksize: usize) -> Vec<f32> {
        q.iter()
            .enumerate()
            .map(|(i, &k)| self.code[k as usize] * absmax[i / blocksize])
            .collect()
    }
}

/// torch's single-threaded float32 CPU sum (ATen `cascade_sum` with 8-lane vectors, 4-way ILP
/// and a 4-level cascade), so that `mean` below is bit-identical to `tensor.mean()`.
pub fn torch_sum_f32(a: &[f32]) -> f32 {
    const LANES: usize = 8;
    if a.len() < LANES {
        let rows: Vec<[f32; 1]> = a.iter().map(|&v| [v]).collect();
        return 0.0 + row_sum(&rows)[0];
    }
    let vecs = a.len() / LANES;
    let rows: Vec<[f32; LANES]> = a[..vecs * LANES]
        .chunks_exact(LANES)
        .map(|c| c.try_into().expect("chunks of LANES"))
        .collect();
    let lanes = row_sum(&rows);
    let mut fin = 0f32;
    for &v in &a[vecs * LANES..] {
        fin += v;
    }
    for v in lanes {
        fin += v;
    }
    0.0 + fin
}

/// `torch.mean` of a float32 tensor on CPU (one thread): `sum / n` in float32.
pub fn torch_mean_f32(a: &[f32]) -> f32 {
    torch_sum_f32(a) / a.len() as f32
}

fn add<const W: usize>(acc: &mut [f32; W], row: &[f32; W]) {
    for (a, r) in acc.iter_mut().zip(row) {
        *a += r;
    }
}

/// ATen `row_sum` with ilp = 4: four interleaved accumulators over the rows, a cascade over
/// groups of 4 rows, leftovers into the first, then folded.
fn row_sum<const W: usize>(rows: &[[f32; W]]) -> [f32; W] {
    let groups = rows.len() / 4;
    let mut ps = if groups > 0 {
        multi_row_sum(&rows[..groups * 4], groups)
    } else {
        [[0f32; W]; 4]
    };
    for r in &rows[groups * 4..] {
        add(&mut ps[0], r);
    }
    for k in 1..4 {
        let pk = ps[k];
        add(&mut ps[0], &pk);
    }
    ps[0]
}

/// ATen `multi_row_sum`: `size` groups of 4 rows, summed with a 4-level cascade whose level
/// step is `2^max(4, ceil_log2(size)/4)`.
fn multi_row_sum<const W: usize>(rows: &[[f32; W]], size: usize) -> [[f32; W]; 4] {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 1 {
        0
    } else {
        usize::BITS - (size - 1).leading_zeros()
    } as usize;
    let power = (ceil_log2 / LEVELS).max(4);
    let step = 1usize << power;
    let mask = step - 1;
    let mut acc = [[[0f32; W]; 4]; LEVELS];
    let group = |g: usize| -> [[f32; W]; 4] {
        [
            rows[4 * g],
            rows[4 * g + 1],
            rows[4 * g + 2],
            rows[4 * g + 3],
        ]
    };
    let add4 = |a: &mut [[f32; W]; 4], b: &[[f32; W]; 4]| {
        for k in 0..4 {
            add(&mut a[k], &b[k]);
        }
    };
    let mut i = 0;
    while i + step <= size {
        for _ in 0..step {
            add4(&mut acc[0], &group(i));
            i += 1;
        }
        for j in 1..LEVELS {
            let prev = acc[j - 1];
            add4(&mut acc[j], &prev);
            acc[j - 1] = [[0f32; W]; 4];
            if i & (mask << (j * power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add4(&mut acc[0], &group(i));
        i += 1;
    }
    for j in 1..LEVELS {
        let aj = acc[j];
        add4(&mut acc[0], &aj);
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lut_never_yields_the_codes_next_to_zero() {
        let lut = DynamicLut::signed_dynamic();
        let (q, am) = lut.quantize(&[0.0, 1.0, -1.0, 1e-6], 256);
        assert_eq!(am, vec![1.0]);
        assert_eq!((q[1], q[2]), (255, 0));
        // A normalised 0 maps to code 131, not to the exact 0 at 127 (bitsandbytes' CPU grid).
        assert_eq!(q[0], 131);
    }

    #[test]
    fn torch_mean_small_cases() {
        assert_eq!(torch_mean_f32(&[1.0, 2.0, 3.0]), 2.0);
        let v: Vec<f32> = (0..1000).map(|i| i as f32 * 0.001).collect();
        assert!((torch_mean_f32(&v) - 0.4995).abs() < 1e-6);
    }
}
