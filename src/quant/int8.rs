//! LLM.int8() — Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers
//! at Scale" — as bitsandbytes 0.50.2 does it on CPU (`Linear8bitLt`, `has_fp16_weights=False`,
//! eval mode; see `scripts/ref/bitsandbytes_cpu_notes.md` §5).
//!
//! Vector-wise quantization: every row `r` of a matrix gets its own absmax,
//!
//! ```text
//! row_stats[r] = max_c |x[r, c]|                          (f32)
//! q[r, c]      = round_half_even(x[r, c] · (127 / row_stats[r]))  ∈ [−127, 127]
//! ```
//!
//! The weight `W: [out, in]` is rounded to fp16, then quantized this way once: `CB` (int8 codes)
//! and `SCB` (per output row absmax, f32); `dequantize` gives `CB · SCB / 127`.
//!
//! Forward, `y = X·Wᵀ` with the mixed-precision decomposition (`llm_int8_threshold`, 6.0 in
//! transformers' `BitsAndBytesConfig`): the activations are cast to fp16; every input column
//! (feature) with `|x| >= threshold` in any row is an *outlier column*. Outlier elements are zeroed
//! before the row absmax, and with more than one row the whole outlier columns are zeroed in the
//! int8 part. Then
//!
//! ```text
//! y = (CA · CBᵀ) ⊙ (row_stats ⊗ SCB) / 127²       int8 × int8, the regular 99.9 % of features
//!   + X[:, outliers] · dequant(CB)[:, outliers]ᵀ   floating point, the few large features
//! ```
//!
//! Threshold 0 disables the decomposition (pure int8 × int8). The int8 product is emulated by an
//! f32 matmul of the integer values, which is exact while every partial sum stays below 2²⁴:
//! each product is at most 127² = 16129, so it is exact for any data when `in_features <= 1040`
//! (2²⁴ / 16129 = 1040.2) and in practice far beyond (random signs keep the sums near
//! `√in_features · 16129`). bitsandbytes' CPU path does the same f32 matmul cast to int32.
//!
//! Two deliberate differences from bitsandbytes' CPU code (both documented in the tests):
//! * the dequantization constant is 1/127² (f32 `6.2000124e-05`); bitsandbytes' CPU/default kernel
//!   has the typo `6.200124e-05`, 1.000018× too large (its CUDA constant is right);
//! * we keep f32 until the very end (one rounding to the input dtype); bitsandbytes rounds the int8
//!   part and the dequantized outlier weight columns to fp16 before adding them.
//!
//! Storage: candle has no i8 dtype, so `CB` (and `q`) are U8 tensors holding the two's-complement
//! bytes of the int8 codes — the same bytes as bitsandbytes' `weight` int8 tensor.

use candle_core::{DType, Device, Tensor, D};

use super::{host_matrix, QuantizedWeight};
use crate::{Error, Result};

/// transformers' default `llm_int8_threshold`.
pub const LLM_INT8_THRESHOLD: f32 = 6.0;

/// `1/127²` in f32 (`0x38820610`, 6.2000124e-05): scales an int8×int8 sum back to floats.
pub const MM_DEQUANT_CONST: f32 = 1.0 / 16129.0;

/// bitsandbytes 0.50.2's CPU/default `int8_mm_dequant` constant, `6.200124e-05` (`0x388206aa`):
/// a typo for 1/127², 1.000018× too large. Not used by forward; the tests use it to reproduce
/// bitsandbytes' output bit for bit.
pub const BNB_CPU_MM_DEQUANT_CONST: f32 = 6.200124e-05;

/// `1/127` in f32 (`0x3c010204`), bitsandbytes' `int8_vectorwise_dequant` constant.
const INV_127: f32 = 1.0 / 127.0;

/// `1.5 · 2²³`: `(x + M) − M` rounds an f32 with `|x| <= 2²²` to an integer, ties to even.
const RNE_MAGIC: f64 = 12_582_912.0;

/// The output of [`int8_vectorwise_quant`].
#[derive(Debug, Clone)]
pub struct Int8VectorwiseQuant {
    /// U8 `[rows, cols]`: the int8 codes as two's-complement bytes (bitsandbytes' `int8` tensor).
    pub q: Tensor,
    /// F32 `[rows]`: the absmax of each row, outliers excluded.
    pub row_stats: Tensor,
    /// Columns with an outlier (`|x| >= threshold` in some row), ascending; `None` when the
    /// threshold is 0, `Some(vec![])` when no value reaches it (as bitsandbytes).
    pub outlier_cols: Option<Vec<usize>>,
}

/// The f32 form used by the forward pass: `q` as integer-valued f32.
struct QuantF32 {
    q: Tensor,
    row_stats: Tensor,
    outlier_cols: Option<Vec<usize>>,
}

fn check_threshold(threshold: f32) -> Result<()> {
    if !threshold.is_finite() || threshold < 0.0 {
        return Err(Error::config(
            "llm_int8_threshold",
            format!("must be a finite number >= 0 (0 disables outliers), got {threshold}"),
        ));
    }
    Ok(())
}

/// Round half to even on device, for `|x| <= 2²²`: `(x + 1.5·2²³) − 1.5·2²³` in f32, where the sum
/// has an ulp of 1 and IEEE addition rounds ties to even (candle's `round` rounds them away from
/// zero, unlike `torch.round`). Two separate ops, so no compiler can fold them.
fn round_half_even(x: &Tensor) -> candle_core::Result<Tensor> {
    x.affine(1.0, RNE_MAGIC)?.affine(1.0, -RNE_MAGIC)
}

/// Vector-wise quantization of `x: [rows, cols]` (f32/bf16/f16), device-generic; the
/// arithmetic is f32 on `x`'s exact values, as bitsandbytes' default kernel.
fn vectorwise_quant_f32(x: &Tensor, threshold: f32) -> candle_core::Result<QuantF32> {
    let (rows, cols) = x.dims2()?;
    let dev = x.device();
    let xf = x.to_dtype(DType::F32)?;
    let zeros = xf.zeros_like()?;
    let (mut a, mut outlier_cols, mut col_mask) = (xf.clone(), None, None);
    if threshold > 0.0 {
        // torch compares `A.abs() >= threshold` in A's dtype: round the threshold to it first.
        let thr = Tensor::new(&[threshold], &Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?[0];
        let outliers = xf.abs()?.ge(thr)?; // U8 (rows, cols)
        let any = outliers.max(0)?; // U8 (cols)
        let list: Vec<usize> = (any.to_vec1::<u8>()?.iter().enumerate())
            .filter_map(|(c, &o)| (o != 0).then_some(c))
            .collect();
        a = outliers.where_cond(&zeros, &xf)?;
        if rows > 1 && !list.is_empty() {
            col_mask = Some(any.unsqueeze(0)?.broadcast_as((rows, cols))?);
        }
        outlier_cols = Some(list);
    }
    let row_stats = a.abs()?.max_keepdim(1)?; // (rows, 1)
                                              // An all-zero row would give 0·(127/0) = NaN (bitsandbytes then casts it to 0): divide by 1.
    let safe = row_stats
        .eq(0f32)?
        .where_cond(&row_stats.ones_like()?, &row_stats)?;
    let scale = Tensor::full(127f32, (rows, 1), dev)?.div(&safe)?; // f32 division, as torch
    let q = round_half_even(&a.broadcast_mul(&scale)?.clamp(-127f32, 127f32)?)?;
    let q = match col_mask {
        Some(m) => m.where_cond(&zeros, &q)?,
        None => q,
    };
    Ok(QuantF32 {
        q,
        row_stats: row_stats.squeeze(1)?,
        outlier_cols,
    })
}

/// bitsandbytes' `int8_vectorwise_quant(x, threshold)`: per-row absmax int8 quantization of
/// `x: [.., cols]` (leading dims flattened into rows), with the LLM.int8 outlier columns when
/// `threshold > 0` (the `llm_int8_threshold`). Bit-identical to bitsandbytes 0.50.2 on CPU.
pub fn int8_vectorwise_quant(x: &Tensor, threshold: f32) -> Result<Int8VectorwiseQuant> {
    check_threshold(threshold)?;
    if !x.dtype().is_float() || x.rank() == 0 || x.elem_count() == 0 {
        return Err(Error::Input(format!(
            "int8_vectorwise_quant: need a non-empty float tensor [rows, cols], got {:?} {:?}",
            x.dtype(),
            x.dims()
        )));
    }
    let cols = x.dim(D::Minus1)?;
    let x = x.reshape((x.elem_count() / cols, cols))?;
    let QuantF32 {
        q,
        row_stats,
        outlier_cols,
    } = vectorwise_quant_f32(&x, threshold)?;
    // Two's complement: −k is stored as 256 − k.
    let q = q
        .lt(0f32)?
        .where_cond(&q.affine(1.0, 256.0)?, &q)?
        .to_dtype(DType::U8)?;
    Ok(Int8VectorwiseQuant {
        q,
        row_stats,
        outlier_cols,
    })
}

/// A weight `[out, in]` quantized as LLM.int8: int8 codes `CB` (U8, two's complement) and the
/// per-row absmax `SCB`, plus the `llm_int8_threshold` its forward uses.
#[derive(Debug, Clone)]
pub struct Int8Weight {
    cb: Tensor,
    scb: Tensor,
    threshold: f32,
}

/// Quantizes `w: [out, in]` as bitsandbytes' `Int8Params` does: round to fp16, then
/// [`int8_vectorwise_quant`] with threshold 0. `threshold` is the activation outlier threshold of
/// forward (`llm_int8_threshold`; 6.0 is the paper's and transformers' default, 0 = pure int8).
pub fn quantize_int8(w: &Tensor, threshold: f32) -> Result<Int8Weight> {
    check_threshold(threshold)?;
    let (vals, _, cols) = host_matrix(w, "weight")?;
    if let Some(i) = vals.iter().position(|v| v.abs() > 65504.0) {
        return Err(Error::Input(format!(
            "tensor `weight`: value at row {}, column {} is {}, beyond fp16's range (65504); \
             LLM.int8 rounds the weight to fp16 before quantizing",
            i / cols,
            i % cols,
            vals[i]
        )));
    }
    let q = int8_vectorwise_quant(&w.to_dtype(DType::F16)?, 0.0)?;
    Int8Weight::from_parts(q.q, q.row_stats, threshold)
}

impl Int8Weight {
    /// A weight from its stored parts, e.g. a bitsandbytes checkpoint's `weight` (int8 bytes as
    /// U8 `[out, in]`) and `SCB` (F32 `[out]`).
    pub fn from_parts(cb: Tensor, scb: Tensor, threshold: f32) -> Result<Self> {
        check_threshold(threshold)?;
        let (out, _) = match (cb.dtype(), cb.dims()) {
            (DType::U8, &[o, i]) if o > 0 && i > 0 => (o, i),
            _ => {
                return Err(Error::Input(format!(
                    "tensor `weight` (CB): need non-empty U8 [out, in] int8 bytes, got {:?} {:?}",
                    cb.dtype(),
                    cb.dims()
                )))
            }
        };
        if scb.dims() != [out] {
            return Err(Error::Shape {
                name: "SCB".into(),
                expected: vec![out],
                found: scb.dims().to_vec(),
            });
        }
        let scb = scb.to_dtype(DType::F32)?.to_device(cb.device())?;
        Ok(Self { cb, scb, threshold })
    }

    /// The int8 codes, U8 `[out, in]` (two's complement).
    pub fn cb(&self) -> &Tensor {
        &self.cb
    }

    /// The per-output-row absmax of the fp16 weight, F32 `[out]`.
    pub fn scb(&self) -> &Tensor {
        &self.scb
    }

    /// The scheme it was quantized with, to quantize a merged weight the same way.
    pub fn scheme(&self) -> crate::quant::QuantScheme {
        crate::quant::QuantScheme::Int8 {
            threshold: self.threshold(),
        }
    }

    /// The outlier threshold of forward (`llm_int8_threshold`).
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// The codes as integer-valued f32 `[out, in]`: a 256-entry two's-complement table and
    /// `index_select` with U32 ids (candle's `index_select` returns 0 for a U8 id of 255, its
    /// "padding" id, which here is the code −1).
    fn cb_f32(&self) -> candle_core::Result<Tensor> {
        let (out, inp) = self.cb.dims2()?;
        if self.cb.device().is_cpu() {
            // CPU fast path (dequantize of 576×1536: ~3 ms instead of ~10 ms), same values.
            let bytes = self.cb.flatten_all()?.to_vec1::<u8>()?;
            let vals = bytes.into_iter().map(|b| b as i8 as f32).collect();
            return Tensor::from_vec(vals, (out, inp), &Device::Cpu);
        }
        let table: Vec<f32> = (0..=255u8).map(|b| b as i8 as f32).collect();
        Tensor::from_vec(table, 256, self.cb.device())?
            .index_select(&self.cb.flatten_all()?.to_dtype(DType::U32)?, 0)?
            .reshape((out, inp))
    }

    /// `(CB · SCB) · f32(1/127)`, two f32 roundings, as bitsandbytes' `int8_vectorwise_dequant`.
    fn dequant_cols(&self, cb: &Tensor) -> candle_core::Result<Tensor> {
        cb.broadcast_mul(&self.scb.unsqueeze(1)?)?
            .affine(INV_127 as f64, 0.0)
    }
}

impl QuantizedWeight for Int8Weight {
    fn kind(&self) -> String {
        "int8".into()
    }
    fn out_features(&self) -> usize {
        self.cb.dims()[0]
    }
    fn in_features(&self) -> usize {
        self.cb.dims()[1]
    }
    fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.dequant_cols(&self.cb_f32()?)?.to_dtype(dtype)
    }
    /// `out·in` int8 codes + 4 bytes of `SCB` per output row.
    fn storage_bytes(&self) -> usize {
        self.cb.elem_count() + 4 * self.scb.elem_count()
    }
    fn device(&self) -> Device {
        self.cb.device().clone()
    }
    /// The LLM.int8 decomposition (module docs).
    ///
    /// # Shapes
    /// `x: (.., in)` → `(.., out)`, in `x`'s dtype.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (out, inp) = self.cb.dims2()?;
        let mut out_dims = x.dims().to_vec();
        match out_dims.last_mut() {
            Some(last) if *last == inp => *last = out,
            _ => candle_core::bail!("int8 linear: input {:?} does not end in {inp}", x.dims()),
        }
        let rows = x.elem_count() / inp;
        if rows == 0 {
            return Tensor::zeros(out_dims, x.dtype(), x.device());
        }
        let x2 = x.reshape((rows, inp))?;
        // bitsandbytes quantizes `A.to(float16)`; the outlier part uses A as given.
        let qa = vectorwise_quant_f32(&x2.to_dtype(DType::F16)?, self.threshold)?;
        let cb = self.cb_f32()?; // (out, in)
        let c = qa.q.matmul(&cb.t()?)?; // (rows, out): exact integer sums (module docs)
        let stats = qa
            .row_stats
            .unsqueeze(1)?
            .broadcast_mul(&self.scb.unsqueeze(0)?)?;
        let mut y = (c * stats)?.affine(MM_DEQUANT_CONST as f64, 0.0)?;
        if let Some(cols) = qa.outlier_cols.filter(|c| !c.is_empty()) {
            let n = cols.len();
            let idx =
                Tensor::from_vec(cols.into_iter().map(|c| c as u32).collect(), n, x.device())?;
            let xa = x2.to_dtype(DType::F32)?.index_select(&idx, 1)?; // (rows, n)
            let wa = self.dequant_cols(&cb.index_select(&idx, 1)?)?; // (out, n)
            y = (y + xa.matmul(&wa.t()?)?)?;
        }
        y.to_dtype(x.dtype())?.reshape(out_dims)
    }
    fn requantize(&self, w: &Tensor, name: &str) -> Result<Box<dyn QuantizedWeight>> {
        self.scheme().quantize(w, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn constants_are_the_documented_f32_values() {
        assert_eq!(MM_DEQUANT_CONST.to_bits(), 0x3882_0610);
        assert_eq!(BNB_CPU_MM_DEQUANT_CONST.to_bits(), 0x3882_06aa);
        assert_eq!(INV_127.to_bits(), 0x3c01_0204);
        assert_eq!(INV_127 as f64, 7.874015718698502e-3); // bitsandbytes' literal
    }

    #[test]
    fn magic_number_rounds_half_to_even() {
        // every quarter in [−128, 128] (all the halves) and the f32 neighbours of each
        let mut xs = vec![];
        for k in -512..=512 {
            let x = k as f32 / 4.0;
            xs.extend([
                x,
                f32::from_bits(x.to_bits() + 1),
                f32::from_bits(x.to_bits().max(1) - 1),
            ]);
        }
        let n = xs.len();
        let got = round_half_even(&Tensor::from_vec(xs.clone(), n, &Device::Cpu).unwrap())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, g) in xs.iter().zip(got) {
            assert_eq!(g, x.round_ties_even(), "x = {x}");
        }
    }

    #[test]
    fn vectorwise_quant_by_hand() {
        // row 0: absmax 4 -> 127/4 = 31.75; q = round([31.75, −63.5, 15.875, 127]) =
        //        [32, −64 (a tie, to even), 16, 127]; −64 is stored as 256 − 64 = 192.
        // row 1: all zero -> row_stats 0 and q 0 (bitsandbytes gets NaN and casts it to 0).
        let x = cpu(&[1.0, -2.0, 0.5, 4.0, 0.0, 0.0, 0.0, 0.0], (2, 4));
        let r = int8_vectorwise_quant(&x, 0.0).unwrap();
        assert_eq!(
            r.q.to_vec2::<u8>().unwrap(),
            [[32, 192, 16, 127], [0, 0, 0, 0]]
        );
        assert_eq!(r.row_stats.to_vec1::<f32>().unwrap(), [4.0, 0.0]);
        assert!(r.outlier_cols.is_none());
        // threshold 3: |4.0| >= 3 makes column 3 an outlier: zeroed before the absmax (now 2,
        // 127/2 = 63.5: q = [64 (tie), −127, 32 (31.75), 0]) and, with 2 rows, in every row.
        let r = int8_vectorwise_quant(&x, 3.0).unwrap();
        assert_eq!(
            r.q.to_vec2::<u8>().unwrap(),
            [[64, 129, 32, 0], [0, 0, 0, 0]]
        );
        assert_eq!(r.row_stats.to_vec1::<f32>().unwrap(), [2.0, 0.0]);
        assert_eq!(r.outlier_cols, Some(vec![3]));
        // no value reaches the threshold: an empty list, not None
        assert_eq!(
            int8_vectorwise_quant(&x, 5.0).unwrap().outlier_cols,
            Some(vec![])
        );
    }

    #[test]
    fn threshold_is_compared_in_the_input_dtype() {
        // 5.99 is 5.98828125 in fp16, so an fp16 5.98828125 is an outlier at threshold 5.99
        // (torch compares `A.abs() >= threshold` in A's dtype), an f32 one is not.
        let x = cpu(&[5.988_281_3, 1.0], (1, 2));
        let f32_cols = int8_vectorwise_quant(&x, 5.99).unwrap().outlier_cols;
        let f16_cols = int8_vectorwise_quant(&x.to_dtype(DType::F16).unwrap(), 5.99)
            .unwrap()
            .outlier_cols;
        assert_eq!((f32_cols, f16_cols), (Some(vec![]), Some(vec![0])));
    }

    #[test]
    fn bad_inputs_are_named() {
        let x = cpu(&[1.0, 2.0], (1, 2));
        for t in [-1.0, f32::NAN, f32::INFINITY] {
            let e = int8_vectorwise_quant(&x, t).unwrap_err().to_string();
            assert!(e.contains("`llm_int8_threshold`"), "{e}");
            assert!(quantize_int8(&x, t).is_err());
        }
        let e = int8_vectorwise_quant(
            &Tensor::zeros((2, 0), DType::F32, &Device::Cpu).unwrap(),
            0.0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("non-empty") && e.contains("[2, 0]"), "{e}");
        let e = int8_vectorwise_quant(&x.to_dtype(DType::U32).unwrap(), 0.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("float"), "{e}");
        let e = quantize_int8(&Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(), 6.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`weight`") && e.contains("2-D"), "{e}");
        let e = quantize_int8(&cpu(&[1.0, 7e4], (1, 2)), 6.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 0, column 1") && e.contains("fp16"), "{e}");
        let cb = Tensor::zeros((2, 3), DType::U8, &Device::Cpu).unwrap();
        let e = Int8Weight::from_parts(
            cb.clone(),
            Tensor::ones(3, DType::F32, &Device::Cpu).unwrap(),
            6.0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`SCB`") && e.contains("[2]") && e.contains("[3]"),
            "{e}"
        );
        let e = Int8Weight::from_parts(
            cb.to_dtype(DType::F32).unwrap(),
            Tensor::ones(2, DType::F32, &Device::Cpu).unwrap(),
            6.0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("U8"), "{e}");
    }

    #[test]
    fn weight_storage_dequant_and_shapes() {
        // W = [[0.5, −1.0, 0.25], [2.0, 0.0, −0.5]] (exact in fp16): SCB = [1, 2];
        // CB = round(W · 127/SCB) = [[63.5 → 64, −127, 31.75 → 32], [127, 0, −31.75 → −32]]
        let w = cpu(&[0.5, -1.0, 0.25, 2.0, 0.0, -0.5], (2, 3));
        let q = quantize_int8(&w, 6.0).unwrap();
        assert_eq!(
            q.cb().to_vec2::<u8>().unwrap(),
            [[64, 129, 32], [127, 0, 224]]
        );
        assert_eq!(q.scb().to_vec1::<f32>().unwrap(), [1.0, 2.0]);
        assert_eq!(
            (q.kind(), q.storage_bytes(), q.threshold()),
            ("int8".to_string(), 6 + 8, 6.0)
        );
        // ŵ = CB · SCB · f32(1/127)
        let dq = q.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(dq[0][1], -127.0f32 * (1.0 / 127.0)); // CB −127, SCB 1
        assert_eq!(dq[1][2], (-32.0f32 * 2.0) * (1.0 / 127.0));
        // forward keeps leading dims and the input dtype; threshold 0 is the pure int8 product
        let x = Tensor::ones((2, 5, 3), DType::BF16, &Device::Cpu).unwrap();
        let y = quantize_int8(&w, 0.0).unwrap().forward(&x).unwrap();
        assert_eq!((y.dims(), y.dtype()), (&[2usize, 5, 2][..], DType::BF16));
        // x = [1, 1, 1]: row_stats 1, CA = [127, 127, 127]; C = 127·(64 − 127 + 32) = −3937
        // y0 = −3937 · (1 · 1) / 127² = −0.24409449 ; y1 = 127 · (127 + 0 − 32) · 2 / 127² = 1.496063
        let y = quantize_int8(&w, 0.0)
            .unwrap()
            .forward(&cpu(&[1.0, 1.0, 1.0], (1, 3)))
            .unwrap();
        let y = y.to_vec2::<f32>().unwrap();
        assert!(
            (y[0][0] + 3937.0 / 16129.0).abs() < 1e-7
                && (y[0][1] - 2.0 * 95.0 / 127.0).abs() < 1e-6,
            "{y:?}"
        );
        assert!(quantize_int8(&w, 0.0)
            .unwrap()
            .forward(&cpu(&[1.0, 1.0], (1, 2)))
            .is_err());
        // behind the model's seam: QLinear calls this forward (not dequantize + matmul)
        let x = cpu(&[1.0, 7.0, -0.5, 0.25, 0.5, 2.0], (2, 3));
        let q = quantize_int8(&w, 6.0).unwrap();
        let direct = q.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let lin = crate::quant::QLinear::new(q, None, DType::F32).unwrap();
        let via = crate::LinearLayer::forward(&lin, &x).unwrap();
        assert_eq!(via.to_vec2::<f32>().unwrap(), direct);
    }
}
