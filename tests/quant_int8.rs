//! LLM.int8 (Dettmers et al. 2022) against bitsandbytes 0.50.2 on CPU.
//!
//! `tests/fixtures/quant/llm_int8.safetensors` and `cases.json` are made by
//! `scripts/ref/make_quant_fixtures.py` (see `tests/fixtures/quant/README.md`):
//! `F.int8_vectorwise_quant` cases and a `Linear8bitLt(32, 16, threshold=6.0,
//! has_fp16_weights=False)` eval-mode forward (`lin8.*`).

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use tunelab::quant::int8::{BNB_CPU_MM_DEQUANT_CONST, LLM_INT8_THRESHOLD, MM_DEQUANT_CONST};
use tunelab::quant::{int8_vectorwise_quant, quantize_int8, QuantizedWeight};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant");

/// A fixture tensor as a candle tensor; I8 comes back as U8 holding the same bytes.
fn load(st: &SafeTensors, name: &str) -> Tensor {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name}"));
    let dtype = match t.dtype() {
        Dtype::F16 => DType::F16,
        Dtype::F32 => DType::F32,
        Dtype::I8 | Dtype::U8 => DType::U8,
        Dtype::I64 => DType::I64,
        d => panic!("{name}: unexpected dtype {d:?}"),
    };
    Tensor::from_raw_buffer(t.data(), dtype, t.shape(), &Device::Cpu).unwrap()
}

fn f32_bits(t: &Tensor) -> Vec<u32> {
    let v = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
    v.to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn cols(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap()
        .iter()
        .map(|&c| c as usize)
        .collect()
}

fn fixture() -> Vec<u8> {
    std::fs::read(format!("{DIR}/llm_int8.safetensors")).unwrap()
}

#[test]
fn vectorwise_quant_matches_bitsandbytes_bit_for_bit() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/cases.json")).unwrap())
            .unwrap();
    let mut n = 0;
    for case in meta["cases"].as_array().unwrap() {
        if case["kind"] != "int8_vectorwise_quant" {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let threshold = case["threshold"].as_f64().unwrap() as f32;
        let x = load(&st, &format!("{name}.input"));
        let r = int8_vectorwise_quant(&x, threshold).unwrap();
        let q = load(&st, &format!("{name}.q"));
        assert_eq!(
            r.q.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            q.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            "{name}: q"
        );
        let rs = load(&st, &format!("{name}.row_stats"));
        assert_eq!(f32_bits(&r.row_stats), f32_bits(&rs), "{name}: row_stats");
        let want = (threshold > 0.0).then(|| cols(&load(&st, &format!("{name}.outlier_cols"))));
        assert_eq!(r.outlier_cols, want, "{name}: outlier_cols");
        println!(
            "{name:<24} {:?} threshold {threshold}: q, row_stats, outlier_cols {want:?} ok",
            x.dims()
        );
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn weight_codes_match_bitsandbytes_and_dequant_is_close() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let w = load(&st, "lin8.weight"); // f32 [16, 32]
    let q = quantize_int8(&w, LLM_INT8_THRESHOLD).unwrap();
    assert_eq!(
        q.cb().to_vec2::<u8>().unwrap(),
        load(&st, "lin8.CB").to_vec2::<u8>().unwrap()
    );
    assert_eq!(f32_bits(q.scb()), f32_bits(&load(&st, "lin8.SCB")));
    assert_eq!(q.storage_bytes(), 16 * 32 + 4 * 16);
    // |w − ŵ| <= SCB/(2·127) (half a step of the row) + |w|·2⁻¹¹ (the weight is rounded to fp16
    // first) + a few f32 roundings of ŵ = (CB·SCB)·(1/127) (3·2⁻²⁴ relative).
    let dq = q.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let scb = q.scb().to_vec1::<f32>().unwrap();
    for (r, (wr, dr)) in w.to_vec2::<f32>().unwrap().iter().zip(&dq).enumerate() {
        for (&a, &b) in wr.iter().zip(dr) {
            let bound = scb[r] as f64 / 254.0
                + (a.abs() as f64) * 2f64.powi(-11)
                + (b.abs() as f64) * 3.0 * 2f64.powi(-24);
            assert!(((a - b) as f64).abs() <= bound, "row {r}: {a} vs {b}");
        }
    }
}

#[test]
fn linear8bitlt_forward_matches_bitsandbytes_within_derived_tolerance() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let x = load(&st, "lin8.x"); // f16 [4, 32], with outliers 8.0 at (1, 5) and −6.5 at (3, 20)
    let want = load(&st, "lin8.out").to_dtype(DType::F32).unwrap(); // f16 [4, 16]
    let q = quantize_int8(&load(&st, "lin8.weight"), 6.0).unwrap();
    let a = int8_vectorwise_quant(&x, 6.0).unwrap();
    assert_eq!(a.outlier_cols, Some(cols(&load(&st, "lin8.outlier_cols"))));
    assert_eq!(a.outlier_cols, Some(vec![5, 20]));

    let y = q.forward(&x.to_dtype(DType::F32).unwrap()).unwrap(); // f32 all the way
    let y16 = q.forward(&x).unwrap(); // f16 in, f16 out
    assert_eq!(y16.dtype(), DType::F16);

    // The pieces, to size the tolerance: I = int8 part, S = Σ over outlier columns |x|·|ŵ|.
    let xf = x.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let dq = q.dequantize(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let to_f32 = |t: &Tensor| {
        let t = t.to_dtype(DType::F32).unwrap();
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let ca: Vec<f32> = to_f32(&a.q).iter().map(|&b| b as u8 as i8 as f32).collect();
    let cb: Vec<f32> = to_f32(q.cb())
        .iter()
        .map(|&b| b as u8 as i8 as f32)
        .collect();
    let (rs, scb) = (to_f32(&a.row_stats), to_f32(q.scb()));
    let (y, y16, want) = (
        y.to_vec2::<f32>().unwrap(),
        to_f32(&y16),
        want.to_vec2::<f32>().unwrap(),
    );
    // bitsandbytes' output = f16(f16(I·(1 + δ)) + Σ x·f16(ŵ)); ours = I + Σ x·ŵ in f32. So
    // |ours − bnb| <= δ·|I|                   the constant: δ = 6.200124e-05 / f32(1/127²) − 1
    //              + u·|I|                    rounding the int8 part to f16, u = 2⁻¹¹
    //              + u·S                      rounding the dequantized outlier weights to f16
    //              + u·|bnb|                  rounding the sum to f16
    //              + 2⁻²⁰·(|I| + S)           f32 summation order (32 terms, far below)
    let delta = (BNB_CPU_MM_DEQUANT_CONST as f64) / (MM_DEQUANT_CONST as f64) - 1.0;
    assert!((delta - 1.8e-5).abs() < 1e-6, "δ = {delta}");
    let u = 2f64.powi(-11);
    let (mut worst, mut worst_err) = (0f64, 0f64);
    for i in 0..4 {
        for j in 0..16 {
            let c: f32 = (0..32).map(|k| ca[i * 32 + k] * cb[j * 32 + k]).sum();
            let int_part = (c * rs[i] * scb[j] / 16129.0).abs() as f64;
            let s: f64 = [5, 20]
                .iter()
                .map(|&k| (xf[i][k] * dq[j][k]).abs() as f64)
                .sum();
            let bound = (delta + u) * int_part
                + u * s
                + u * want[i][j].abs() as f64
                + 2f64.powi(-20) * (int_part + s);
            let err = (y[i][j] - want[i][j]).abs() as f64;
            assert!(
                err <= bound,
                "y[{i},{j}] = {} vs bnb {}: {err} > {bound}",
                y[i][j],
                want[i][j]
            );
            // the f16 output differs from bnb's by at most one more f16 rounding
            let err16 = (y16[i * 16 + j] - want[i][j]).abs() as f64;
            assert!(
                err16 <= bound + u * want[i][j].abs() as f64,
                "f16 y[{i},{j}]"
            );
            worst = worst.max(err / bound);
            worst_err = worst_err.max(err);
        }
    }
    println!(
        "Linear8bitLt: max |ours − bnb| = {worst_err:.3e}, at most {:.0}% of the derived bound",
        100.0 * worst
    );

    // And the accounting is complete: redoing bitsandbytes' own steps — the typo constant, the
    // int8 part and the outlier weights rounded to f16, one f16 rounding of the f32 sum
    // (`output.addmm(subA, subB)` in f16) — reproduces its output bit for bit.
    let f16_round = |v: Vec<f32>| {
        let n = v.len();
        let t = Tensor::from_vec(v, n, &Device::Cpu).unwrap();
        to_f32(&t.to_dtype(DType::F16).unwrap())
    };
    let mut int_part = vec![];
    let mut sub_b = vec![];
    for i in 0..4 {
        for j in 0..16 {
            let c: f32 = (0..32).map(|k| ca[i * 32 + k] * cb[j * 32 + k]).sum();
            int_part.push(c * (rs[i] * scb[j]) * BNB_CPU_MM_DEQUANT_CONST);
        }
    }
    for j in 0..16 {
        for k in [5, 20] {
            sub_b.push(cb[j * 32 + k] * scb[j] * (1.0f32 / 127.0));
        }
    }
    let (int_part, sub_b) = (f16_round(int_part), f16_round(sub_b));
    let emulated = f16_round(
        (0..64)
            .map(|e| {
                let (i, j) = (e / 16, e % 16);
                int_part[e] + (xf[i][5] * sub_b[2 * j] + xf[i][20] * sub_b[2 * j + 1])
            })
            .collect(),
    );
    let flat_want: Vec<f32> = want.concat();
    assert_eq!(emulated, flat_want, "bitsandbytes emulation");
}

/// N(0, 1) from a fixed-seed generator (splitmix64 + Box-Muller; the values do not matter).
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 1.0) * 2f64.powi(-53)
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next(), next());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
        })
        .collect()
}

#[test]
fn outlier_columns_in_floating_point_cut_the_error() {
    // The paper's point (its Fig. 1/§3.2): a few activation features with large magnitudes set
    // every row's absmax, so with plain vector-wise int8 all other features are squeezed onto a
    // handful of levels. Handling |x| >= 6 columns in floating point removes that.
    let (rows, k, out) = (16, 256, 64);
    let mut x = normal(rows * k, 1);
    for r in 0..rows {
        x[r * k + 7] *= 20.0; // one outlier feature, |x| up to ~40
    }
    let w: Vec<f32> = normal(out * k, 2).iter().map(|v| v * 0.05).collect();
    let xt = Tensor::from_vec(x.clone(), (rows, k), &Device::Cpu).unwrap();
    let wt = Tensor::from_vec(w.clone(), (out, k), &Device::Cpu).unwrap();
    // fp32 reference, accumulated in f64
    let reference: Vec<f64> = (0..rows * out)
        .map(|i| {
            let (r, o) = (i / out, i % out);
            (0..k)
                .map(|c| x[r * k + c] as f64 * w[o * k + c] as f64)
                .sum()
        })
        .collect();
    let rel = |y: &Tensor, reference: &[f64]| {
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let num: f64 = y
            .iter()
            .zip(reference)
            .map(|(&a, &b)| (a as f64 - b).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|b| b * b).sum();
        (num / den).sqrt()
    };
    // X·Ŵᵀ with the int8-dequantized weight: what the decomposition itself approximates
    let wq = quantize_int8(&wt, 0.0)
        .unwrap()
        .dequantize(DType::F32)
        .unwrap();
    let y_w8 = xt.matmul(&wq.t().unwrap()).unwrap();
    let w8: Vec<f64> = y_w8
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    let weight_only = rel(&y_w8, &reference);
    let forward = |t: f32| quantize_int8(&wt, t).unwrap().forward(&xt).unwrap();
    let (y6, y0) = (forward(6.0), forward(0.0));
    let (e6, e0) = (rel(&y6, &reference), rel(&y0, &reference));
    let (a6, a0) = (rel(&y6, &w8), rel(&y0, &w8));
    println!("LLM.int8, X [16, 256] with one feature ×20, relative error ‖y − ref‖/‖ref‖:");
    println!("  vs the fp32 product X·Wᵀ:   threshold 6.0: {e6:.5}   threshold 0: {e0:.5}   (int8 weight alone: {weight_only:.5})");
    println!("  vs X·Ŵᵀ (activations only): threshold 6.0: {a6:.5}   threshold 0: {a0:.5}");
    // Without the decomposition the ×20 feature sets every row's absmax (~16 instead of ~2.5),
    // a 6× coarser activation grid; with it, int8 inference is close to the int8-weight floor.
    assert!(
        a0 > 5.0 * a6,
        "activation error: threshold 6: {a6}, threshold 0: {a0}"
    );
    assert!(
        e0 > 3.0 * e6,
        "total error: threshold 6: {e6}, threshold 0: {e0}"
    );
    assert!(e6 < 1.3 * weight_only && e0 > 3.0 * weight_only);
}
