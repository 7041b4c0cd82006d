//! The chapter's reports on a quantized model: how much smaller (footprint, slide 24), how
//! wrong (per-layer MSE, max error, SNR), how the values look (histograms before/after, slide
//! 27; block-normalized values, where NF4's 16 levels show), and how much the loss cares
//! (first-order sensitivity, slide 15: in `sensitivity.rs`, re-exported here).
//!
//! Data and formatting are apart: every report is a plain `serde::Serialize` struct with a
//! `to_text()`; the notebook prelude renders the same structs as HTML.
//!
//! # Error measures
//!
//! For an original weight `w` and its quantized-then-dequantized `ŵ`, over all `n` elements,
//! accumulated in f64:
//!
//! ```text
//! MSE     = (1/n)·Σ (w − ŵ)²
//! max_abs = max |w − ŵ|
//! SNR_dB  = 10·log10( Σ w² / Σ (w − ŵ)² )      (signal-to-quantization-noise ratio)
//! ```
//!
//! Every bit of a uniform quantizer is worth ≈ 6.02 dB of SNR (Widrow & Kollár, *Quantization
//! Noise*, 2008, §5): int8 absmax on Gaussian weights gives ≈ 35–40 dB, 4-bit formats ≈ 20 dB.
//! When the error is exactly zero the SNR is `+∞` (and `−∞` for a zero signal with a non-zero
//! error); serde_json writes non-finite numbers as `null`.
//!
//! Size: ~600 lines of code for three reports that share their row types and their text
//! rendering (footprint, per-layer error, histograms); the next report goes in a file of its own.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::memory::MemoryBudget;
use crate::model::linear::Linear;
use crate::model::llama::Llama;
use crate::model::summary::group;
use crate::viz::Histogram;
use crate::{Error, Result};

pub use super::sensitivity::{quantization_sensitivity, sensitivity, Sensitivity};

/// Elements copied to the host at a time: the error of a 28M-element `lm_head` is
/// accumulated without a second f64 copy of the whole weight.
const CHUNK: usize = 1 << 20;

/// How far a quantized weight is from its original (see the module docs for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WeightError {
    /// Mean squared error, `(1/n)·Σ (w − ŵ)²`.
    pub mse: f64,
    /// Largest absolute error, `max |w − ŵ|`.
    pub max_abs: f64,
    /// `10·log10(Σ w² / Σ (w − ŵ)²)` in dB; `+∞` for a zero error.
    pub snr_db: f64,
    /// Number of elements `n`.
    pub numel: usize,
    /// `Σ w²` (to pool several layers).
    pub sum_sq: f64,
    /// `Σ (w − ŵ)²` (to pool several layers).
    pub sum_sq_error: f64,
}

impl WeightError {
    fn from_sums(sum_sq: f64, sum_sq_error: f64, max_abs: f64, numel: usize) -> Self {
        Self {
            mse: if numel == 0 {
                0.0
            } else {
                sum_sq_error / numel as f64
            },
            max_abs,
            snr_db: snr_db(sum_sq, sum_sq_error),
            numel,
            sum_sq,
            sum_sq_error,
        }
    }

    /// The error of several weights taken together: sums of squares pooled, the largest
    /// `max_abs`.
    pub fn pooled<'a>(errors: impl IntoIterator<Item = &'a WeightError>) -> WeightError {
        let (mut s, mut e, mut m, mut n) = (0.0, 0.0, 0f64, 0usize);
        for x in errors {
            s += x.sum_sq;
            e += x.sum_sq_error;
            m = m.max(x.max_abs);
            n += x.numel;
        }
        Self::from_sums(s, e, m, n)
    }

    /// Root mean squared error, `√MSE`.
    pub fn rmse(&self) -> f64 {
        self.mse.sqrt()
    }
}

/// `10·log10(signal / noise)`: `+∞` when `noise = 0`, `−∞` when only `signal = 0`.
fn snr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// The elements of `t` and `u` (same element count) in chunks of f64 on the host, checked
/// finite (`names` name them in the error).
pub(super) fn for_each_chunk(
    t: &Tensor,
    u: &Tensor,
    what: &str,
    names: [&str; 2],
    mut f: impl FnMut(&[f64], &[f64]),
) -> Result<()> {
    let (a, b) = (t.flatten_all()?, u.flatten_all()?);
    let n = a.elem_count();
    let mut start = 0;
    while start < n {
        let len = CHUNK.min(n - start);
        let x = a
            .narrow(0, start, len)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let y = b
            .narrow(0, start, len)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        for (name, v) in [(names[0], &x), (names[1], &y)] {
            if let Some(i) = v.iter().position(|v| !v.is_finite()) {
                return Err(Error::Input(format!(
                    "{what}: {name} value at flat index {} is {}; errors need finite values",
                    start + i,
                    v[i]
                )));
            }
        }
        f(&x, &y);
        start += len;
    }
    Ok(())
}

/// MSE, max |error| and SNR of `quantized` against `original` (same shape, any float dtypes,
/// same device), accumulated in f64. Errors: different shapes, non-float or non-finite values.
pub fn weight_error(original: &Tensor, quantized: &Tensor) -> Result<WeightError> {
    weight_error_named("weight", original, quantized)
}

fn weight_error_named(name: &str, original: &Tensor, quantized: &Tensor) -> Result<WeightError> {
    if original.dims() != quantized.dims() {
        return Err(Error::Shape {
            name: format!("{name} (quantized vs original)"),
            expected: original.dims().to_vec(),
            found: quantized.dims().to_vec(),
        });
    }
    for (which, t) in [("original", original), ("quantized", quantized)] {
        if !t.dtype().is_float() {
            return Err(Error::Input(format!(
                "{name}: the {which} tensor must be float, got {:?}",
                t.dtype()
            )));
        }
    }
    let (mut s, mut e, mut m) = (0f64, 0f64, 0f64);
    for_each_chunk(
        original,
        quantized,
        name,
        ["original", "quantized"],
        |x, y| {
            for (&a, &b) in x.iter().zip(y) {
                let d = a - b;
                s += a * a;
                e += d * d;
                m = m.max(d.abs());
            }
        },
    )?;
    Ok(WeightError::from_sums(s, e, m, original.elem_count()))
}

/// The error of one layer, for tables: its path, its kind after quantization and
/// [`WeightError`]'s numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerError {
    /// HF module path (`model.layers.0.self_attn.q_proj`).
    pub path: String,
    /// The layer's kind after quantization (`nf4`, `q4_0`, `dense`, ...).
    pub kind: String,
    /// Mean squared error.
    pub mse: f64,
    /// Largest absolute error.
    pub max_abs: f64,
    /// SNR in dB (`+∞` for a zero error).
    pub snr_db: f64,
    /// Elements.
    pub numel: usize,
}

impl LayerError {
    /// A row from a path, a kind and an error.
    pub fn new(path: impl Into<String>, kind: impl Into<String>, e: &WeightError) -> Self {
        Self {
            path: path.into(),
            kind: kind.into(),
            mse: e.mse,
            max_abs: e.max_abs,
            snr_db: e.snr_db,
            numel: e.numel,
        }
    }
}

/// One tensor (or tensor group) of a model's footprint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FootprintRow {
    /// HF path (`model.embed_tokens`, `model.layers.3.mlp.up_proj`, `model.norm`, `lm_head`).
    pub name: String,
    /// `embedding`, `rmsnorm`, or the linear layer's kind (`dense`, `nf4`, `q4_0`, ...).
    pub kind: String,
    /// dtype of the tensor (for a quantized layer: its compute dtype).
    pub dtype: String,
    /// Parameters, counted as transformers counts them (logical `out·in` for a quantized
    /// layer; 0 for a tied `lm_head`, counted with the embedding).
    pub parameters: usize,
    /// Bytes held: elements × dtype size, or codes + constants for a quantized layer; 0 for an
    /// `lm_head` that shares the embedding's storage.
    pub bytes: usize,
}

/// A model's memory, tensor by tensor, as transformers' `model.get_memory_footprint()` counts
/// it (Σ elements × element size over parameters and buffers, shared storage once), beside
/// slide 24's estimate "2 bytes per parameter in fp16".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelFootprint {
    /// Every tensor: embeddings, each projection, each norm, `lm_head`.
    pub rows: Vec<FootprintRow>,
    /// Σ parameters.
    pub total_parameters: usize,
    /// Σ bytes: the footprint.
    pub total_bytes: usize,
    /// Slide 24's "before": `2 B × total_parameters` (the model in fp16).
    pub fp16_estimate_bytes: usize,
}

impl ModelFootprint {
    /// `total_bytes / fp16_estimate_bytes`: 2.0 for an f32 model, 1.0 in fp16/bf16, ≈ 0.3 for
    /// NF4 (embeddings and norms stay 16-bit).
    pub fn ratio_to_fp16(&self) -> f64 {
        self.total_bytes as f64 / self.fp16_estimate_bytes.max(1) as f64
    }

    /// Bytes grouped by row kind (`embedding`, `dense`, `nf4`, `rmsnorm`, ...), as a
    /// [`MemoryBudget`] (for `viz::budget_chart`).
    pub fn budget(&self, title: impl Into<String>) -> MemoryBudget {
        let mut by_kind: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
        for r in &self.rows {
            let e = by_kind.entry(r.kind.as_str()).or_default();
            e.0 += r.bytes as u64;
            e.1 += 1;
        }
        by_kind
            .into_iter()
            .fold(MemoryBudget::new(title), |b, (kind, (bytes, n))| {
                b.with_line(kind, bytes, format!("Σ over {n} tensors"))
            })
    }

    /// Total, fp16 estimate and the per-kind bytes as plain text.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "parameters: {}\nfootprint:  {} bytes ({:.2} MB)\nfp16 estimate (2 B × parameters): {} bytes ({:.2} MB)\nfootprint / fp16 estimate: {:.3}\n",
            group(self.total_parameters),
            group(self.total_bytes),
            self.total_bytes as f64 / 1e6,
            group(self.fp16_estimate_bytes),
            self.fp16_estimate_bytes as f64 / 1e6,
            self.ratio_to_fp16()
        );
        for l in &self.budget("").lines {
            s.push_str(&format!(
                "  {:<30} {:>14} bytes  ({})\n",
                l.name,
                group(l.bytes as usize),
                l.formula
            ));
        }
        s
    }
}

fn bytes_of(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// Whether `lm_head` is a dense layer over the very storage of `embed_tokens` (tied weights
/// as loaded), so that its bytes are counted once.
fn lm_head_shares_embedding(model: &Llama) -> bool {
    let head = &model.lm_head;
    head.base().is_none()
        && !head.is_quantized()
        && head
            .dense_weight()
            .is_ok_and(|w| w.id() == model.embed_tokens.id())
}

/// Parameters and bytes of the projection at `path`. A tied `lm_head` has no parameters of
/// its own (counted once, with the embedding, as transformers and [`Llama::num_parameters`]
/// count them) and no bytes while it shares the embedding's storage; once it holds its own
/// copy (e.g. a quantized one) its bytes count.
fn linear_size(model: &Llama, path: &str, lin: &Linear) -> (usize, usize) {
    if path != "lm_head" {
        return (lin.num_parameters(), lin.storage_bytes());
    }
    let parameters = if model.config().tie_word_embeddings {
        0
    } else {
        lin.num_parameters()
    };
    let bytes = if lm_head_shares_embedding(model) {
        0
    } else {
        lin.storage_bytes()
    };
    (parameters, bytes)
}

/// The memory of `model`, tensor by tensor (see [`ModelFootprint`]). The total equals
/// transformers' `get_memory_footprint()` for a dense model (tested against
/// `Config::num_parameters` × dtype size); for a quantized one it counts codes and all
/// constants.
pub fn memory_footprint(model: &Llama) -> ModelFootprint {
    let mut rows = vec![FootprintRow {
        name: "model.embed_tokens".into(),
        kind: "embedding".into(),
        dtype: dtype_name(model.embed_tokens.dtype()),
        parameters: model.embed_tokens.elem_count(),
        bytes: bytes_of(&model.embed_tokens),
    }];
    let norm = |name: String, w: &Tensor| FootprintRow {
        name,
        kind: "rmsnorm".into(),
        dtype: dtype_name(w.dtype()),
        parameters: w.elem_count(),
        bytes: bytes_of(w),
    };
    let linears = model.linears();
    for (i, block) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        rows.push(norm(
            format!("{p}.input_layernorm"),
            &block.input_layernorm.weight,
        ));
        rows.push(norm(
            format!("{p}.post_attention_layernorm"),
            &block.post_attention_layernorm.weight,
        ));
    }
    for (path, lin) in &linears {
        let (parameters, bytes) = linear_size(model, path, lin);
        let kind = if bytes == 0 && path == "lm_head" {
            "dense (tied to embed_tokens)".to_string()
        } else {
            lin.kind().into_owned()
        };
        rows.push(FootprintRow {
            name: path.clone(),
            kind,
            dtype: dtype_name(lin.dtype()),
            parameters,
            bytes,
        });
    }
    rows.push(norm("model.norm".into(), &model.norm.weight));
    let total_parameters = rows.iter().map(|r| r.parameters).sum();
    let total_bytes = rows.iter().map(|r| r.bytes).sum();
    ModelFootprint {
        rows,
        total_parameters,
        total_bytes,
        fp16_estimate_bytes: 2 * total_parameters,
    }
}

/// One projection before and after quantization.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantRow {
    /// HF module path.
    pub path: String,
    /// Kind before (`dense`).
    pub kind_before: String,
    /// Kind after (`nf4`, `q4_0`, ... or `dense` if skipped).
    pub kind_after: String,
    /// Logical parameters `out·in` (+ bias).
    pub parameters: usize,
    /// Bytes before (0 for a tied `lm_head`).
    pub bytes_before: usize,
    /// Bytes after (0 for a tied `lm_head`).
    pub bytes_after: usize,
    /// Error of the effective weight after (`dense_weight()`) against the one before.
    pub error: WeightError,
}

impl QuantRow {
    /// The row as a [`LayerError`] (kind after quantization).
    pub fn layer_error(&self) -> LayerError {
        LayerError::new(&self.path, &self.kind_after, &self.error)
    }
}

/// A model before and after quantization: every projection's bytes and error, their totals,
/// and both whole-model footprints (embeddings and norms included).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantReport {
    /// One row per projection, in checkpoint order.
    pub layers: Vec<QuantRow>,
    /// Σ bytes of the projections before.
    pub linear_bytes_before: usize,
    /// Σ bytes of the projections after.
    pub linear_bytes_after: usize,
    /// The error of all projections pooled (Σ of squares over all of them).
    pub total_error: WeightError,
    /// The whole model before.
    pub before: ModelFootprint,
    /// The whole model after.
    pub after: ModelFootprint,
}

impl QuantReport {
    /// The per-layer errors.
    pub fn layer_errors(&self) -> Vec<LayerError> {
        self.layers.iter().map(QuantRow::layer_error).collect()
    }

    /// `after.total_bytes / before.total_bytes`.
    pub fn compression(&self) -> f64 {
        self.after.total_bytes as f64 / self.before.total_bytes.max(1) as f64
    }

    /// A plain-text table: one line per projection, then totals and footprints.
    pub fn to_text(&self) -> String {
        let w = self
            .layers
            .iter()
            .map(|r| r.path.len())
            .chain([5])
            .max()
            .unwrap_or(5);
        let mut s = format!(
            "{:<w$}  {:>8} {:>8} {:>12} {:>12} {:>11} {:>10} {:>8}\n",
            "layer", "before", "after", "bytes before", "bytes after", "MSE", "max |err|", "SNR dB"
        );
        let line = |s: &mut String,
                    name: &str,
                    kb: &str,
                    ka: &str,
                    bb: usize,
                    ba: usize,
                    e: &WeightError| {
            s.push_str(&format!(
                "{name:<w$}  {kb:>8} {ka:>8} {:>12} {:>12} {:>11.3e} {:>10.3e} {:>8.2}\n",
                group(bb),
                group(ba),
                e.mse,
                e.max_abs,
                e.snr_db
            ));
        };
        for r in &self.layers {
            line(
                &mut s,
                &r.path,
                &r.kind_before,
                &r.kind_after,
                r.bytes_before,
                r.bytes_after,
                &r.error,
            );
        }
        line(
            &mut s,
            "all projections",
            "",
            "",
            self.linear_bytes_before,
            self.linear_bytes_after,
            &self.total_error,
        );
        s.push_str(&format!(
            "\nwhole model: {} -> {} bytes ({:.3}×); fp16 estimate {} bytes, after / fp16 estimate = {:.3}\n",
            group(self.before.total_bytes),
            group(self.after.total_bytes),
            self.compression(),
            group(self.after.fp16_estimate_bytes),
            self.after.ratio_to_fp16()
        ));
        s
    }
}

/// Compares a model `before` quantization with the same model `after` (e.g. two loads of one
/// checkpoint, one passed through `quantize_model`): per projection its kinds, bytes and the
/// error of `after`'s effective weight against `before`'s; the pooled error; both footprints.
///
/// Errors: a projection of `before` missing from `after` or of another shape (named).
pub fn quant_report(before: &Llama, after: &Llama) -> Result<QuantReport> {
    let after_linears: BTreeMap<String, &Linear> = after.linears().into_iter().collect();
    let mut layers = Vec::new();
    for (path, lb) in before.linears() {
        let la = after_linears.get(&path).ok_or_else(|| {
            Error::Input(format!(
                "quant_report: `{path}` is in the model before quantization but not after"
            ))
        })?;
        let (wb, wa) = (lb.dense_weight()?, la.dense_weight()?);
        let error = weight_error_named(&path, &wb, &wa)?;
        let (parameters, bytes_before) = linear_size(before, &path, lb);
        let (_, bytes_after) = linear_size(after, &path, la);
        layers.push(QuantRow {
            parameters,
            kind_before: lb.kind().into_owned(),
            kind_after: la.kind().into_owned(),
            bytes_before,
            bytes_after,
            error,
            path,
        });
    }
    Ok(QuantReport {
        linear_bytes_before: layers.iter().map(|r| r.bytes_before).sum(),
        linear_bytes_after: layers.iter().map(|r| r.bytes_after).sum(),
        total_error: WeightError::pooled(layers.iter().map(|r| &r.error)),
        layers,
        before: memory_footprint(before),
        after: memory_footprint(after),
    })
}

fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Histograms of a weight before and after quantization over one shared range (the finite
/// min..max of both), so they can be overlaid bin by bin (slide 27; draw them with
/// `viz::histogram_svg`). Labels: `before`, `after`.
pub fn histogram_before_after(
    original: &Tensor,
    quantized: &Tensor,
    bins: usize,
) -> Result<(Histogram, Histogram)> {
    let (a, b) = (host_f32(original)?, host_f32(quantized)?);
    let (lo, hi) = a
        .iter()
        .chain(&b)
        .filter(|v| v.is_finite())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return Err(Error::Input(format!(
            "histogram before/after: no finite values among {} + {} to take a range from",
            a.len(),
            b.len()
        )));
    }
    let range = (lo as f64, hi as f64);
    Ok((
        Histogram::of_values_in("before", &a, bins, range)?,
        Histogram::of_values_in("after", &b, bins, range)?,
    ))
}

/// `w / absmax(block)` for blocks of `blocksize` consecutive elements of the flattened
/// (row-major) tensor, the last block possibly shorter — bitsandbytes' blockwise layout
/// (`quantize_4bit(blocksize=64)`). An all-zero block stays 0.
///
/// Applied to an NF4-dequantized weight this recovers the code values: every element becomes
/// one of the 16 NF4 levels (to float rounding), and its histogram has 16 spikes.
pub fn block_normalized_values(w: &Tensor, blocksize: usize) -> Result<Vec<f32>> {
    if blocksize == 0 {
        return Err(Error::config(
            "blocksize",
            "should be a positive integer but is 0",
        ));
    }
    if !w.dtype().is_float() {
        return Err(Error::Input(format!(
            "block_normalized_values needs a float tensor, got {:?}",
            w.dtype()
        )));
    }
    let mut v = host_f32(w)?;
    for block in v.chunks_mut(blocksize) {
        let absmax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
        if absmax > 0.0 {
            block.iter_mut().for_each(|x| *x /= absmax);
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;
    use candle_core::Device;

    #[test]
    fn weight_error_matches_formulas() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, -2.0], [3.0, 0.0]], &dev).unwrap();
        let q = Tensor::new(&[[1f32, -1.5], [3.25, 0.0]], &dev).unwrap();
        let e = weight_error(&w, &q).unwrap();
        // Σw² = 14, Σe² = 0.25 + 0.0625 = 0.3125.
        assert_eq!(e.numel, 4);
        assert_eq!(e.mse, 0.3125 / 4.0);
        assert_eq!(e.max_abs, 0.5);
        assert!((e.snr_db - 10.0 * (14.0f64 / 0.3125).log10()).abs() < 1e-12);
        assert_eq!(weight_error(&w, &w).unwrap().snr_db, f64::INFINITY);
        let z = w.zeros_like().unwrap();
        assert_eq!(weight_error(&z, &w).unwrap().snr_db, f64::NEG_INFINITY);
        // bf16 inputs are read exactly.
        let e16 = weight_error(&w.to_dtype(DType::BF16).unwrap(), &q).unwrap();
        assert_eq!(e16.mse, e.mse);
        let pooled = WeightError::pooled([&e, &e]);
        assert_eq!(
            (pooled.numel, pooled.mse, pooled.snr_db),
            (8, e.mse, e.snr_db)
        );
        let e = weight_error(&w, &q.t().unwrap().narrow(0, 0, 1).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 2]") && e.contains("[1, 2]"), "{e}");
        let nan = Tensor::new(&[[1f32, f32::NAN], [0.0, 0.0]], &dev).unwrap();
        let e = weight_error(&w, &nan).unwrap_err().to_string();
        assert!(e.contains("quantized") && e.contains("index 1"), "{e}");
    }

    #[test]
    fn footprint_of_a_dense_model_is_its_tensors() {
        let cfg = Config::preset("tiny").unwrap();
        for (dtype, size) in [(DType::F32, 4), (DType::BF16, 2)] {
            let m = Llama::init_random(&cfg, dtype, &Device::Cpu, 0).unwrap();
            let f = memory_footprint(&m);
            assert_eq!(f.total_parameters, cfg.num_parameters());
            assert_eq!(f.total_bytes, size * cfg.num_parameters());
            assert_eq!(f.fp16_estimate_bytes, 2 * cfg.num_parameters());
            assert_eq!(f.ratio_to_fp16(), size as f64 / 2.0);
            // embeddings + 2 norms per layer + 7 projections per layer + lm_head + final norm.
            assert_eq!(f.rows.len(), 1 + 2 * 2 + 7 * 2 + 1 + 1);
            let head = f.rows.iter().find(|r| r.name == "lm_head").unwrap();
            assert_eq!(
                (head.parameters, head.bytes),
                (0, 0),
                "tied lm_head counted once"
            );
            assert_eq!(f.budget("tiny").total(), f.total_bytes as u64);
            assert!(f.to_text().contains("fp16 estimate"));
        }
    }

    #[test]
    fn block_normalization_divides_by_each_blocks_absmax() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[2f32, -4.0, 1.0], [0.0, 0.0, 0.5]], &dev).unwrap();
        // Flat blocks of 2: [2, -4] [1, 0] [0, 0.5].
        assert_eq!(
            block_normalized_values(&w, 2).unwrap(),
            vec![0.5, -1.0, 1.0, 0.0, 0.0, 1.0]
        );
        // A last partial block, and an all-zero block.
        let v = Tensor::new(&[0f32, 0.0, 3.0, -6.0, 1.5], &dev).unwrap();
        assert_eq!(
            block_normalized_values(&v, 2).unwrap(),
            vec![0.0, 0.0, 0.5, -1.0, 1.0]
        );
        assert!(block_normalized_values(&v, 0)
            .unwrap_err()
            .to_string()
            .contains("blocksize"));
    }
}
