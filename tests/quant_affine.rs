//! Affine / absmax n-bit quantization (slides 12, 17) against PyTorch.
//!
//! `tests/fixtures/quant/affine.safetensors` is made by `scripts/ref/make_affine_fixtures.py`
//! (torch 2.15 CPU: `MinMaxObserver`/`PerChannelMinMaxObserver` for the constants,
//! `quantize_per_tensor`/`quantize_per_channel` for the codes, `dequantize()` or
//! `fake_quantize_per_{tensor,channel}_affine(quant_min, quant_max)` for ŵ). Everything must
//! agree bit for bit: codes, scales, zero points and dequantized values.

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};
use tunelab::quant::{quantize_affine, AffineConfig, Granularity, QuantizedWeight};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/quant/affine.safetensors"
);

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    bits: u32,
    symmetric: bool,
    granularity: String,
    group_size: Option<usize>,
    quant_min: i32,
    quant_max: i32,
    shape: Vec<usize>,
    torch_ops: String,
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn i16s(st: &SafeTensors, name: &str) -> Vec<i64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("fixture tensor {name}"));
    assert_eq!(t.dtype(), Dtype::I16, "{name}");
    t.data()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as i64)
        .collect()
}

fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// First index where two sequences differ, for the failure message.
fn first_diff<T: PartialEq + Copy>(a: &[T], b: &[T]) -> Option<(usize, T, T)> {
    a.iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (&x, &y))| (i, x, y))
}

/// The JSON object the script stores under the metadata key `fixture`.
fn metadata(bytes: &[u8]) -> serde_json::Value {
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let fixture = &meta.metadata().as_ref().expect("fixture metadata")["fixture"];
    serde_json::from_str(fixture).unwrap()
}

#[test]
fn codes_scales_zero_points_and_dequant_match_torch_bit_for_bit() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cases: Vec<Case> = serde_json::from_value(metadata(&bytes)["cases"].clone()).unwrap();
    assert_eq!(cases.len(), 21);
    for c in &cases {
        let granularity = match (c.granularity.as_str(), c.group_size) {
            ("tensor", _) => Granularity::PerTensor,
            ("channel", _) => Granularity::PerChannel,
            ("group", Some(g)) => Granularity::Group(g),
            other => panic!("{}: unknown granularity {other:?}", c.name),
        };
        let cfg = AffineConfig {
            bits: c.bits,
            symmetric: c.symmetric,
            granularity,
        };
        assert_eq!(cfg.quant_range(), (c.quant_min, c.quant_max), "{}", c.name);
        let w = Tensor::from_vec(
            f32s(&st, &format!("{}.input", c.name)),
            (c.shape[0], c.shape[1]),
            &Device::Cpu,
        )
        .unwrap();
        let aw = quantize_affine(&w, &cfg).unwrap();

        let scale = f32s(&st, &format!("{}.scale", c.name));
        let ours = flat_f32(aw.scales());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&ours), bits(&scale), "{}: scales", c.name);

        let zp = i16s(&st, &format!("{}.zero_point", c.name));
        let ours: Vec<i64> = match aw.zero_points() {
            Some(z) => flat_f32(z).iter().map(|&v| v as i64).collect(),
            None => vec![0; zp.len()],
        };
        assert_eq!(ours, zp, "{}: zero points", c.name);

        let codes = i16s(&st, &format!("{}.codes", c.name));
        let ours = aw
            .int_repr()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap();
        assert!(
            ours == codes,
            "{}: codes differ at {:?}",
            c.name,
            first_diff(&ours, &codes)
        );

        let dq = bits(&f32s(&st, &format!("{}.dequant", c.name)));
        let ours = bits(&flat_f32(&aw.dequantize(DType::F32).unwrap()));
        assert!(
            ours == dq,
            "{}: dequant bits differ at {:?}",
            c.name,
            first_diff(&ours, &dq)
        );
        println!("{:<18} {:<22} ok  ({})", c.name, aw.kind(), c.torch_ops);
    }
}

/// N(0,1) as in `splitmix_normal` of `scripts/ref/make_affine_fixtures.py`: splitmix64, two
/// uniforms in (0, 1], Box-Muller (cos branch) in f64, rounded to f32.
fn splitmix_normal(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let u: Vec<f64> = (1..=(2 * rows * cols) as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 1.0) * 2f64.powi(-53)
        })
        .collect();
    u.chunks_exact(2)
        .map(|p| {
            let r = (-2.0 * p[0].ln()).sqrt();
            (r * (2.0 * std::f64::consts::PI * p[1]).cos()) as f32
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct Rmse {
    sum_f64: f64,
    first: Vec<f64>,
    schemes: std::collections::BTreeMap<String, f64>,
}

#[test]
fn rmse_on_576x1536_normal_matches_torch() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let reference: Rmse = serde_json::from_value(metadata(&bytes)["rmse"].clone()).unwrap();
    let (rows, cols) = (576, 1536);
    let w = splitmix_normal(rows, cols, 2026);
    // Same matrix as the script's (both use glibc's f64 log/cos). The JSON holds the f32 values
    // widened to f64; serde_json's default parser may miss the last f64 bit, never the f32.
    let first: Vec<f32> = reference.first.iter().map(|&v| v as f32).collect();
    assert_eq!(w[..4], first[..]);
    let sum: f64 = w.iter().map(|&v| v as f64).sum();
    assert!(
        (sum - reference.sum_f64).abs() < 1e-9,
        "{sum} vs {}",
        reference.sum_f64
    );
    let wt = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();

    let mut candidates = vec![];
    for bits in [4, 8] {
        for g in [
            Granularity::PerTensor,
            Granularity::PerChannel,
            Granularity::Group(64),
            Granularity::Group(128),
        ] {
            candidates.push(AffineConfig::asymmetric(bits, g));
            candidates.push(AffineConfig::symmetric(bits, g));
        }
    }
    println!("RMSE on N(0,1) 576x1536: ours vs torch, bits per weight (codes + constants)");
    for (kind, torch_rmse) in &reference.schemes {
        let cfg = candidates.iter().find(|c| &c.kind() == kind).unwrap();
        let aw = quantize_affine(&wt, cfg).unwrap();
        let dq = flat_f32(&aw.dequantize(DType::F32).unwrap());
        let se: f64 = (w.iter().zip(&dq))
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let rmse = (se / w.len() as f64).sqrt();
        let bpw = 8.0 * aw.storage_bytes() as f64 / w.len() as f64;
        println!("  {kind:<20} {rmse:.6}  torch {torch_rmse:.6}  {bpw:.3} bits/weight");
        // The codes are bit-identical (previous test), so the squared errors are too; only the
        // order of the 884736-term f64 sum differs: relative error < n·2⁻⁵³ ≈ 1e-10.
        assert!(
            (rmse - torch_rmse).abs() <= 1e-10 * torch_rmse,
            "{kind}: {rmse} vs torch {torch_rmse}"
        );
    }
    // Slide 17's point: smaller groups, smaller error.
    let s = &reference.schemes;
    assert!(s["affine-int4-g64"] < s["affine-int4-g128"]);
    assert!(s["affine-int4-g128"] < s["affine-int4-channel"]);
    assert!(s["affine-int4-channel"] < s["affine-int4"]);
}
