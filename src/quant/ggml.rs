//! GGML block quantization — llama.cpp's formats — through candle's own `QTensor` and
//! `QMatMul`: the inference and deployment path (GGUF files, `llama.cpp`, `ollama`).
//!
//! A GGML weight is cut, row by row, into blocks of 32 (or 256, the "K-quants") consecutive
//! values; each block stores small integer codes and one or two f16 constants. With `q` the
//! code of a value and `d`, `m` the block's scale and minimum:
//!
//! | type | block | stored per block (`ggml-common.h`) | bytes | bits / weight | value |
//! |---|---|---|---|---|---|
//! | `q4_0` | 32 | `d: f16`, 32 × 4-bit | 18 | 4.5 | `d·(q − 8)` |
//! | `q4_1` | 32 | `d, m: f16`, 32 × 4-bit | 20 | 5.0 | `d·q + m` |
//! | `q5_0` | 32 | `d`, 32 × 5-bit | 22 | 5.5 | `d·(q − 16)` |
//! | `q5_1` | 32 | `d, m`, 32 × 5-bit | 24 | 6.0 | `d·q + m` |
//! | `q8_0` | 32 | `d`, 32 × i8 | 34 | 8.5 | `d·q` |
//! | `q2_k` | 256 | 16 × (4-bit scale, 4-bit min), `d, dmin`, 256 × 2-bit | 84 | 2.625 | `d·sᵢ·q − dmin·mᵢ` |
//! | `q3_k` | 256 | 16 × 6-bit scales, `d`, 256 × 3-bit | 110 | 3.4375 | `d·sᵢ·(q − 4)` |
//! | `q4_k` | 256 | `d, dmin`, 8 × (6-bit scale, 6-bit min), 256 × 4-bit | 144 | 4.5 | `d·sᵢ·q − dmin·mᵢ` |
//! | `q5_k` | 256 | as `q4_k` + 1 high bit per value | 176 | 5.5 | `d·sᵢ·q − dmin·mᵢ` |
//! | `q6_k` | 256 | 16 × i8 scales, `d`, 256 × 6-bit | 210 | 6.5625 | `d·sᵢ·(q − 32)` |
//! | `f16`, `bf16`, `f32` | 1 | the value | 2, 2, 4 | 16, 16, 32 | — |
//!
//! Bits per weight = `8 · type_size / block_size`; K-quants reach fractional 4.5 bits with
//! 4-bit codes because their scales are themselves quantized (6-bit scales under one f16 `d`).
//! Sources: ggml's `ggml-common.h` (`block_q4_0`, ..., `block_q6_K`) and candle's
//! `candle-core/src/quantized/k_quants.rs`, whose structs assert the same sizes.
//!
//! # Forward is quantized too
//!
//! Unlike NF4 (dequantize, then an f32/bf16 matmul), `QMatMul` on the CPU multiplies **integer
//! codes by integer codes**: each row of the activation `x` is quantized to 8 bits first (ggml's
//! "vec-dot type": `q8_0` for `q4_0`/`q5_0`/`q8_0`, `q8_1` for `q4_1`/`q5_1`, `q8_k` for the
//! K-quants, blocks of 32 or 256 with scale `d = absmax/127`), and the block dot products are
//! integer sums times `d_w·d_x`. So `forward(x)` is not exactly `x·dequantize(W)ᵀ`: each
//! activation is off by at most `d_x/2` (plus the f16 rounding of `d_x`); modelled as uniform
//! rounding noise, `Var(Δy_i) = Σ_k ŵ_ik²·d_k²/12`, about 0.5 % (blocks of 32) to 0.6 % (blocks
//! of 256) of `|y|` for Gaussian activations whatever the weight type — as large as the whole
//! weight error of `q8_0` (tests: the derived worst-case bound, and the measured error against
//! this model). llama.cpp does the same; on SmolLM2 the GGUF's own blocks through `QMatMul` move
//! the f32 logits by as much as llama.cpp's do (max 1.09, mean 0.15; tests/quant_ggml.rs).
//! `dequantize` is exact: it is what the GGUF loader uses.
//!
//! # Layout constraints
//!
//! Blocks run along a row, so `in_features` must be a multiple of the block size (32 or 256).
//! candle's vec-dot kernels for `q4_1`, `q5_0` and `q5_1` also take blocks in pairs (they
//! assert an even number of blocks per row, as ggml's SIMD code does), so those three need
//! `in_features` divisible by 64. `q8_1` and `q8_k` are ggml's activation types, never used to
//! store weights, and are refused.
//!
//! Size: ~330 lines of code; the other half are unit tests, one per GGML block type.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::{host_matrix, QuantizedWeight};
use crate::{Error, Result};

/// llama.cpp's name of a GGML type, lower-cased (`ggml_type_name`: `q4_0`, `q4_K`, ...).
pub fn ggml_kind(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// Bits per weight of a GGML type: `8 · type_size / block_size` (4.5 for `q4_0`, 6.5625 for
/// `q6_k`; see the module's table).
pub fn bits_per_weight(dtype: GgmlDType) -> f64 {
    8.0 * dtype.type_size() as f64 / dtype.block_size() as f64
}

/// Columns a row must be a multiple of: the block size, or two blocks for the types whose
/// vec-dot kernel takes blocks in pairs.
fn row_multiple(dtype: GgmlDType) -> usize {
    match dtype {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => 2 * dtype.block_size(),
        _ => dtype.block_size(),
    }
}

/// Checks that `dtype` can store a `[rows, cols]` weight named `name`.
fn check_layout(name: &str, dtype: GgmlDType, cols: usize) -> Result<()> {
    if matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K) {
        return Err(Error::Input(format!(
            "tensor `{name}`: {} is one of ggml's activation (vec-dot) types, not a weight \
             type; use q8_0 for 8-bit weights",
            ggml_kind(dtype)
        )));
    }
    let multiple = row_multiple(dtype);
    if cols % multiple != 0 {
        let why = if multiple == dtype.block_size() {
            format!("the block size of {}", ggml_kind(dtype))
        } else {
            format!(
                "two blocks of {} ({} each; candle's {} vec-dot takes blocks in pairs)",
                ggml_kind(dtype),
                dtype.block_size(),
                ggml_kind(dtype)
            )
        };
        return Err(Error::Input(format!(
            "tensor `{name}`: in_features = {cols} is not a multiple of {multiple}, {why}; \
             GGML blocks run along the rows of the weight"
        )));
    }
    Ok(())
}

/// A weight `[out_features, in_features]` in a GGML block format, with candle's quantized
/// matmul for forward.
#[derive(Debug, Clone)]
pub struct GgmlWeight {
    qtensor: Arc<QTensor>,
    /// `None` for the float types (f32, f16, bf16): `QMatMul` would keep a dequantized f32
    /// copy of them beside the stored one, so forward dequantizes on the fly instead.
    matmul: Option<QMatMul>,
    out_features: usize,
    in_features: usize,
}

/// Quantizes `w: [out_features, in_features]` (any float dtype, any device) to the GGML type
/// `dtype`, exactly as llama.cpp's `quantize` would without an importance matrix. The codes
/// land on `w`'s device. Same as [`GgmlWeight::quantize`] with the name `weight`.
pub fn quantize_ggml(w: &Tensor, dtype: GgmlDType) -> Result<GgmlWeight> {
    GgmlWeight::quantize("weight", w, dtype)
}

impl GgmlWeight {
    /// Quantizes `w` (named `name` in errors) to `dtype`.
    ///
    /// The weight is copied to the host as f32 and checked (`host_matrix`: rank 2,
    /// non-empty, float, finite), quantized there by ggml's reference routines
    /// (`quantize_row_*`, as ported by candle) and the blocks moved to `w`'s device.
    ///
    /// Errors name the tensor: a bad weight, `in_features` not a multiple of the block size
    /// (32; 256 for K-quants; 64 for `q4_1`/`q5_0`/`q5_1`), or an activation-only type.
    pub fn quantize(name: &str, w: &Tensor, dtype: GgmlDType) -> Result<Self> {
        let (values, rows, cols) = host_matrix(w, name)?;
        check_layout(name, dtype, cols)?;
        let host = Tensor::from_vec(values, (rows, cols), &Device::Cpu)?;
        let q = QTensor::quantize_onto(&host, dtype, w.device())?;
        Self::from_qtensor_named(name, q)
    }

    /// Wraps a `QTensor` as it is, e.g. one read from a GGUF file
    /// (`GgufFile::tensor`): no dequantization, no re-quantization.
    ///
    /// Note: llama.cpp stores the q and k projections of Llama-architecture models with their
    /// rows permuted for its RoPE; see [`GgmlWeight::unpermute_rotary`].
    pub fn from_qtensor(q: QTensor) -> Result<Self> {
        Self::from_qtensor_named("qtensor", q)
    }

    /// [`GgmlWeight::from_qtensor`], naming the tensor in errors.
    pub fn from_qtensor_named(name: &str, q: QTensor) -> Result<Self> {
        let (rows, cols) = match *q.shape().dims() {
            [r, c] if r > 0 && c > 0 => (r, c),
            _ => {
                return Err(Error::Input(format!(
                    "tensor `{name}`: a GGML weight must be a non-empty 2-D [out_features, \
                     in_features] tensor, got shape {:?}",
                    q.shape().dims()
                )))
            }
        };
        let dtype = q.dtype();
        check_layout(name, dtype, cols)?;
        // ggml's block layout: elements / block_size blocks of type_size bytes each.
        let expected = rows * cols / dtype.block_size() * dtype.type_size();
        let found = q.storage_size_in_bytes();
        if found != expected {
            return Err(Error::Input(format!(
                "tensor `{name}`: {} storage of a [{rows}, {cols}] weight holds {found} bytes, \
                 expected {rows}·{cols}/{} blocks × {} bytes = {expected}",
                ggml_kind(dtype),
                dtype.block_size(),
                dtype.type_size()
            )));
        }
        let qtensor = Arc::new(q);
        let matmul = match dtype {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => None,
            _ => Some(QMatMul::from_arc(qtensor.clone())?),
        };
        Ok(Self {
            qtensor,
            matmul,
            out_features: rows,
            in_features: cols,
        })
    }

    /// The scheme it was quantized with, to quantize a merged weight the same way.
    pub fn scheme(&self) -> crate::quant::QuantScheme {
        crate::quant::QuantScheme::Ggml(self.ggml_dtype())
    }

    /// The GGML block type.
    pub fn ggml_dtype(&self) -> GgmlDType {
        self.qtensor.dtype()
    }

    /// The underlying `QTensor` (e.g. to write it to a GGUF file).
    pub fn qtensor(&self) -> &QTensor {
        &self.qtensor
    }

    /// Stored bits per weight: `8 · storage_bytes / (out · in)`.
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / (self.out_features * self.in_features) as f64
    }

    /// A weight made of the rows `rows` of this one (`new[i] = old[rows[i]]`), moving the
    /// quantized blocks as they are: every row is a whole number of blocks, so no value is
    /// re-quantized.
    pub fn select_rows(&self, rows: &[usize]) -> Result<Self> {
        let dtype = self.ggml_dtype();
        let row_bytes = self.in_features / dtype.block_size() * dtype.type_size();
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.out_features) {
            return Err(Error::Input(format!(
                "select_rows: row {bad} is out of range for a weight with {} rows",
                self.out_features
            )));
        }
        if rows.is_empty() {
            return Err(Error::Input("select_rows: no rows given".into()));
        }
        let data = self.qtensor.data()?;
        let mut out = Vec::with_capacity(rows.len() * row_bytes);
        for &r in rows {
            out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
        }
        let storage = QStorage::from_data(Cow::Owned(out), &self.qtensor.device(), dtype)?;
        let q = QTensor::new(storage, (rows.len(), self.in_features))?;
        Self::from_qtensor_named("select_rows", q)
    }

    /// Undoes llama.cpp's rotary row permutation of a q or k projection read from a
    /// Llama-architecture GGUF, giving the Hugging Face layout this library uses.
    ///
    /// llama.cpp's converter stores `W.reshape(h, 2, hd/2, in).swapaxes(1, 2)`; the inverse
    /// takes HF row `h·hd + a·hd/2 + j` from stored row `h·hd + 2j + a`, as
    /// [`crate::model::load::unpermute_rotary`] does on a dense tensor.
    pub fn unpermute_rotary(&self, n_heads: usize) -> Result<Self> {
        let out = self.out_features;
        if n_heads == 0 || out % n_heads != 0 || (out / n_heads) % 2 != 0 {
            return Err(Error::Input(format!(
                "unpermute_rotary: {out} rows cannot be split into {n_heads} heads of even size"
            )));
        }
        let hd = out / n_heads;
        let rows: Vec<usize> = (0..out)
            .map(|r| {
                let (h, i) = (r / hd, r % hd);
                let (a, j) = (i / (hd / 2), i % (hd / 2));
                h * hd + 2 * j + a
            })
            .collect();
        self.select_rows(&rows)
    }
}

impl QuantizedWeight for GgmlWeight {
    fn kind(&self) -> String {
        ggml_kind(self.ggml_dtype()).to_string()
    }
    fn out_features(&self) -> usize {
        self.out_features
    }
    fn in_features(&self) -> usize {
        self.in_features
    }
    /// ggml's `dequantize_row_*` (exact: the values the codes stand for), then `dtype`.
    fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        self.qtensor
            .dequantize(&self.qtensor.device())?
            .to_dtype(dtype)
    }
    /// `QTensor::storage_size_in_bytes`: blocks × type size, codes and constants together.
    fn storage_bytes(&self) -> usize {
        self.qtensor.storage_size_in_bytes()
    }
    fn device(&self) -> Device {
        self.qtensor.device()
    }
    /// `x·Wᵀ` by `QMatMul`, computed in f32 (the CPU kernels quantize the f32 activation rows
    /// to 8 bits, see the module docs) and returned in `x`'s dtype. The float types (f16,
    /// bf16, f32) are dequantized to f32 and multiplied exactly.
    ///
    /// # Shapes
    /// `x: (.., in_features)` with at least 2 dims → `(.., out_features)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 2 || dims[dims.len() - 1] != self.in_features {
            candle_core::bail!(
                "{} weight [{}, {}]: input must have shape (.., {}) with at least 2 dims, got {:?}",
                self.kind(),
                self.out_features,
                self.in_features,
                self.in_features,
                dims
            )
        }
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        let y = match &self.matmul {
            Some(m) => m.forward(&x32)?,
            None => {
                crate::model::linear::linear_forward(&x32, &self.dequantize(DType::F32)?, None)?
            }
        };
        y.to_dtype(dtype)
    }
    fn requantize(&self, w: &Tensor, name: &str) -> Result<Box<dyn QuantizedWeight>> {
        self.scheme().quantize(w, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linear::linear_forward;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn normal(shape: (usize, usize), std: f32, seed: u64) -> Tensor {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.0 * shape.1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let u1: f32 = rng.random::<f32>().max(1e-12);
                let u2: f32 = rng.random();
                std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2::<f32>().unwrap()
    }

    /// Storage per weight against ggml's block structs: `type_size / block_size` bytes, i.e.
    /// 34/32, 18/32, 20/32, 144/256, 210/256 for q8_0, q4_0, q4_1, q4_k, q6_k.
    #[test]
    fn storage_matches_ggml_block_sizes() {
        let w = normal((64, 256), 0.02, 1);
        let cases = [
            (GgmlDType::Q8_0, "q8_0", 8.5, 34, 32),
            (GgmlDType::Q4_0, "q4_0", 4.5, 18, 32),
            (GgmlDType::Q4_1, "q4_1", 5.0, 20, 32),
            (GgmlDType::Q4K, "q4_k", 4.5, 144, 256),
            (GgmlDType::Q6K, "q6_k", 6.5625, 210, 256),
            (GgmlDType::Q5_0, "q5_0", 5.5, 22, 32),
            (GgmlDType::Q5_1, "q5_1", 6.0, 24, 32),
            (GgmlDType::Q2K, "q2_k", 2.625, 84, 256),
            (GgmlDType::Q3K, "q3_k", 3.4375, 110, 256),
            (GgmlDType::Q5K, "q5_k", 5.5, 176, 256),
            (GgmlDType::F16, "f16", 16.0, 2, 1),
        ];
        for (dtype, kind, bits, type_size, block) in cases {
            let q = quantize_ggml(&w, dtype).unwrap();
            assert_eq!(q.kind(), kind);
            assert_eq!((dtype.type_size(), dtype.block_size()), (type_size, block));
            assert_eq!(q.storage_bytes(), 64 * 256 / block * type_size, "{kind}");
            assert_eq!(q.bits_per_weight(), bits, "{kind}");
            assert_eq!(bits_per_weight(dtype), bits, "{kind}");
            let bytes_per_weight = q.storage_bytes() as f64 / (64.0 * 256.0);
            assert_eq!(bytes_per_weight, bits / 8.0, "{kind}");
            assert_eq!(q.dequantize(DType::F32).unwrap().dims(), [64, 256]);
        }
        // A float type keeps only its own copy, and multiplies exactly.
        let h = quantize_ggml(&w, GgmlDType::F16).unwrap();
        let x = normal((3, 256), 1.0, 9);
        let want = linear_forward(&x, &h.dequantize(DType::F32).unwrap(), None).unwrap();
        assert_eq!(
            h.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
    }

    /// The bound on `|QMatMul(x) − x·Ŵᵀ|` per output element, derived from how the CPU
    /// kernels quantize each activation row (module docs):
    ///
    /// * activation error: `x̂ = q·f16(d)` with `q = round(x/d)`, `d = A/127`, so
    ///   `|x − x̂| ≤ d/2 + 127·d·2⁻¹¹ = c·A/127` with `c = 1/2 + 127/2048`. `A` is the absmax of
    ///   the activation block (32 values for q8_0/q8_1, 256 for q8_k; some x86 kernels use q8_k
    ///   for q8_0 weights too), bounded here by the absmax of the enclosing 256-block.
    ///   ⇒ `Σ_k |ŵ_ik|·c·A_k/127`;
    /// * q4_1 only: the kernel uses q8_1's stored sum `s = f16(f16(Σq)·d)` in the `m·s` term;
    ///   `f16(Σq)` is off by ≤ 1 when `|Σq| > 2048` and the product by ≤ 2⁻¹¹·4064·d, so each
    ///   32-block adds ≤ `|m|·3·d` with `|m| ≤ max_block |ŵ|` (the minimum is a value of ŵ);
    /// * f32 accumulation in both results: `≤ 2·K·2⁻²⁴·Σ_k |ŵ_ik|·|x_k|·(1 + c/127)`.
    fn bound(x: &[f32], w_hat: &[f32], dtype: GgmlDType) -> f64 {
        let k = x.len();
        let c = 0.5 + 127.0 / 2048.0;
        let absmax =
            |lo: usize, hi: usize| x[lo..hi].iter().fold(0f64, |a, &v| a.max(v.abs() as f64));
        let a256: Vec<f64> = (0..k)
            .map(|i| absmax(i / 256 * 256, (i / 256 + 1) * 256))
            .collect();
        let mut b = 0.0;
        let mut mag = 0.0;
        for i in 0..k {
            b += (w_hat[i] as f64).abs() * c * a256[i] / 127.0;
            mag += (w_hat[i] as f64).abs() * (x[i] as f64).abs();
        }
        if dtype == GgmlDType::Q4_1 {
            for blk in 0..k / 32 {
                let m = w_hat[blk * 32..blk * 32 + 32]
                    .iter()
                    .fold(0f64, |a, &v| a.max(v.abs() as f64));
                b += m * 3.0 * a256[blk * 32] / 127.0;
            }
        }
        b + 2.0 * k as f64 * 2f64.powi(-24) * mag * (1.0 + c / 127.0)
    }

    /// Variance of the rounding error of each activation quantized to 8 bits in blocks of
    /// `block` (`d = absmax/127`, error uniform in `±d/2`): `d²/12`.
    fn rounding_variance(x: &[f32], block: usize) -> Vec<f64> {
        x.chunks(block)
            .flat_map(|b| {
                let d = b.iter().fold(0f64, |a, &v| a.max(v.abs() as f64)) / 127.0;
                std::iter::repeat_n(d * d / 12.0, b.len())
            })
            .collect()
    }

    /// `QMatMul` against a dense matmul on the dequantized weight: the difference comes from
    /// the 8-bit rounding of the activations, within the bound derived in [`bound`], and of
    /// the size the uniform-rounding model predicts: `Var(Δy_i) = Σ_k ŵ_ik²·d_k²/12`. For
    /// unit-Gaussian activations that is ≈ 0.5 % of `|y|` (blocks of 32: absmax ≈ 2.5,
    /// `d ≈ 0.02`) to ≈ 0.6 % (blocks of 256), whatever the weight type.
    #[test]
    fn forward_matches_dequantized_dense_within_activation_rounding() {
        let w = normal((64, 256), 0.02, 2);
        let x = normal((8, 256), 1.0, 3);
        let xs = rows(&x);
        for dtype in [
            GgmlDType::Q8_0,
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = quantize_ggml(&w, dtype).unwrap();
            let w_hat = q.dequantize(DType::F32).unwrap();
            let y_q = q.forward(&x).unwrap();
            let y_d = linear_forward(&x, &w_hat, None).unwrap();
            let (yq, yd, wh) = (rows(&y_q), rows(&y_d), rows(&w_hat));
            let (mut worst, mut err2, mut sig2, mut max_abs) = (0f64, 0f64, 0f64, 0f64);
            let mut pred2 = [0f64; 2]; // predicted Σ Var(Δy) for activation blocks of 32, 256
            for r in 0..8 {
                for (p, block) in [32usize, 256].into_iter().enumerate() {
                    let var_x = rounding_variance(&xs[r], block);
                    for w_row in &wh {
                        pred2[p] += w_row
                            .iter()
                            .zip(&var_x)
                            .map(|(&w, v)| (w as f64).powi(2) * v)
                            .sum::<f64>();
                    }
                }
                for i in 0..64 {
                    let e = (yq[r][i] - yd[r][i]) as f64;
                    let b = bound(&xs[r], &wh[i], dtype);
                    assert!(e.abs() <= b, "{dtype:?}: |Δy[{r},{i}]| = {e} > bound {b}");
                    worst = worst.max(e.abs() / b);
                    max_abs = max_abs.max(e.abs());
                    err2 += e * e;
                    sig2 += (yd[r][i] as f64).powi(2);
                }
            }
            let rel = (err2 / sig2).sqrt();
            let (pred32, pred256) = ((pred2[0] / sig2).sqrt(), (pred2[1] / sig2).sqrt());
            println!(
                "{:5}: max |QMatMul − x·Ŵᵀ| = {max_abs:.3e}, relative RMS {rel:.3e} \
                 (predicted {pred32:.3e} with q8 blocks of 32, {pred256:.3e} of 256), \
                 worst error / bound = {worst:.3}",
                ggml_kind(dtype)
            );
            // The rounding model explains the size of the error: uniform rounding of each
            // activation to its block's grid (q8_0/q8_1 blocks of 32, q8_k blocks of 256).
            assert!(
                rel > 0.7 * pred32 && rel < 1.3 * pred256,
                "{dtype:?}: relative RMS {rel} vs predicted {pred32}..{pred256}"
            );
            // Not exact (the activations were rounded), but far from the weight's own error.
            assert!(
                err2 > 0.0,
                "{dtype:?}: QMatMul should quantize the activations"
            );
            assert!(rel < 0.02, "{dtype:?}: relative RMS {rel}");
            // 3-D input gives the same rows.
            let y3 = q.forward(&x.reshape((2, 4, 256)).unwrap()).unwrap();
            assert_eq!(y3.reshape((8, 64)).unwrap().to_vec2::<f32>().unwrap(), yq);
            // bf16 input: computed in f32, returned in bf16.
            let yb = q.forward(&x.to_dtype(DType::BF16).unwrap()).unwrap();
            assert_eq!(yb.dtype(), DType::BF16);
        }
    }

    #[test]
    fn dequantize_is_ggml_reference_and_from_qtensor_keeps_blocks() {
        let w = normal((64, 256), 0.02, 4);
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4K] {
            let q = quantize_ggml(&w, dtype).unwrap();
            let direct = QTensor::quantize(&w, dtype).unwrap();
            assert_eq!(q.qtensor().data().unwrap(), direct.data().unwrap());
            let again = GgmlWeight::from_qtensor(direct).unwrap();
            let a = q.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap();
            let b = again
                .dequantize(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(a, b);
            // Weight error is that of the format: q8_0 ≪ q4_k < q4_0 (relative RMS).
            let d = (w.clone() - q.dequantize(DType::F32).unwrap()).unwrap();
            let rel = (d
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                / w.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap())
            .sqrt();
            println!("{}: weight relative RMS error {rel:.4}", ggml_kind(dtype));
            let limit = match dtype {
                GgmlDType::Q8_0 => 0.01,
                _ => 0.15,
            };
            assert!(rel < limit, "{dtype:?}: {rel}");
            assert_eq!(
                q.dequantize(DType::BF16).unwrap().dtype(),
                DType::BF16,
                "dequantize honours the dtype"
            );
        }
    }

    #[test]
    fn select_rows_and_unpermute_move_whole_blocks() {
        let w = normal((8, 64), 0.02, 5);
        let q = quantize_ggml(&w, GgmlDType::Q8_0).unwrap();
        let dense = q.dequantize(DType::F32).unwrap();
        let perm = [7usize, 0, 3, 3];
        let sel = q.select_rows(&perm).unwrap();
        let idx = Tensor::new(&[7u32, 0, 3, 3], &Device::Cpu).unwrap();
        assert_eq!(
            sel.dequantize(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            dense
                .index_select(&idx, 0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        );
        // unpermute_rotary agrees with the dense version used by the GGUF loader.
        let un = q.unpermute_rotary(2).unwrap();
        let want = crate::model::load::unpermute_rotary(&dense, 2).unwrap();
        assert_eq!(
            un.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap()
        );
        assert!(q
            .select_rows(&[8])
            .unwrap_err()
            .to_string()
            .contains("row 8"));
        assert!(q.unpermute_rotary(3).is_err());
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_tensor() {
        let dev = Device::Cpu;
        let e = GgmlWeight::quantize(
            "model.layers.0.mlp.up_proj",
            &normal((4, 100), 1.0, 0),
            GgmlDType::Q4_0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`model.layers.0.mlp.up_proj`")
                && e.contains("in_features = 100")
                && e.contains("32"),
            "{e}"
        );
        let e = quantize_ggml(&normal((4, 128), 1.0, 0), GgmlDType::Q4K)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("in_features = 128") && e.contains("256") && e.contains("q4_k"),
            "{e}"
        );
        // q4_1 with one block per row: candle's vec-dot wants pairs of blocks.
        let e = quantize_ggml(&normal((4, 32), 1.0, 0), GgmlDType::Q4_1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("64") && e.contains("pairs"), "{e}");
        let e = quantize_ggml(&normal((4, 64), 1.0, 0), GgmlDType::Q8K)
            .unwrap_err()
            .to_string();
        assert!(e.contains("activation"), "{e}");
        let e = quantize_ggml(
            &Tensor::zeros(64, DType::F32, &dev).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2-D"), "{e}");
        let nan = Tensor::new(&[[f32::NAN; 32]], &dev).unwrap();
        let e = quantize_ggml(&nan, GgmlDType::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 0, column 0"), "{e}");
        let q = quantize_ggml(&normal((4, 64), 1.0, 0), GgmlDType::Q8_0).unwrap();
        let e = q
            .forward(&Tensor::zeros((2, 32), DType::F32, &dev).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("(.., 64)") && e.contains("[2, 32]"), "{e}");
        assert!(q
            .forward(&Tensor::zeros(64, DType::F32, &dev).unwrap())
            .is_err());
        let e = GgmlWeight::from_qtensor(
            QTensor::quantize(
                &Tensor::zeros((2, 2, 32), DType::F32, &dev).unwrap(),
                GgmlDType::Q8_0,
            )
            .unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2-D"), "{e}");
    }
}
