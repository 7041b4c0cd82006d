//! The chapter's reports (quant::report) on the `tiny` preset: before/after tables and
//! footprints, the 16 levels of a block-normalized 4-bit weight, and slide 15's first-order
//! sensitivity checked against an independent second-order computation.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, D};
use tunelab::quant::codes::NF4_CODE;
use tunelab::quant::report::{
    block_normalized_values, histogram_before_after, memory_footprint, quant_report,
    quantization_sensitivity, sensitivity, weight_error,
};
use tunelab::quant::{GgmlWeight, QLinear, QuantizedWeight};
use tunelab::viz::Histogram;
use tunelab::{Config, Linear, Llama};

mod common;
use common::tiny;

fn normal(shape: &[usize], std: f32, seed: u64) -> Tensor {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A fixed batch `(2, 32)` of token ids.
fn batch() -> Tensor {
    let ids: Vec<u32> = (0..64u32).map(|i| (i * 97 + 13) % 256).collect();
    Tensor::from_vec(ids, (2, 32), &Device::Cpu).unwrap()
}

/// Blockwise 4-bit quantization onto the NF4 grid, done here by hand: blocks of 64 consecutive
/// values, each scaled by its absmax and rounded to the nearest level, then multiplied back.
fn nf4_by_hand(w: &Tensor, blocksize: usize) -> Tensor {
    let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = Vec::with_capacity(v.len());
    for block in v.chunks(blocksize) {
        let absmax = block.iter().fold(0f32, |a, &x| a.max(x.abs()));
        for &x in block {
            let n = x / absmax;
            let level = NF4_CODE
                .iter()
                .copied()
                .min_by(|a, b| (a - n).abs().total_cmp(&(b - n).abs()))
                .unwrap();
            out.push(level * absmax);
        }
    }
    Tensor::from_vec(out, w.dims(), w.device()).unwrap()
}

/// Slide 27: the histogram of an NF4-dequantized weight divided by its blocks' absmax is 16
/// spikes, exactly the NF4 levels; the original, normalized the same way, is a bell curve.
#[test]
fn block_normalized_nf4_weight_shows_the_16_levels() {
    let w = normal(&[64, 256], 0.02, 11);
    let w_hat = nf4_by_hand(&w, 64);
    let v = block_normalized_values(&w_hat, 64).unwrap();
    assert_eq!(v.len(), 64 * 256);
    let mut seen = [0usize; 16];
    for &x in &v {
        let (i, d) = NF4_CODE
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, (l - x).abs()))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        // (l·a)/a is l up to one rounding of the product and one of the quotient.
        assert!(
            d <= 2.0 * f32::EPSILON,
            "{x} is {d} away from the nearest level"
        );
        seen[i] += 1;
    }
    assert!(seen.iter().all(|&c| c > 0), "every level is used: {seen:?}");
    // 128 bins over [−1, 1] are finer than the levels' smallest gap (0.0796): 16 spikes.
    let h = Histogram::of_values_in("nf4 / absmax", &v, 128, (-1.0, 1.0)).unwrap();
    assert_eq!(h.occupied_bins(), 16);
    assert_eq!(h.total(), 64 * 256);
    let h0 = Histogram::of_values_in(
        "fp32 / absmax",
        &block_normalized_values(&w, 64).unwrap(),
        128,
        (-1.0, 1.0),
    )
    .unwrap();
    println!(
        "occupied bins of 128: original {}, NF4 {}",
        h0.occupied_bins(),
        h.occupied_bins()
    );
    assert!(h0.occupied_bins() > 100);

    // Before/after over one shared range.
    let (before, after) = histogram_before_after(&w, &w_hat, 50).unwrap();
    let (lo, hi) = (
        w.min_keepdim(1)
            .unwrap()
            .min(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0],
        w.max_keepdim(1)
            .unwrap()
            .max(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0],
    );
    // NF4 keeps each block's absmax exactly, so the range is the original's.
    assert_eq!((before.min, before.max), (lo as f64, hi as f64));
    assert_eq!((after.min, after.max), (before.min, before.max));
    assert_eq!((before.total(), after.total()), (64 * 256, 64 * 256));
    assert_eq!(
        (before.label.as_str(), after.label.as_str()),
        ("before", "after")
    );
    let e = weight_error(&w, &w_hat).unwrap();
    println!(
        "NF4 by hand, blocks of 64: SNR {:.2} dB, max |err| {:.2e}",
        e.snr_db, e.max_abs
    );
    assert!(e.snr_db > 15.0 && e.snr_db < 25.0, "{}", e.snr_db);
}

/// Layer 0's attention in q8_0 and layer 1's MLP in q4_0 (GGML), the rest untouched.
fn partly_quantized(seed: u64) -> Llama {
    let mut m = tiny(seed);
    for p in m.linear_paths() {
        let dtype = if p.starts_with("model.layers.0.self_attn") {
            GgmlDType::Q8_0
        } else if p.starts_with("model.layers.1.mlp") {
            GgmlDType::Q4_0
        } else {
            continue;
        };
        let w = m.linear(&p).unwrap().dense_weight().unwrap();
        let q = GgmlWeight::quantize(&p, &w, dtype).unwrap();
        m.replace_linear(&p, Linear::new(QLinear::new(q, None, DType::F32).unwrap()))
            .unwrap();
    }
    m
}

#[test]
fn quant_report_rows_totals_and_footprints() {
    let before = tiny(3);
    let after = partly_quantized(3);
    let r = quant_report(&before, &after).unwrap();
    assert_eq!(r.layers.len(), 15);
    for row in &r.layers {
        let (wb, wa) = (
            before.linear(&row.path).unwrap().dense_weight().unwrap(),
            after.linear(&row.path).unwrap().dense_weight().unwrap(),
        );
        assert_eq!(row.error, weight_error(&wb, &wa).unwrap(), "{}", row.path);
        let numel = wb.elem_count();
        let (kind, bytes) = if row.path.starts_with("model.layers.0.self_attn") {
            ("q8_0", numel / 32 * 34)
        } else if row.path.starts_with("model.layers.1.mlp") {
            ("q4_0", numel / 32 * 18)
        } else if row.path == "lm_head" {
            ("dense", 0) // tied: its bytes are the embedding's
        } else {
            ("dense", 4 * numel)
        };
        assert_eq!(row.kind_before, "dense");
        assert_eq!(
            (row.kind_after.as_str(), row.bytes_after),
            (kind, bytes),
            "{}",
            row.path
        );
        if kind == "dense" {
            assert_eq!(row.error.mse, 0.0);
            assert_eq!(row.error.snr_db, f64::INFINITY);
        } else {
            // Gaussian weights: 8.5-bit q8_0 ≈ 40 dB, 4.5-bit q4_0 ≈ 20 dB.
            let snr = row.error.snr_db;
            let ok = if kind == "q8_0" {
                (35.0..50.0).contains(&snr)
            } else {
                (15.0..25.0).contains(&snr)
            };
            assert!(ok, "{}: {kind} SNR {snr} dB", row.path);
        }
    }
    let saved = r.linear_bytes_before - r.linear_bytes_after;
    assert_eq!(r.after.total_bytes, r.before.total_bytes - saved);
    assert_eq!(r.before.total_bytes, memory_footprint(&before).total_bytes);
    // Parameters are logical: unchanged by quantization, so the fp16 estimate is too.
    assert_eq!(r.after.total_parameters, before.num_parameters());
    assert_eq!(r.after.fp16_estimate_bytes, 2 * before.num_parameters());
    let pooled_mse: f64 = r
        .layers
        .iter()
        .map(|l| l.error.mse * l.error.numel as f64)
        .sum::<f64>()
        / r.layers.iter().map(|l| l.error.numel as f64).sum::<f64>();
    assert!((r.total_error.mse - pooled_mse).abs() <= 1e-12 * pooled_mse);
    let text = r.to_text();
    println!("{text}");
    assert!(text.contains("model.layers.1.mlp.down_proj") && text.contains("q4_0"));
    println!("{}", r.after.to_text());
    // The rows serialize (an infinite SNR becomes null).
    let json = serde_json::to_value(&r).unwrap();
    assert!(
        json["layers"][4]["error"]["snr_db"].is_null(),
        "{}",
        json["layers"][4]
    );
    assert_eq!(r.layer_errors()[0].kind, "q8_0");

    // Mismatched models are an error naming the layer.
    let mut small = Config::preset("tiny").unwrap();
    small.num_hidden_layers = 1;
    let other = Llama::init_random(&small, DType::F32, &Device::Cpu, 0).unwrap();
    let e = quant_report(&before, &other).unwrap_err().to_string();
    assert!(e.contains("model.layers.1.self_attn.q_proj"), "{e}");
}

/// `½ εᵀHε` for `lm_head` at `W`, computed independently of autograd. With `h_t` the final
/// hidden states (which do not depend on lm_head), the logits `z_t = W·h_t` are linear in `W`,
/// `Δz_t = ε·h_t`, and the Hessian of `−log softmax(z)[y]` in `z` is `diag(p) − ppᵀ`:
/// `½ εᵀHε = (1/N) Σ_t ½ (Σ_v p_v Δz_v² − (Σ_v p_v Δz_v)²)`.
fn lm_head_second_order(m: &Llama, ids: &Tensor, eps: &Tensor) -> f64 {
    let (b, t) = ids.dims2().unwrap();
    let h = m
        .forward_hidden(ids, &Default::default(), None)
        .unwrap()
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((b * (t - 1), ()))
        .unwrap(); // (N, C)
    let w = m.linear("lm_head").unwrap().dense_weight().unwrap();
    let p = candle_nn::ops::softmax(&h.matmul(&w.t().unwrap()).unwrap(), D::Minus1).unwrap();
    let dz = h.matmul(&eps.t().unwrap()).unwrap(); // (N, V)
    let p = p.to_dtype(DType::F64).unwrap();
    let dz = dz.to_dtype(DType::F64).unwrap();
    let e2 = (&p * dz.sqr().unwrap()).unwrap().sum(1).unwrap();
    let e1 = (&p * &dz).unwrap().sum(1).unwrap();
    let per_token = ((e2 - e1.sqr().unwrap()).unwrap() * 0.5).unwrap();
    per_token.mean_all().unwrap().to_scalar::<f64>().unwrap()
}

/// Slide 15: `L(W+ε) − L(W) ≈ Σ ∂L/∂W ⊙ ε` for a small ε, not for a large one.
///
/// On `lm_head` the second-order term has the closed form of [`lm_head_second_order`], so the
/// test needs no hand-picked bound: `actual = first_order + second_order + O(‖ε‖³)`, with the
/// cubic remainder much smaller than the quadratic term at these sizes (asserted below: 2 %
/// of it for ε·10⁻³, 10 % at 10⁻²). For ε = 10⁻⁴·N(0,1) the quadratic term is < 2 % of the
/// linear one, so the ratio `actual / first_order` is within 2 % of 1; at 10⁻² it is
/// comparable (the ratio doubles) and at 10⁻¹ it dominates. The loss is convex in `lm_head`
/// (cross-entropy is convex in the logits, which are linear in it), so the remainder is never
/// negative.
#[test]
fn sensitivity_first_order_holds_for_small_delta_only() {
    let mut m = tiny(0);
    let ids = batch();
    let logits_before = m.forward(&ids, None).unwrap();
    let d = normal(&[256, 64], 1.0, 1);
    let mut rows = vec![];
    for s in [1e-4, 1e-3, 1e-2, 1e-1] {
        let eps = (&d * s).unwrap();
        let r = sensitivity(&mut m, &ids, "lm_head", &eps).unwrap();
        let second = lm_head_second_order(&m, &ids, &eps);
        println!(
            "lm_head, ε = {s:e}·N(0,1): L = {:.6}, first-order {:+.4e}, actual {:+.4e}, \
             ratio {:.4}, ½εᵀHε {:.4e}, actual − first − second {:+.2e}",
            r.loss,
            r.first_order,
            r.actual,
            r.ratio(),
            second,
            r.remainder() - second
        );
        assert!(
            r.remainder() >= 0.0,
            "convex in lm_head: remainder {}",
            r.remainder()
        );
        rows.push((s, r, second));
    }
    let (_, small, _) = &rows[0];
    assert!(
        (small.ratio() - 1.0).abs() < 0.02,
        "ratio {}",
        small.ratio()
    );
    for (s, r, second) in &rows[1..3] {
        let cubic = (r.remainder() - second).abs();
        let tol = if *s < 5e-3 { 0.02 } else { 0.10 };
        assert!(
            cubic < tol * second,
            "ε {s}: remainder {} vs ½εᵀHε {second}",
            r.remainder()
        );
    }
    let (_, mid, _) = &rows[2];
    let (_, large, _) = &rows[3];
    assert!(
        mid.ratio() > 1.5 && large.ratio() > 5.0,
        "{} {}",
        mid.ratio(),
        large.ratio()
    );
    // The model is exactly as it was (lm_head still the embedding's storage, same logits).
    let logits_after = m.forward(&ids, None).unwrap();
    assert_eq!(
        logits_before
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        logits_after
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let head = memory_footprint(&m)
        .rows
        .into_iter()
        .find(|r| r.name == "lm_head")
        .unwrap();
    assert_eq!(head.bytes, 0, "lm_head shares the embedding again");
}

/// The sensitivity of one inner projection to its own GGML quantization error, and the
/// model's state after errors.
#[test]
fn quantization_sensitivity_and_restoring_on_error() {
    let mut m = tiny(0);
    let ids = batch();
    let path = "model.layers.0.mlp.up_proj";
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let r = quantization_sensitivity(&mut m, &ids, path, |w| {
            Ok(GgmlWeight::quantize(path, w, dtype)?.dequantize(w.dtype())?)
        })
        .unwrap();
        println!(
            "{path} {dtype:?}: ‖ε‖ {:.3e}, first-order {:+.3e}, actual {:+.3e}",
            r.delta_norm, r.first_order, r.actual
        );
        assert!(r.delta_norm > 0.0 && r.grad_norm > 0.0);
        assert!((r.actual - r.first_order).abs() < 0.2 * r.first_order.abs().max(1e-6));
    }
    let logits = m
        .forward(&ids, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    // Wrong delta shape, unknown path, and a failure inside (a token out of the vocabulary):
    // errors, and the model is unchanged.
    let e = sensitivity(
        &mut m,
        &ids,
        path,
        &Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(path) && e.contains("[128, 64]"), "{e}");
    assert!(sensitivity(
        &mut m,
        &ids,
        "model.layers.9.mlp.up_proj",
        &Tensor::zeros((128, 64), DType::F32, &Device::Cpu).unwrap()
    )
    .is_err());
    let bad = Tensor::new(&[[1u32, 2, 999]], &Device::Cpu).unwrap();
    let eps = Tensor::zeros((128, 64), DType::F32, &Device::Cpu).unwrap();
    let e = sensitivity(&mut m, &bad, path, &eps)
        .unwrap_err()
        .to_string();
    assert!(e.contains("999"), "{e}");
    let e = sensitivity(&mut m, &bad.narrow(1, 0, 1).unwrap(), path, &eps)
        .unwrap_err()
        .to_string();
    assert!(e.contains("seq_len >= 2"), "{e}");
    assert_eq!(m.linear(path).unwrap().kind(), "dense");
    assert_eq!(
        m.forward(&ids, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        logits
    );
}
