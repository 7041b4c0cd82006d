//! NF4 and FP4 4-bit quantization with blockwise absmax and double quantization, in
//! bitsandbytes' layout (QLoRA, Dettmers et al. 2023; bitsandbytes 0.50.2
//! `functional.quantize_4bit` / `dequantize_4bit`, CPU backend).
//!
//! For a weight flattened row-major into blocks of `blocksize` (64 by default) consecutive
//! values, with `c_b = max |w|` over block b:
//!
//! ```text
//! q_i = nearest level of code to  w_i / c_b        (code = NF4 or FP4, 16 levels in [−1, 1])
//! ŵ_i = code[q_i] · c_b
//! ```
//!
//! Two codes are packed per byte, the first in the high nibble. Double quantization stores the
//! constants `c_b` themselves in 8 bits ([`super::blockwise8`]). Storage per weight:
//! 4 bits + 32/blocksize bits (absmax in float32), or with double quantization
//! 4 + 8/64 + 32/(64·256) = 4.127 bits at blocksize 64 (plus one float32 offset per tensor).
//!
//! The codes, absmax, packed bytes and double-quant state are bit-identical to bitsandbytes'
//! on the fixtures in `tests/fixtures/quant` (made by `scripts/ref/make_quant_fixtures.py`).

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::blockwise8::{torch_mean_f32, DynamicLut, NESTED_BLOCKSIZE};
use super::codes::{bucketize, fp4_code, midpoints, NF4_CODE};
use super::{host_matrix, QuantizedWeight};
use crate::{Error, Result};

/// The block sizes bitsandbytes accepts.
pub const BLOCKSIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Smallest absmax a block is divided by (float32 1e−38), so an all-zero block gives 0 codes.
const TINY: f32 = 1e-38;

/// The 4-bit data type (`bnb_4bit_quant_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FourBitType {
    /// NormalFloat: levels at quantiles of N(0, 1).
    Nf4,
    /// 4-bit float E2M1.
    Fp4,
}

impl FourBitType {
    /// The 16 levels, indexed by code.
    pub fn code(self) -> [f32; 16] {
        match self {
            FourBitType::Nf4 => NF4_CODE,
            FourBitType::Fp4 => fp4_code(),
        }
    }

    /// "nf4" or "fp4".
    pub fn name(self) -> &'static str {
        match self {
            FourBitType::Nf4 => "nf4",
            FourBitType::Fp4 => "fp4",
        }
    }
}

/// How to quantize to 4 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FourBitConfig {
    /// NF4 or FP4.
    pub quant_type: FourBitType,
    /// Values per absmax block, one of [`BLOCKSIZES`] (bitsandbytes' default 64).
    pub blocksize: usize,
    /// Quantize the absmax constants too (`bnb_4bit_use_double_quant`).
    pub double_quant: bool,
}

impl FourBitConfig {
    /// NF4, blocksize 64, with or without double quantization.
    pub fn nf4(double_quant: bool) -> Self {
        Self {
            quant_type: FourBitType::Nf4,
            blocksize: 64,
            double_quant,
        }
    }

    /// FP4, blocksize 64, with or without double quantization.
    pub fn fp4(double_quant: bool) -> Self {
        Self {
            quant_type: FourBitType::Fp4,
            ..Self::nf4(double_quant)
        }
    }

    /// The same with another block size.
    pub fn with_blocksize(mut self, blocksize: usize) -> Self {
        self.blocksize = blocksize;
        self
    }

    fn validate(&self) -> Result<()> {
        if !BLOCKSIZES.contains(&self.blocksize) {
            return Err(Error::config(
                "blocksize",
                format!(
                    "{} is not supported; bitsandbytes' 4-bit block sizes are {BLOCKSIZES:?}",
                    self.blocksize
                ),
            ));
        }
        Ok(())
    }
}

/// The absmax constants: float32, or double-quantized.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Absmax {
    /// One float32 per block.
    F32(Vec<f32>),
    /// Double quantization: one code byte per block, `absmax2` (float32) per 256 blocks, and
    /// the float32 mean that was subtracted.
    Nested {
        /// Code indices into the signed dynamic map, one per block.
        q: Vec<u8>,
        /// The second-level absmax, one per [`NESTED_BLOCKSIZE`] blocks.
        absmax2: Vec<f32>,
        /// The mean of the first-level absmax, added back on dequantization.
        offset: f32,
    },
}

/// Everything needed to dequantize the packed codes: bitsandbytes' `QuantState`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantState {
    /// NF4 or FP4.
    pub quant_type: FourBitType,
    /// Values per block.
    pub blocksize: usize,
    /// The original shape.
    pub shape: Vec<usize>,
    /// The absmax constants.
    pub absmax: Absmax,
}

impl QuantState {
    /// Number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of absmax blocks, ⌈n / blocksize⌉.
    pub fn blocks(&self) -> usize {
        self.numel().div_ceil(self.blocksize)
    }

    /// The float32 absmax per block (restored from the nested state if double-quantized:
    /// `code2[q]·absmax2 + offset`, two float32 roundings as bitsandbytes does them).
    pub fn absmax_f32(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::F32(a) => a.clone(),
            Absmax::Nested { q, absmax2, offset } => {
                let lut = dynamic_lut();
                q.iter()
                    .enumerate()
                    .map(|(b, &k)| lut.code[k as usize] * absmax2[b / NESTED_BLOCKSIZE] + offset)
                    .collect()
            }
        }
    }

    /// Bytes of the packed codes and all constants: ⌈n/2⌉ + 4·blocks, or with double
    /// quantization ⌈n/2⌉ + blocks + 4·⌈blocks/256⌉ + 4 (the offset). The code tables are
    /// constants shared by every layer and not counted.
    pub fn storage_bytes(&self) -> usize {
        let packed = self.numel().div_ceil(2);
        packed
            + match &self.absmax {
                Absmax::F32(a) => 4 * a.len(),
                Absmax::Nested { q, absmax2, .. } => q.len() + 4 * absmax2.len() + 4,
            }
    }
}

fn dynamic_lut() -> &'static DynamicLut {
    static LUT: OnceLock<DynamicLut> = OnceLock::new();
    LUT.get_or_init(DynamicLut::signed_dynamic)
}

/// Quantizes `values` (a tensor of `shape`, flattened row-major) to 4 bits: the packed bytes
/// (⌈n/2⌉, first value in the high nibble; an odd count is padded with the code of 0) and the
/// [`QuantState`].
///
/// Per block the absmax is the largest |value| (float32). Full blocks are scaled by the
/// reciprocal `1/max(absmax, 1e−38)`, the ragged last block by a true division, as
/// bitsandbytes does; the scaled value goes to the nearest level by the levels' float32
/// midpoints, a tie to the lower level.
pub fn quantize_4bit(
    values: &[f32],
    shape: &[usize],
    cfg: &FourBitConfig,
) -> Result<(Vec<u8>, QuantState)> {
    cfg.validate()?;
    let n: usize = shape.iter().product();
    if n != values.len() || n == 0 {
        return Err(Error::Input(format!(
            "quantize_4bit: shape {shape:?} holds {n} values but {} were given{}",
            values.len(),
            if n == 0 {
                " (an empty tensor cannot be quantized)"
            } else {
                ""
            }
        )));
    }
    let code = cfg.quant_type.code();
    let (mids, order) = midpoints(&code);
    let bs = cfg.blocksize;
    let mut idx = Vec::with_capacity(n + 1);
    let mut absmax = Vec::with_capacity(n.div_ceil(bs));
    for block in values.chunks(bs) {
        let am = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let level = |x: f32| order[bucketize(x.clamp(-1.0, 1.0), &mids)];
        if block.len() == bs {
            absmax.push(am);
            let inv = 1.0 / am.max(TINY);
            idx.extend(block.iter().map(|&v| level(v * inv)));
        } else {
            let am = am.max(TINY);
            absmax.push(am);
            idx.extend(block.iter().map(|&v| level(v / am)));
        }
    }
    if n % 2 == 1 {
        idx.push(order[bucketize(0.0, &mids)]);
    }
    let packed = idx.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
    let absmax = if cfg.double_quant {
        let offset = torch_mean_f32(&absmax);
        let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
        let (q, absmax2) = dynamic_lut().quantize(&centred, NESTED_BLOCKSIZE);
        Absmax::Nested { q, absmax2, offset }
    } else {
        Absmax::F32(absmax)
    };
    Ok((
        packed,
        QuantState {
            quant_type: cfg.quant_type,
            blocksize: bs,
            shape: shape.to_vec(),
            absmax,
        },
    ))
}

/// The 256 byte values unpacked to their two levels, `[code[b >> 4], code[b & 15]]`.
fn pair_table(code: &[f32; 16]) -> Vec<[f32; 2]> {
    (0..256usize)
        .map(|b| [code[b >> 4], code[b & 15]])
        .collect()
}

/// Dequantizes packed codes: `ŵ_i = code[q_i] · absmax[i / blocksize]` (float32), row-major.
pub fn dequantize_4bit(packed: &[u8], state: &QuantState) -> Result<Vec<f32>> {
    // Room for the pad value of an odd count, dropped at the end.
    let mut out = vec![0f32; 2 * packed.len()];
    dequantize_4bit_into(packed, state, &mut out)?;
    out.truncate(state.numel());
    Ok(out)
}

/// Like [`dequantize_4bit`] into a caller's buffer of `2·packed.len()` values (n, plus one
/// when n is odd), so that the kernel can be measured without allocating.
pub fn dequantize_4bit_into(packed: &[u8], state: &QuantState, out: &mut [f32]) -> Result<()> {
    let n = state.numel();
    if packed.len() != n.div_ceil(2) || out.len() != 2 * packed.len() {
        return Err(Error::Input(format!(
            "dequantize_4bit: {} packed bytes and room for {} values for shape {:?}, expected {} \
             and {}",
            packed.len(),
            out.len(),
            state.shape,
            n.div_ceil(2),
            2 * n.div_ceil(2)
        )));
    }
    let absmax = state.absmax_f32();
    let code = state.quant_type.code();
    let bs = state.blocksize;
    // Blocks hold an even number of values (bs >= 32), so each block is whole bytes. Per block
    // the 16 levels are scaled once (the same float32 products `code[k]·absmax`), then each
    // byte is two lookups.
    let unpack = |first_block: usize, bytes: &[u8], out: &mut [f32]| {
        for (b, (bytes, out)) in bytes.chunks(bs / 2).zip(out.chunks_mut(bs)).enumerate() {
            let am = absmax[first_block + b];
            let lv: [f32; 16] = code.map(|c| c * am);
            for (&byte, o) in bytes.iter().zip(out.chunks_exact_mut(2)) {
                o[0] = lv[(byte >> 4) as usize];
                o[1] = lv[(byte & 15) as usize];
            }
        }
    };
    // Large weights are split by whole blocks over the available cores.
    let threads = if n >= 1 << 18 {
        std::thread::available_parallelism().map_or(1, |t| t.get())
    } else {
        1
    };
    let blocks = state.blocks();
    let per = blocks.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = packed
            .chunks(per * bs / 2)
            .zip(out.chunks_mut(per * bs))
            .enumerate()
            .peekable();
        while let Some((t, (bytes, out))) = parts.next() {
            let unpack = &unpack;
            if parts.peek().is_none() {
                unpack(t * per, bytes, out);
            } else {
                scope.spawn(move || unpack(t * per, bytes, out));
            }
        }
    });
    Ok(())
}

/// A weight `[out, in]` quantized to NF4/FP4: packed codes as a U8 tensor on the weight's
/// device and its [`QuantState`].
#[derive(Debug, Clone)]
pub struct FourBitWeight {
    packed: Tensor,
    state: QuantState,
    double_quant: bool,
}

/// Quantizes a 2-D weight to NF4/FP4 (`name` appears in errors: a non-2-D, empty or
/// non-finite weight, an unsupported block size).
pub fn quantize_4bit_weight(w: &Tensor, name: &str, cfg: &FourBitConfig) -> Result<FourBitWeight> {
    cfg.validate()?;
    let (values, rows, cols) = host_matrix(w, name)?;
    let (packed, state) = quantize_4bit(&values, &[rows, cols], cfg)?;
    let len = packed.len();
    Ok(FourBitWeight {
        packed: Tensor::from_vec(packed, len, w.device())?,
        state,
        double_quant: cfg.double_quant,
    })
}

impl FourBitWeight {
    /// The scheme it was quantized with, to quantize a merged weight the same way.
    pub fn scheme(&self) -> crate::quant::QuantScheme {
        crate::quant::QuantScheme::FourBit(FourBitConfig {
            quant_type: self.state.quant_type,
            blocksize: self.state.blocksize,
            double_quant: self.double_quant,
        })
    }

    /// The quantization state (absmax, code book, block size), as bitsandbytes' `quant_state`.
    pub fn quant_state(&self) -> &QuantState {
        &self.state
    }

    /// The packed codes, ⌈n/2⌉ bytes.
    pub fn packed(&self) -> &Tensor {
        &self.packed
    }

    /// The device-generic dequantization (f32), which non-CPU devices use; public so that tests
    /// can compare it with the CPU fast path.
    pub fn dequantize_on_any_device(&self) -> candle_core::Result<Tensor> {
        self.dequantize_generic()
    }

    /// Device-generic dequantization: unpack through a 256×2 table with `index_select`, scale
    /// each block by its absmax.
    fn dequantize_generic(&self) -> candle_core::Result<Tensor> {
        let dev = self.packed.device();
        let pairs: Vec<f32> = pair_table(&self.state.quant_type.code())
            .into_iter()
            .flatten()
            .collect();
        let table = Tensor::from_vec(pairs, (256, 2), dev)?;
        let n = self.state.numel();
        // The ids go in as u32: candle 0.11's index_select treats a u8 id of 255 (the byte of
        // two top codes) as a padding sentinel and returns zeros for it.
        let levels = table
            .index_select(&self.packed.to_dtype(DType::U32)?, 0)?
            .flatten_all()?
            .narrow(0, 0, n)?;
        let absmax = self.state.absmax_f32();
        let bs = self.state.blocksize;
        let full = n / bs;
        let scale = |levels: Tensor, am: &[f32], cols: usize| -> candle_core::Result<Tensor> {
            let am = Tensor::from_slice(am, (am.len(), 1), dev)?;
            levels
                .reshape((am.dim(0)?, cols))?
                .broadcast_mul(&am)?
                .flatten_all()
        };
        let mut parts = Vec::with_capacity(2);
        if full > 0 {
            parts.push(scale(levels.narrow(0, 0, full * bs)?, &absmax[..full], bs)?);
        }
        if n % bs != 0 {
            let tail = levels.narrow(0, full * bs, n - full * bs)?;
            parts.push(scale(tail, &absmax[full..], n - full * bs)?);
        }
        Tensor::cat(&parts, 0)?.reshape(self.state.shape.as_slice())
    }

    /// CPU fast path: the same arithmetic on the host bytes.
    fn dequantize_cpu(&self) -> candle_core::Result<Tensor> {
        let values = self.with_host_bytes(|bytes| {
            dequantize_4bit(bytes, &self.state).map_err(candle_core::Error::wrap)
        })?;
        Tensor::from_vec(values, self.state.shape.as_slice(), &Device::Cpu)
    }

    /// Runs `f` on the packed bytes of a CPU tensor.
    fn with_host_bytes<T>(
        &self,
        f: impl FnOnce(&[u8]) -> candle_core::Result<T>,
    ) -> candle_core::Result<T> {
        let (storage, layout) = self.packed.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(cpu) => {
                let all = cpu.as_slice::<u8>()?;
                let start = layout.start_offset();
                f(&all[start..start + self.packed.elem_count()])
            }
            _ => candle_core::bail!("the packed codes are not on the CPU"),
        }
    }

    /// The fused CPU path for a few f32 rows ([`super::gemv4`]), if it applies.
    fn forward_fused(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (out_f, in_f) = (self.state.shape[0], self.state.shape[1]);
        let rows = x.elem_count() / in_f.max(1);
        if x.rank() == 0
            || x.track_op() // training: the dequantized path carries the input gradient
            || !x.device().is_cpu()
            || x.dtype() != DType::F32
            || rows > super::gemv4::MAX_ROWS
            || in_f % self.state.blocksize != 0
        {
            return Ok(None);
        }
        let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let absmax = self.state.absmax_f32();
        let code = self.state.quant_type.code();
        let y = self.with_host_bytes(|bytes| {
            Ok(super::gemv4::gemv_4bit(
                bytes,
                &absmax,
                &code,
                (out_f, in_f),
                self.state.blocksize,
                &xs,
            ))
        })?;
        let mut dims = x.dims().to_vec();
        dims[x.rank() - 1] = out_f;
        Ok(Some(Tensor::from_vec(y, dims, x.device())?))
    }
}

impl QuantizedWeight for FourBitWeight {
    fn kind(&self) -> String {
        let name = self.state.quant_type.name();
        match (self.double_quant, self.state.blocksize) {
            (false, 64) => name.to_string(),
            (true, 64) => format!("{name}+dq"),
            (false, bs) => format!("{name}-b{bs}"),
            (true, bs) => format!("{name}+dq-b{bs}"),
        }
    }
    fn out_features(&self) -> usize {
        self.state.shape[0]
    }
    fn in_features(&self) -> usize {
        self.state.shape[1]
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.forward_fused(x)? {
            Some(y) => Ok(y),
            None => {
                let w = self.dequantize(x.dtype())?;
                crate::model::linear::linear_forward(x, &w, None)
            }
        }
    }
    fn dequantize(&self, dtype: DType) -> candle_core::Result<Tensor> {
        let w = if self.packed.device().is_cpu() {
            self.dequantize_cpu()?
        } else {
            self.dequantize_generic()?
        };
        w.to_dtype(dtype)
    }
    fn storage_bytes(&self) -> usize {
        self.state.storage_bytes()
    }
    fn device(&self) -> Device {
        self.packed.device().clone()
    }
    fn requantize(&self, w: &Tensor, name: &str) -> Result<Box<dyn QuantizedWeight>> {
        self.scheme().quantize(w, name)
    }
}
