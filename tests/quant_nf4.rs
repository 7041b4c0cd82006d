//! NF4/FP4 and double quantization against bitsandbytes 0.50.2 (CPU), bit for bit.
//!
//! Fixtures: tests/fixtures/quant/*.safetensors and cases.json, made by
//! `scripts/ref/make_quant_fixtures.py` with bitsandbytes itself.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use tunelab::quant::blockwise8::{torch_mean_f32, DynamicLut};
use tunelab::quant::codes::{dynamic_map_signed, fp4_code, NF4_CODE};
use tunelab::quant::nf4::{dequantize_4bit, quantize_4bit, Absmax};
use tunelab::quant::{quantize_4bit_weight, FourBitConfig, FourBitType, QLinear, QuantizedWeight};
use tunelab::LinearLayer;

mod common;
use common::max_rel_diff;

fn fixtures(file: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(file);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

fn cases() -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant/cases.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn u8s(t: &Tensor) -> Vec<u8> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The first index where two sequences differ, for short failure messages.
fn first_diff<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T]) -> Option<(usize, String)> {
    if a.len() != b.len() {
        return Some((usize::MAX, format!("lengths {} vs {}", a.len(), b.len())));
    }
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| (i, format!("{:?} vs {:?}", a[i], b[i])))
}

macro_rules! assert_same {
    ($a:expr, $b:expr, $($what:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if let Some((i, d)) = first_diff(a, b) {
            panic!("{}: first difference at {i}: {d}", format!($($what)+));
        }
    }};
}

#[test]
fn code_tables_are_bitsandbytes() {
    let c = fixtures("codes.safetensors");
    assert_same!(bits(&f32s(&c["nf4_code"])), bits(&NF4_CODE), "nf4 code");
    assert_same!(bits(&f32s(&c["fp4_code"])), bits(&fp4_code()), "fp4 code");
    assert_same!(
        bits(&f32s(&c["dynamic_map_signed"])),
        bits(&dynamic_map_signed()),
        "dynamic map"
    );
}

#[test]
fn four_bit_cases_are_bit_identical() {
    let fx = fixtures("fourbit.safetensors");
    let mut checked = 0;
    for case in cases() {
        let Some(qt) = case["quant_type"].as_str() else {
            continue;
        };
        let name = case["name"].as_str().unwrap();
        let quant_type = if qt == "nf4" {
            FourBitType::Nf4
        } else {
            FourBitType::Fp4
        };
        let cfg = FourBitConfig {
            quant_type,
            blocksize: case["blocksize"].as_u64().unwrap() as usize,
            double_quant: case["double_quant"].as_bool().unwrap(),
        };
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let input = &fx[&format!("{name}.input")];
        let (packed, state) = quantize_4bit(&f32s(input), &shape, &cfg).unwrap();
        assert_same!(
            packed,
            u8s(&fx[&format!("{name}.packed")]),
            "{name}: packed bytes"
        );
        match &state.absmax {
            Absmax::F32(a) => {
                assert_same!(
                    bits(a),
                    bits(&f32s(&fx[&format!("{name}.absmax")])),
                    "{name}: absmax"
                )
            }
            Absmax::Nested { q, absmax2, offset } => {
                assert_same!(
                    *q,
                    u8s(&fx[&format!("{name}.absmax")]),
                    "{name}: absmax codes"
                );
                assert_same!(
                    bits(absmax2),
                    bits(&f32s(&fx[&format!("{name}.absmax2")])),
                    "{name}: absmax2"
                );
                assert_eq!(
                    offset.to_bits(),
                    f32s(&fx[&format!("{name}.offset")])[0].to_bits(),
                    "{name}: offset"
                );
                assert_same!(
                    bits(&state.absmax_f32()),
                    bits(&f32s(&fx[&format!("{name}.absmax_restored")])),
                    "{name}: restored absmax"
                );
            }
        }
        // Dequantize in f32, then to the input's dtype as bitsandbytes' kernel writes it.
        let dq = dequantize_4bit(&packed, &state).unwrap();
        let dq = Tensor::from_vec(dq, shape.as_slice(), &Device::Cpu)
            .unwrap()
            .to_dtype(input.dtype())
            .unwrap();
        let (ours, theirs) = (f32s(&dq), f32s(&fx[&format!("{name}.dequant")]));
        if quant_type == FourBitType::Nf4 {
            assert_same!(bits(&ours), bits(&theirs), "{name}: dequantized");
        } else {
            // FP4 code 8 is +0.0 or -0.0 depending on bitsandbytes' path: compare values.
            assert_same!(ours, theirs, "{name}: dequantized");
        }
        checked += 1;
    }
    assert_eq!(checked, 33, "all 4-bit fixture cases");
}

#[test]
fn eight_bit_dynamic_blockwise_is_bit_identical() {
    let fx = fixtures("dynamic8.safetensors");
    let lut = DynamicLut::signed_dynamic();
    for case in cases() {
        if case["kind"].as_str() != Some("quantize_blockwise") {
            continue;
        }
        let name = case["name"].as_str().unwrap();
        let bs = case["blocksize"].as_u64().unwrap() as usize;
        let (q, absmax) = lut.quantize(&f32s(&fx[&format!("{name}.input")]), bs);
        assert_same!(q, u8s(&fx[&format!("{name}.q")]), "{name}: codes");
        assert_same!(
            bits(&absmax),
            bits(&f32s(&fx[&format!("{name}.absmax")])),
            "{name}: absmax"
        );
        let dq = lut.dequantize(&q, &absmax, bs);
        assert_same!(
            dq,
            f32s(&fx[&format!("{name}.dequant")]),
            "{name}: dequantized"
        );
    }
}

#[test]
fn torch_mean_matches_on_many_lengths() {
    // The offsets of the double-quant fixtures are torch's float32 means; the cases above check
    // them bit for bit. Here: a mean over 13,824 blocks, SmolLM2's largest projection at 64.
    let v: Vec<f32> = (0..13_824)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 + 0.01)
        .collect();
    let m = torch_mean_f32(&v);
    let exact = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    assert!((m as f64 - exact).abs() < 1e-6, "{m} vs {exact}");
}

#[test]
fn nf4_rmse_on_normal_data_equals_bitsandbytes() {
    let fx = fixtures("rmse.safetensors");
    let w = &fx["nf4_bs64_64x1024.input"];
    let values = f32s(w);
    let rmse = |cfg: FourBitConfig| {
        let (packed, state) = quantize_4bit(&values, &[64, 1024], &cfg).unwrap();
        let dq = dequantize_4bit(&packed, &state).unwrap();
        let se: f64 = dq
            .iter()
            .zip(&values)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        (se / values.len() as f64).sqrt()
    };
    let plain = rmse(FourBitConfig::nf4(false));
    let dq = rmse(FourBitConfig::nf4(true));
    println!("NF4 blocksize 64 on N(0,1) 64x1024: RMSE {plain:.16} (double quant {dq:.16})");
    // bitsandbytes 0.50.2 on the same data (tests/fixtures/quant/cases.json): the dequantized
    // values are bit-identical (four_bit_cases_are_bit_identical), and numpy's mean sums the
    // f64 squares pairwise where we sum them in order: the two agree to f64 rounding, ~1e-16
    // relative per addition over 65,536 terms.
    assert!((plain / 0.0921644442307161 - 1.0).abs() < 1e-13, "{plain}");
    assert!((dq / 0.0921881853248864 - 1.0).abs() < 1e-13, "{dq}");
}

#[test]
fn quantized_linear_equals_dense_on_the_dequantized_weight() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (96, 128), &dev).unwrap();
    let b = Tensor::randn(0f32, 0.1, 96, &dev).unwrap();
    // 10 rows take dequantize + matmul; 1 and 3 rows the fused CPU path (quant::gemv4).
    for (x, cfg) in [(2usize, 5usize), (1, 3), (1, 1)]
        .into_iter()
        .flat_map(|(bsz, t)| {
            let x = Tensor::randn(0f32, 1.0, (bsz, t, 128), &Device::Cpu).unwrap();
            [
                FourBitConfig::nf4(false),
                FourBitConfig::nf4(true),
                FourBitConfig::fp4(true),
            ]
            .map(|c| (x.clone(), c))
        })
    {
        let q = quantize_4bit_weight(&w, "w", &cfg).unwrap();
        let wd = q.dequantize(DType::F32).unwrap();
        let layer = QLinear::new(q, Some(b.clone()), DType::F32).unwrap();
        let y = layer.forward(&x).unwrap();
        let dense = tunelab::Dense::new(wd, Some(b.clone())).unwrap();
        let y_ref = dense.forward(&x).unwrap();
        let rel = max_rel_diff(&y, &y_ref);
        assert!(rel < 1e-5, "{cfg:?}: relative difference {rel}");
        assert_eq!(layer.num_parameters(), 96 * 128 + 96);
    }
}

#[test]
fn generic_and_cpu_dequantization_agree() {
    // The device-generic path (index_select through a 256×2 table) is what CUDA runs; on the CPU
    // we can compare it with the host fast path. Shapes with a ragged last block and odd counts.
    for (shape, bs) in [
        ((8usize, 100usize), 64usize),
        ((3, 7), 64),
        ((40, 103), 4096),
        ((16, 64), 32),
    ] {
        let w = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let q =
            quantize_4bit_weight(&w, "w", &FourBitConfig::nf4(true).with_blocksize(bs)).unwrap();
        let fast = f32s(&q.dequantize(DType::F32).unwrap());
        let generic = f32s(&q.dequantize_on_any_device().unwrap());
        assert_same!(bits(&fast), bits(&generic), "{shape:?} bs {bs}");
    }
    // All values at their block's absmax: every byte is 0xFF (codes 15, 15), which candle's
    // index_select takes for a padding id when the ids are u8.
    let ones = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
    let q = quantize_4bit_weight(&ones, "ones", &FourBitConfig::nf4(false)).unwrap();
    assert!(u8s(q.packed()).iter().all(|&b| b == 0xff));
    assert_eq!(f32s(&q.dequantize_on_any_device().unwrap()), vec![1.0; 256]);
}

#[test]
fn storage_is_4_127_bits_per_weight_with_double_quant() {
    // SmolLM2's q_proj: 576 × 576.
    let w = Tensor::randn(0f32, 1.0, (576, 576), &Device::Cpu).unwrap();
    let n: usize = 576 * 576;
    let blocks = n / 64;
    let q = quantize_4bit_weight(&w, "q_proj", &FourBitConfig::nf4(true)).unwrap();
    // 0.5 B/weight + 1 B per 64 + 4 B per 64·256 (rounded up to whole blocks) + the 4-B offset.
    assert_eq!(
        q.storage_bytes(),
        n / 2 + blocks + 4 * blocks.div_ceil(256) + 4
    );
    let plain = quantize_4bit_weight(&w, "q_proj", &FourBitConfig::nf4(false)).unwrap();
    assert_eq!(plain.storage_bytes(), n / 2 + 4 * blocks);
}

#[test]
fn bad_input_gives_clear_errors() {
    let dev = Device::Cpu;
    let w = Tensor::zeros((4, 64), DType::F32, &dev).unwrap();
    let e = quantize_4bit_weight(&w, "w", &FourBitConfig::nf4(false).with_blocksize(48))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blocksize") && e.contains("48") && e.contains("4096"),
        "{e}"
    );
    let e = quantize_4bit_weight(
        &Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap(),
        "w3",
        &FourBitConfig::nf4(false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`w3`") && e.contains("2-D"), "{e}");
    let e = quantize_4bit_weight(
        &Tensor::zeros((0, 64), DType::F32, &dev).unwrap(),
        "w0",
        &FourBitConfig::nf4(false),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("empty"), "{e}");
    let e = quantize_4bit(&[], &[0], &FourBitConfig::nf4(false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty"), "{e}");
}
