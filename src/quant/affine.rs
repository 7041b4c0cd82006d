//! Affine (zero-point) and absmax (symmetric) n-bit quantization, per tensor, per output channel
//! or group-wise: slides 12 and 17.
//!
//! Asymmetric, `n` bits (slide 12), over the values `w` of one tensor, row or group:
//!
//! ```text
//! scale      = (max − min) / (2ⁿ − 1)
//! zero_point = clamp(round(−min / scale), 0, 2ⁿ − 1)
//! Q(w)       = clamp(round(w / scale) + zero_point, 0, 2ⁿ − 1)
//! ŵ          = scale · (Q(w) − zero_point)
//! ```
//!
//! Symmetric ("absmax"), `n` bits: `scale = absmax / (2ⁿ⁻¹ − 1)`, `Q(w) = round(w / scale)` in
//! `[−(2ⁿ⁻¹ − 1), 2ⁿ⁻¹ − 1]`, `ŵ = scale · Q(w)` — for int8 `scale = absmax / 127`, Q in [−127, 127].
//!
//! Where slide 12 is silent we do what PyTorch does (`torch.ao.quantization` `MinMaxObserver` /
//! `PerChannelMinMaxObserver`, then `torch.quantize_per_tensor`/`_per_channel`), so codes, scales
//! and zero points are bit-identical to torch (`tests/quant_affine.rs`, fixtures from
//! `scripts/ref/make_affine_fixtures.py`):
//!
//! * the range always contains 0: `min = min(min, 0)`, `max = max(max, 0)` — so 0 (padding, ReLU
//!   zeros) is exact, `ŵ = 0` at `Q = zero_point`;
//! * `scale` is computed in f32 and floored at `f32::EPSILON` (torch's `eps`), so an all-zero group
//!   gets `scale = 2⁻²³`, `zero_point = 0` instead of a division by zero;
//! * `round` is round-half-to-even (`torch.round`, C `nearbyint`, the IEEE default): 42.5 → 42,
//!   43.5 → 44 — unbiased, where half-away-from-zero (candle's `round`, Rust's `f32::round`)
//!   pushes every tie outwards. Ties are not rare: `w = 0.5` in the tests' worked example lands
//!   exactly on 42.5;
//! * `w / scale` is computed as `w · (1/scale)` with the reciprocal rounded to f32 first (torch's
//!   `quantize_val` and fbgemm's `Quantize` do so; it can differ from a true division by one code
//!   when `w/scale` is within an ulp of a half), and the zero point is added after rounding.
//!
//! Granularity (slide 17): one `(scale, zero_point)` per tensor, per output channel (row of
//! `[out, in]`), or per group of `group_size` consecutive input columns within a row. When
//! `group_size` does not divide `in_features` the last group of each row is ragged (shorter): its
//! constants come from its own values, as bitsandbytes does with a ragged last block.
//!
//! Storage: codes are U8 (candle has no i8). Symmetric codes are stored offset by `2ⁿ⁻¹` (int8
//! −127..127 → 1..255, as torch's quint8 with zero point 128), so every code is a plain unsigned
//! byte or nibble. With `bits <= 4` two codes share a byte, the first in the high nibble (the
//! bitsandbytes order); 5–7 bit codes take a byte each (2- and 3-bit codes a nibble). Scales and
//! zero points are f32 — a zero point would fit a byte, but as f32 dequantization is one
//! broadcast subtraction; `storage_bytes` counts them as stored (4 bytes each).
//!
//! Dequantization, `(Q − zero_point) · scale` in f32, is device-generic candle code (a cast or a
//! nibble lookup table, broadcast sub/mul per tensor, row or group); on CPU a host loop does the
//! same arithmetic 5–18× faster (576×1536 weight), bit for bit (tested against each other).
//!
//! Size: ~480 lines of code; the rest (~290) are the unit tests that pin every variant of the
//! scheme (per tensor / channel / group, ragged groups, symmetric or not) to PyTorch's values.

use candle_core::{DType, Device, Tensor};

use super::{host_matrix, QuantizedWeight};
use crate::{Error, Result};

/// The smallest scale: `torch.finfo(torch.float32).eps = 2⁻²³`, torch's observer floor.
pub const SCALE_EPS: f32 = f32::EPSILON;

/// The constants of one quantized tensor, row or group, and the pure formulas of slide 12.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineParams {
    /// Step between two neighbouring codes.
    pub scale: f32,
    /// The code that stands for 0.0 (0 for symmetric quantization).
    pub zero_point: i32,
    /// Smallest code: 0 (asymmetric) or `−(2ⁿ⁻¹ − 1)` (symmetric).
    pub quant_min: i32,
    /// Largest code: `2ⁿ − 1` (asymmetric) or `2ⁿ⁻¹ − 1` (symmetric).
    pub quant_max: i32,
}

impl AffineParams {
    /// `Q(w) = clamp(round_half_even(w · (1/scale)) + zero_point, quant_min, quant_max)`.
    pub fn quantize(&self, w: f32) -> i32 {
        let inv = 1.0f32 / self.scale;
        // `as` saturates (and maps NaN to 0), so no overflow for any w.
        let r = (w * inv).round_ties_even() as i64;
        r.saturating_add(self.zero_point as i64)
            .clamp(self.quant_min as i64, self.quant_max as i64) as i32
    }

    /// `ŵ = scale · (q − zero_point)`, in f32.
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }
}

fn check_bits(bits: u32) -> Result<()> {
    if !(2..=8).contains(&bits) {
        return Err(Error::config(
            "bits",
            format!("must be between 2 and 8, got {bits}"),
        ));
    }
    Ok(())
}

/// Asymmetric constants for values in `[min, max]` with `bits` bits (slide 12), as torch's
/// `MinMaxObserver`: the range is widened to contain 0, `scale = (max − min)/(2ⁿ − 1)` (at least
/// `f32::EPSILON`), `zero_point = clamp(−round_half_even(min/scale), 0, 2ⁿ − 1)`.
pub fn affine_params(min: f32, max: f32, bits: u32) -> Result<AffineParams> {
    check_bits(bits)?;
    if !min.is_finite() || !max.is_finite() || min > max {
        return Err(Error::Input(format!(
            "affine_params: need finite min <= max, got min = {min}, max = {max}"
        )));
    }
    let (qmin, qmax) = (0i32, (1i32 << bits) - 1);
    let (min_neg, max_pos) = (min.min(0.0), max.max(0.0));
    let scale = ((max_pos - min_neg) / (qmax - qmin) as f32).max(SCALE_EPS);
    if !scale.is_finite() {
        return Err(Error::Input(format!(
            "affine_params: the range [{min}, {max}] overflows f32"
        )));
    }
    let zero_point = (qmin - (min_neg / scale).round_ties_even() as i32).clamp(qmin, qmax);
    Ok(AffineParams {
        scale,
        zero_point,
        quant_min: qmin,
        quant_max: qmax,
    })
}

/// Symmetric constants for values with largest magnitude `absmax` and `bits` bits:
/// `scale = absmax / (2ⁿ⁻¹ − 1)` (at least `f32::EPSILON`), zero point 0, codes in
/// `[−(2ⁿ⁻¹ − 1), 2ⁿ⁻¹ − 1]` — int8: `absmax / 127`, [−127, 127].
pub fn absmax_params(absmax: f32, bits: u32) -> Result<AffineParams> {
    check_bits(bits)?;
    if !absmax.is_finite() || absmax < 0.0 {
        return Err(Error::Input(format!(
            "absmax_params: need a finite absmax >= 0, got {absmax}"
        )));
    }
    let qmax = (1i32 << (bits - 1)) - 1;
    Ok(AffineParams {
        scale: (absmax / qmax as f32).max(SCALE_EPS),
        zero_point: 0,
        quant_min: -qmax,
        quant_max: qmax,
    })
}

/// Which values share one `(scale, zero_point)` (slide 17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// One pair for the whole matrix.
    PerTensor,
    /// One pair per output channel (row of `[out, in]`).
    PerChannel,
    /// One pair per `group_size` consecutive input columns of a row; the last group of a row is
    /// shorter when `group_size` does not divide `in_features`.
    Group(usize),
}

/// How to quantize: bit width, symmetric (absmax) or asymmetric (zero point), granularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineConfig {
    /// Bits per code, 2..=8.
    pub bits: u32,
    /// `true`: absmax, zero point 0, codes ±(2ⁿ⁻¹ − 1); `false`: min/max with a zero point.
    pub symmetric: bool,
    /// Per tensor, per channel or group-wise.
    pub granularity: Granularity,
}

impl AffineConfig {
    /// Symmetric absmax int8 per tensor: `scale = absmax/127`, Q in [−127, 127] (slide 12).
    pub fn int8_absmax() -> Self {
        Self::symmetric(8, Granularity::PerTensor)
    }

    /// Asymmetric (zero-point) quantization with `bits` bits.
    pub fn asymmetric(bits: u32, granularity: Granularity) -> Self {
        Self {
            bits,
            symmetric: false,
            granularity,
        }
    }

    /// Symmetric (absmax) quantization with `bits` bits.
    pub fn symmetric(bits: u32, granularity: Granularity) -> Self {
        Self {
            bits,
            symmetric: true,
            granularity,
        }
    }

    /// The same scheme with another granularity.
    pub fn with_granularity(self, granularity: Granularity) -> Self {
        Self {
            granularity,
            ..self
        }
    }

    /// Checks `bits` (2..=8) and the group size (>= 1); errors name the field and the value.
    pub fn validate(&self) -> Result<()> {
        check_bits(self.bits)?;
        if self.granularity == Granularity::Group(0) {
            return Err(Error::config(
                "group_size",
                "must be at least 1 input column per group, got 0",
            ));
        }
        Ok(())
    }

    /// `(quant_min, quant_max)`: `(0, 2ⁿ − 1)` or `(−(2ⁿ⁻¹ − 1), 2ⁿ⁻¹ − 1)`.
    pub fn quant_range(&self) -> (i32, i32) {
        if self.symmetric {
            let m = (1i32 << (self.bits - 1)) - 1;
            (-m, m)
        } else {
            (0, (1i32 << self.bits) - 1)
        }
    }

    /// The scheme's name: "affine-int4-g64", "absmax-int8", "affine-int8-channel", ...
    pub fn kind(&self) -> String {
        let scheme = if self.symmetric { "absmax" } else { "affine" };
        let gran = match self.granularity {
            Granularity::PerTensor => String::new(),
            Granularity::PerChannel => "-channel".into(),
            Granularity::Group(g) => format!("-g{g}"),
        };
        format!("{scheme}-int{}{gran}", self.bits)
    }

    /// Offset added to a code before it is stored: `2ⁿ⁻¹` for symmetric, 0 for asymmetric.
    fn storage_offset(&self) -> i32 {
        if self.symmetric {
            1 << (self.bits - 1)
        } else {
            0
        }
    }
}

/// A `[out, in]` weight quantized with an [`AffineConfig`]: U8 codes and f32 constants on the
/// weight's device.
#[derive(Debug, Clone)]
pub struct AffineWeight {
    config: AffineConfig,
    out_features: usize,
    in_features: usize,
    /// U8: `[ceil(out·in/2)]` two codes per byte (bits <= 4), else `[out, in]`.
    codes: Tensor,
    /// F32 `[1, 1]` (per tensor), `[out, 1]` (per channel) or `[out, ceil(in/g)]` (groups).
    scales: Tensor,
    /// F32, same shape as `scales`; `None` for symmetric (zero point 0).
    zero_points: Option<Tensor>,
}

/// Quantizes `w: [out_features, in_features]` (f32/bf16/f16) with `cfg`. The constants and codes
/// are computed on the host in f32 (bit-identical to torch, see the module docs) and stored on
/// `w`'s device.
pub fn quantize_affine(w: &Tensor, cfg: &AffineConfig) -> Result<AffineWeight> {
    cfg.validate()?;
    let (vals, rows, cols) = host_matrix(w, "weight")?;
    let params = |v: &[f32]| -> Result<AffineParams> {
        if cfg.symmetric {
            absmax_params(v.iter().fold(0f32, |m, x| m.max(x.abs())), cfg.bits)
        } else {
            let (mn, mx) = v
                .iter()
                .fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
            affine_params(mn, mx, cfg.bits)
        }
    };
    let offset = cfg.storage_offset();
    let mut codes = vec![0u8; rows * cols];
    let (mut scales, mut zps) = (Vec::new(), Vec::new());
    let mut run = |range: std::ops::Range<usize>| -> Result<()> {
        let p = params(&vals[range.clone()])?;
        for i in range {
            codes[i] = (p.quantize(vals[i]) + offset) as u8;
        }
        scales.push(p.scale);
        zps.push(p.zero_point as f32);
        Ok(())
    };
    let group = match cfg.granularity {
        Granularity::PerTensor => {
            run(0..rows * cols)?;
            cols
        }
        Granularity::PerChannel => cols,
        Granularity::Group(g) => g.min(cols),
    };
    let groups = cols.div_ceil(group);
    if cfg.granularity != Granularity::PerTensor {
        for r in 0..rows {
            for j in 0..groups {
                run(r * cols + j * group..r * cols + ((j + 1) * group).min(cols))?;
            }
        }
    }
    let const_shape = match cfg.granularity {
        Granularity::PerTensor => (1, 1),
        _ => (rows, groups),
    };
    let dev = w.device();
    let codes = if cfg.bits <= 4 {
        let packed: Vec<u8> = codes
            .chunks(2)
            .map(|c| (c[0] << 4) | c.get(1).copied().unwrap_or(0))
            .collect();
        let n = packed.len();
        Tensor::from_vec(packed, n, dev)?
    } else {
        Tensor::from_vec(codes, (rows, cols), dev)?
    };
    Ok(AffineWeight {
        config: *cfg,
        out_features: rows,
        in_features: cols,
        codes,
        scales: Tensor::from_vec(scales, const_shape, dev)?,
        zero_points: match cfg.symmetric {
            true => None,
            false => Some(Tensor::from_vec(zps, const_shape, dev)?),
        },
    })
}

impl AffineWeight {
    /// The scheme it was quantized with, to quantize a merged weight the same way.
    pub fn scheme(&self) -> crate::quant::QuantScheme {
        crate::quant::QuantScheme::Affine(self.config)
    }

    /// The configuration it was quantized with.
    pub fn config(&self) -> &AffineConfig {
        &self.config
    }

    /// The stored U8 codes (packed two per byte, high nibble first, when bits <= 4; symmetric
    /// codes offset by `2ⁿ⁻¹`).
    pub fn codes(&self) -> &Tensor {
        &self.codes
    }

    /// F32 scales: `[1, 1]`, `[out, 1]` or `[out, groups]`.
    pub fn scales(&self) -> &Tensor {
        &self.scales
    }

    /// F32 zero points, shaped as [`AffineWeight::scales`]; `None` when symmetric.
    pub fn zero_points(&self) -> Option<&Tensor> {
        self.zero_points.as_ref()
    }

    /// The codes `Q(w)` as f32 `[out, in]` (symmetric ones shifted back to ±(2ⁿ⁻¹ − 1)),
    /// device-generic: bytes are cast to f32; packed nibbles go through a `[256, 2]` lookup table
    /// with `index_select`. The ids are cast to U32 first: candle's `index_select` treats an id
    /// equal to its type's maximum as padding and returns 0 for it, i.e. U8 id 255 = 0xFF (two
    /// nibbles 15) would decode to zeros.
    fn q_values(&self) -> candle_core::Result<Tensor> {
        let (rows, cols) = (self.out_features, self.in_features);
        let off = self.config.storage_offset() as f32;
        if self.config.bits > 4 {
            return self
                .codes
                .to_dtype(DType::F32)?
                .affine(1.0, -off as f64)?
                .reshape((rows, cols));
        }
        let table: Vec<f32> = (0..256u32)
            .flat_map(|b| [(b >> 4) as f32 - off, (b & 15) as f32 - off])
            .collect();
        Tensor::from_vec(table, (256, 2), self.codes.device())?
            .index_select(&self.codes.to_dtype(DType::U32)?, 0)? // (bytes, 2)
            .flatten_all()?
            .narrow(0, 0, rows * cols)?
            .reshape((rows, cols))
    }

    /// `Q(w)` as an I64 `[out, in]` tensor, like torch's `int_repr()` (for symmetric schemes the
    /// signed codes, not the stored offset ones).
    pub fn int_repr(&self) -> candle_core::Result<Tensor> {
        self.q_values()?.to_dtype(DType::I64)
    }

    /// Device-generic dequantization in f32: unpack, subtract the zero point, multiply by the
    /// scale (broadcast per tensor, row or group).
    fn dequantize_f32(&self) -> candle_core::Result<Tensor> {
        let (rows, cols) = (self.out_features, self.in_features);
        let q = self.q_values()?; // (out, in)
        let group = match self.config.granularity {
            Granularity::Group(g) if g < cols => g,
            _ => {
                let q = match &self.zero_points {
                    Some(z) => q.broadcast_sub(z)?,
                    None => q,
                };
                return q.broadcast_mul(&self.scales);
            }
        };
        let groups = cols.div_ceil(group);
        let padded = groups * group;
        let q = q
            .pad_with_zeros(1, 0, padded - cols)?
            .reshape((rows, groups, group))?;
        let q = match &self.zero_points {
            Some(z) => q.broadcast_sub(&z.unsqueeze(2)?)?,
            None => q,
        };
        let w = q.broadcast_mul(&self.scales.unsqueeze(2)?)?; // (out, groups, group)
        w.reshape((rows, padded))?.narrow(1, 0, cols)
    }

    /// CPU fast path of [`QuantizedWeight::dequantize`]: the same f32 arithmetic,
    /// `(q − zero_point) · scale`, in one loop over the host bytes, so the result is
    /// bit-identical to the device-generic path. On a 576×1536 weight (dev build) it takes 1.0 ms
    /// instead of 19 ms for int4-g64 and 0.65 ms instead of 3–6 ms for 8-bit codes.
    fn dequantize_host(&self) -> candle_core::Result<Tensor> {
        let (rows, cols) = (self.out_features, self.in_features);
        let bytes = self.codes.flatten_all()?.to_vec1::<u8>()?;
        let codes: Vec<u8> = match self.config.bits <= 4 {
            true => bytes.iter().flat_map(|b| [b >> 4, b & 15]).collect(),
            false => bytes,
        };
        let scales = self.scales.flatten_all()?.to_vec1::<f32>()?;
        let zps = match &self.zero_points {
            Some(z) => z.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; scales.len()],
        };
        let group = match self.config.granularity {
            Granularity::Group(g) => g.min(cols),
            _ => cols,
        };
        let groups = cols.div_ceil(group);
        // (code − offset) − zero_point = code − (offset + zero_point): all small integers, exact.
        let off = self.config.storage_offset() as f32;
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for j in 0..groups {
                let k = match self.config.granularity {
                    Granularity::PerTensor => 0,
                    _ => r * groups + j,
                };
                let (z, s) = (off + zps[k], scales[k]);
                let row = &codes[r * cols..(r + 1) * cols];
                let g = &row[j * group..((j + 1) * group).min(cols)];
                out.extend(g.iter().map(|&q| (q as f32 - z) * s));
            }
        }
        Tensor::from_vec(out, (rows, cols), &Device::Cpu)
    }
}

impl QuantizedWeight for AffineWeight {
    fn kind(&self) -> String {
        self.config.kind()
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        match self.codes.device() {
            Device::Cpu => self.dequantize_host()?.to_dtype(dtype),
            _ => self.dequantize_f32()?.to_dtype(dtype),
        }
    }
    /// Codes (one byte, or half a byte when bits <= 4) plus 4 bytes per scale and per zero point.
    fn storage_bytes(&self) -> usize {
        self.codes.elem_count()
            + 4 * self.scales.elem_count()
            + self.zero_points.as_ref().map_or(0, |z| 4 * z.elem_count())
    }
    fn device(&self) -> Device {
        self.codes.device().clone()
    }
    fn requantize(&self, w: &Tensor, name: &str) -> Result<Box<dyn QuantizedWeight>> {
        self.scheme().quantize(w, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QLinear;
    use crate::LinearLayer;
    use rand::{Rng, SeedableRng};

    fn cpu(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// `Q(w)` flattened, as torch's `int_repr().flatten()`.
    fn int_codes(aw: &AffineWeight) -> Vec<i64> {
        aw.int_repr()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
    }

    #[test]
    fn worked_example_8bit_asymmetric() {
        // w = [-1.0, 0.0, 0.5, 2.0], n = 8 (slide 12, by hand):
        //   scale = (2 − (−1)) / 255 = 3/255 = 1/85 ≈ 0.011764706 (f32 0x3c40c0c1), 1/scale = 85.0 in f32
        //   zero_point = round(1.0 / scale) = 85
        //   Q(−1.0) = round(−85.0) + 85 = 0          ŵ = −85 · scale = −1.0
        //   Q( 0.0) = 0 + 85 = 85                      ŵ = 0.0
        //   Q( 0.5) = round(42.5) + 85 = 42 + 85 = 127 (a tie: half to EVEN; half away from zero
        //                                              would give 128)  ŵ = 42 · scale = 0.49411765
        //   Q( 2.0) = round(170.0) + 85 = 255          ŵ = 170 · scale = 2.0
        // PyTorch agrees: o = MinMaxObserver(dtype=torch.quint8); o(x); s, z = o.calculate_qparams()
        // -> (0.0117647061124444, 85); torch.quantize_per_tensor(x, s, z, torch.quint8).int_repr()
        // -> [0, 85, 127, 255]; .dequantize() -> [-1.0, 0.0, 0.4941176474094391, 2.0].
        let p = affine_params(-1.0, 2.0, 8).unwrap();
        assert_eq!(p.scale.to_bits(), 0x3c40c0c1);
        assert_eq!((p.zero_point, p.quant_min, p.quant_max), (85, 0, 255));
        let w = [-1.0f32, 0.0, 0.5, 2.0];
        let q: Vec<i32> = w.iter().map(|&x| p.quantize(x)).collect();
        assert_eq!(q, [0, 85, 127, 255]);
        let dq: Vec<f32> = q.iter().map(|&c| p.dequantize(c)).collect();
        assert_eq!(dq, [-1.0, 0.0, 0.494_117_65, 2.0]);

        let aw = quantize_affine(
            &cpu(&w, (1, 4)),
            &AffineConfig::asymmetric(8, Granularity::PerTensor),
        )
        .unwrap();
        assert_eq!(int_codes(&aw), [0, 85, 127, 255]);
        assert_eq!(flat(&aw.dequantize(DType::F32).unwrap()), dq);
        assert_eq!(aw.kind(), "affine-int8");
        assert_eq!(aw.storage_bytes(), 4 + 4 + 4); // 4 codes, one scale, one zero point
    }

    #[test]
    fn worked_example_absmax_int8() {
        // w = [−127/64, 0.5, 1/128, 0.75]: absmax = 127/64, scale = absmax/127 = 1/64 exactly;
        // Q = round(w · 64) = [−127, 32, round(0.5) = 0 (tie to even), 48]; stored offset by 128.
        let w = [-127.0f32 / 64.0, 0.5, 1.0 / 128.0, 0.75];
        let p = absmax_params(127.0 / 64.0, 8).unwrap();
        assert_eq!(
            (p.scale, p.zero_point, p.quant_min, p.quant_max),
            (1.0 / 64.0, 0, -127, 127)
        );
        let aw = quantize_affine(&cpu(&w, (2, 2)), &AffineConfig::int8_absmax()).unwrap();
        assert_eq!(int_codes(&aw), [-127, 32, 0, 48]);
        assert_eq!(
            aw.codes().flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            [1, 160, 128, 176]
        );
        assert_eq!(
            flat(&aw.dequantize(DType::F32).unwrap()),
            [-127.0 / 64.0, 0.5, 0.0, 0.75]
        );
        assert!(aw.zero_points().is_none());
        assert_eq!(
            (aw.kind(), aw.storage_bytes()),
            ("absmax-int8".to_string(), 4 + 4)
        );
    }

    #[test]
    fn zero_and_one_sided_ranges_follow_torch() {
        // all zeros: scale = eps, zero point 0; positive only: min is taken as 0 -> zero point 0;
        // negative only: max is taken as 0 -> zero point 2ⁿ − 1.
        let p = affine_params(0.0, 0.0, 8).unwrap();
        assert_eq!((p.scale, p.zero_point), (f32::EPSILON, 0));
        assert_eq!(p.quantize(0.0), 0);
        assert_eq!(affine_params(0.5, 2.0, 4).unwrap().zero_point, 0);
        assert_eq!(affine_params(-3.0, -1.0, 4).unwrap().zero_point, 15);
        assert_eq!(absmax_params(0.0, 4).unwrap().scale, f32::EPSILON);
        // saturation instead of overflow far outside the range
        let p = affine_params(-1.0, 1.0, 4).unwrap();
        assert_eq!(
            (p.quantize(1e30), p.quantize(-1e30), p.quantize(f32::NAN)),
            (15, 0, p.zero_point)
        );
    }

    #[test]
    fn bad_configs_and_inputs_are_named() {
        let err = |r: Result<AffineParams>| r.unwrap_err().to_string();
        let e = err(affine_params(-1.0, 1.0, 9));
        assert!(e.contains("`bits`") && e.contains("got 9"), "{e}");
        let e = err(absmax_params(1.0, 1));
        assert!(e.contains("`bits`") && e.contains("got 1"), "{e}");
        let e = err(affine_params(1.0, -1.0, 8));
        assert!(e.contains("min = 1") && e.contains("max = -1"), "{e}");
        assert!(err(affine_params(f32::NAN, 1.0, 8)).contains("finite"));
        assert!(err(absmax_params(-1.0, 8)).contains("got -1"));

        let w = cpu(&[1.0, 2.0, 3.0, 4.0], (2, 2));
        let q = |w: &Tensor, c: AffineConfig| quantize_affine(w, &c).unwrap_err().to_string();
        let e = q(&w, AffineConfig::asymmetric(0, Granularity::PerChannel));
        assert!(e.contains("`bits`") && e.contains("got 0"), "{e}");
        let e = q(&w, AffineConfig::asymmetric(4, Granularity::Group(0)));
        assert!(e.contains("`group_size`") && e.contains("got 0"), "{e}");
        let cfg = AffineConfig::asymmetric(4, Granularity::PerTensor);
        let e = q(
            &Tensor::zeros((2, 2, 2), DType::F32, &Device::Cpu).unwrap(),
            cfg,
        );
        assert!(
            e.contains("`weight`") && e.contains("2-D") && e.contains("[2, 2, 2]"),
            "{e}"
        );
        let e = q(
            &Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap(),
            cfg,
        );
        assert!(e.contains("empty") && e.contains("[3, 0]"), "{e}");
        let e = q(&cpu(&[1.0, f32::INFINITY, 0.0, 0.0], (2, 2)), cfg);
        assert!(e.contains("row 0, column 1"), "{e}");
    }

    /// The scale that applies to element (r, c) of an [out, in] matrix.
    fn element_scale(aw: &AffineWeight, r: usize, c: usize) -> f32 {
        let s = aw.scales().to_vec2::<f32>().unwrap();
        match aw.config().granularity {
            Granularity::PerTensor => s[0][0],
            Granularity::PerChannel => s[r][0],
            Granularity::Group(g) => s[r][c / g],
        }
    }

    #[test]
    fn round_trip_error_is_at_most_half_a_step() {
        // |w − ŵ| <= scale/2 in exact arithmetic (the range contains every value, the zero point
        // is rounded by at most 1/2 and clamping only trims that). In f32: w·(1/scale) carries a
        // relative error <= 2·2⁻²⁴ on |w/scale| + zero_point <= 2·255 steps, i.e. <= 2⁻¹⁴ of a step,
        // and ŵ = (q − z)·scale one more rounding of <= 2⁻²⁴·|ŵ|. Hence the bound below.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (rows, cols) = (6, 50);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let row_scale = [0.01f32, 1.0, 30.0, 0.3, 2.0, 0.001][i / cols];
                (rng.random::<f32>() - 0.3) * row_scale
            })
            .collect();
        let wt = cpu(&w, (rows, cols));
        let grans = [
            Granularity::PerTensor,
            Granularity::PerChannel,
            Granularity::Group(16), // ragged: 50 = 16 + 16 + 16 + 2
            Granularity::Group(25),
            Granularity::Group(64), // one group per row
        ];
        for bits in 2..=8 {
            for symmetric in [false, true] {
                for g in grans {
                    let cfg = AffineConfig {
                        bits,
                        symmetric,
                        granularity: g,
                    };
                    let aw = quantize_affine(&wt, &cfg).unwrap();
                    let dq = flat(&aw.dequantize(DType::F32).unwrap());
                    // the CPU fast path and the device-generic candle ops agree bit for bit
                    let generic = flat(&aw.dequantize_f32().unwrap());
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&dq), bits(&generic), "{}", cfg.kind());
                    let q = int_codes(&aw);
                    let (qmin, qmax) = cfg.quant_range();
                    let mut worst = 0f64;
                    for i in 0..rows * cols {
                        let (r, c) = (i / cols, i % cols);
                        let s = element_scale(&aw, r, c) as f64;
                        let err = (w[i] as f64 - dq[i] as f64).abs();
                        let bound =
                            s * (0.5 + 2f64.powi(-14)) + (dq[i] as f64).abs() * 2f64.powi(-24);
                        assert!(
                            err <= bound,
                            "{}: w[{r},{c}] = {}, ŵ = {}, scale {s}",
                            cfg.kind(),
                            w[i],
                            dq[i]
                        );
                        assert!((qmin as i64..=qmax as i64).contains(&q[i]));
                        worst = worst.max(err / s);
                    }
                    // the bound is tight: some element is close to half a step away
                    assert!(worst > 0.35, "{}: worst error {worst} steps", cfg.kind());
                }
            }
        }
    }

    #[test]
    fn ragged_groups_use_their_own_values() {
        // in = 5, group 2 -> groups [0,1] [2,3] [4]; the last group's constants come from w[4] alone.
        let w = cpu(
            &[0.1, -0.2, 3.0, -1.0, 0.75, 0.0, 0.0, 0.0, 0.0, -0.5],
            (2, 5),
        );
        let aw = quantize_affine(&w, &AffineConfig::asymmetric(4, Granularity::Group(2))).unwrap();
        assert_eq!(aw.scales().dims(), [2, 3]);
        let s = aw.scales().to_vec2::<f32>().unwrap();
        let z = aw.zero_points().unwrap().to_vec2::<f32>().unwrap();
        for (r, c0, c1, vals) in [
            (0, 0, 2, [0.1f32, -0.2]),
            (0, 2, 4, [3.0, -1.0]),
            (1, 4, 5, [-0.5, -0.5]),
        ] {
            let p = affine_params(vals[0].min(vals[1]), vals[0].max(vals[1]), 4).unwrap();
            assert_eq!(
                (s[r][c0 / 2], z[r][c0 / 2]),
                (p.scale, p.zero_point as f32),
                "row {r} cols {c0}..{c1}"
            );
        }
        // 10 codes in 5 bytes, 6 scales, 6 zero points
        assert_eq!(aw.codes().dims(), [5]);
        assert_eq!(aw.storage_bytes(), 5 + 6 * 4 + 6 * 4);
        assert_eq!(aw.kind(), "affine-int4-g2");
    }

    #[test]
    fn packing_odd_counts_and_dtypes() {
        // 3 x 5 = 15 codes: 8 bytes, the last low nibble is padding
        let w: Vec<f32> = (0..15).map(|i| i as f32 - 7.0).collect();
        let wt = cpu(&w, (3, 5)).to_dtype(DType::BF16).unwrap();
        let aw =
            quantize_affine(&wt, &AffineConfig::asymmetric(4, Granularity::PerTensor)).unwrap();
        assert_eq!(aw.codes().dims(), [8]);
        // range [−7, 7] with 15 steps: scale = 14/15, codes 0..14 in order (w·15/14 + 7.5 ≈ i + 0.5·i/7)
        let q = int_codes(&aw);
        let p = affine_params(-7.0, 7.0, 4).unwrap();
        assert_eq!(
            q,
            w.iter().map(|&x| p.quantize(x) as i64).collect::<Vec<_>>()
        );
        let bytes = aw.codes().to_vec1::<u8>().unwrap();
        assert_eq!(bytes[0], ((q[0] as u8) << 4) | q[1] as u8);
        assert_eq!(bytes[7], (q[14] as u8) << 4);
        let dq = aw.dequantize(DType::BF16).unwrap();
        assert_eq!((dq.dtype(), dq.dims()), (DType::BF16, &[3usize, 5][..]));
        // 3-bit symmetric: codes −3..3 stored as 1..7 in nibbles
        let aw =
            quantize_affine(&wt, &AffineConfig::symmetric(3, Granularity::PerChannel)).unwrap();
        assert_eq!(aw.kind(), "absmax-int3-channel");
        let q = aw.int_repr().unwrap().to_vec2::<i64>().unwrap();
        assert_eq!(q[0], [-3, -3, -2, -2, -1]); // row 0 = −7..−3, absmax 7, scale 7/3
        assert_eq!(aw.storage_bytes(), 8 + 3 * 4);
    }

    #[test]
    fn qlinear_forward_is_x_times_dequantized_weight() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let w: Vec<f32> = (0..8 * 12).map(|_| rng.random::<f32>() - 0.5).collect();
        let x: Vec<f32> = (0..2 * 3 * 12).map(|_| rng.random::<f32>() - 0.5).collect();
        let aw = quantize_affine(
            &cpu(&w, (8, 12)),
            &AffineConfig::asymmetric(4, Granularity::Group(4)),
        )
        .unwrap();
        let wd = aw.dequantize(DType::F32).unwrap();
        let x = Tensor::from_vec(x, (2, 3, 12), &Device::Cpu).unwrap();
        let lin = QLinear::new(aw, None, DType::F32).unwrap();
        let y = lin.forward(&x).unwrap();
        let want = x.broadcast_matmul(&wd.t().unwrap()).unwrap();
        assert_eq!(flat(&y), flat(&want));
        assert_eq!(lin.kind(), "affine-int4-g4");
    }
}
