//! Every supported family against transformers, on tiny random checkpoints that transformers
//! itself wrote (`tests/fixtures/tiny_hf`, made by `scripts/ref/make_tiny_models.py`; see the
//! README there). For each: `load_hf_dir` then one forward must match transformers' logits
//! within 1e-4, so must the KV-cache path (8 ids, then 4 one at a time), and a
//! `save_pretrained` → `load_hf_dir` round trip must give bit-identical logits.
//!
//! The reference side, quoted from the script:
//! ```python
//! model = cls._from_config(config, dtype=torch.float32, attn_implementation="eager")
//! reinit(model)  # N(0, 0.2²) everywhere, biases too; norm gains 1 + N(0, 0.1²)
//! model.eval(); model.save_pretrained(d, safe_serialization=True)
//! logits = model(input_ids=ids).logits  # ids: I64 [2, 12], no attention mask
//! ```
//!
//! The reverse direction (transformers loading what tunelab saves) is
//! `scripts/ref/check_save_pretrained.py`, which saves the models with
//! `cargo run --example save_for_transformers` (examples/save_for_transformers.rs).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use tunelab::model::config::{Config, HfConfig};
use tunelab::model::llama::{KvCache, Llama};
use tunelab::model::load;

mod common;
use common::max_abs_diff;

/// The fixtures, one per family or variant.
const FAMILIES: [&str; 5] = [
    "llama_untied",
    "llama3_scaled",
    "qwen2",
    "mistral",
    "llama_bias",
];

/// Max abs difference allowed against transformers (f32 both sides; observed ~1e-6).
const TOL: f32 = 1e-4;

/// Ids fed at once to the cache before the rest go one by one.
const PREFIX: usize = 8;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_hf")
        .join(name)
}

/// `(input_ids (B, T) u32, logits (B, T, V) f32)` as transformers computed them.
fn reference(name: &str) -> (Tensor, Tensor) {
    let path = fixture(name).join("logits.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ids = t.remove("input_ids").expect("input_ids");
    let logits = t.remove("logits").expect("logits");
    assert_eq!(ids.dtype(), DType::I64, "{name}");
    (ids.to_dtype(DType::U32).unwrap(), logits)
}

fn load(dir: &Path) -> Llama {
    load::load_hf_dir(dir, DType::F32, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .0
}

/// Runs `check` on every family, prints each figure, and fails at the end naming every family
/// over [`TOL`], so one failure does not hide the others' numbers.
fn for_each_family(what: &str, check: impl Fn(&str) -> f32) {
    let mut bad = Vec::new();
    for name in FAMILIES {
        let d = check(name);
        println!("{what:>12} {name:14} max |Δ| = {d:.3e}");
        if d.is_nan() || d > TOL {
            bad.push(format!("{name}: {d:.3e}"));
        }
    }
    assert!(bad.is_empty(), "{what}: over {TOL:e}: {}", bad.join(", "));
}

#[test]
fn full_forward_matches_transformers() {
    for_each_family("forward", |name| {
        let (ids, want) = reference(name);
        let got = load(&fixture(name)).forward(&ids, None).unwrap(); // (B, T, V)
        max_abs_diff(&got, &want)
    });
}

/// transformers 5 writes θ and the scaling in `rope_parameters`, with no `rope_theta`; the
/// fixtures' configs are in this format, and so are the two below.
#[test]
fn transformers5_rope_parameters() {
    let parse = |text: &str| {
        HfConfig::from_json(text, Path::new("config.json"))
            .unwrap()
            .into_config()
            .unwrap()
    };
    let llama32 = parse(
        r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
        "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,
        "rope_parameters":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
        "original_max_position_embeddings":8192,"rope_theta":500000.0,"rope_type":"llama3"},
        "max_position_embeddings":131072,"tie_word_embeddings":true,"bos_token_id":128000,
        "eos_token_id":[128001,128008,128009],"rms_norm_eps":1e-05}"#,
    );
    assert_eq!(llama32, Config::preset("llama-3.2-1b").unwrap());
    let qwen2 = parse(
        r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
        "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
        "rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"},"rms_norm_eps":1e-06,
        "max_position_embeddings":32768,"tie_word_embeddings":true,"eos_token_id":151643}"#,
    );
    assert_eq!(qwen2, Config::preset("qwen2-0.5b").unwrap());
    let scaled = load(&fixture("llama3_scaled"));
    assert_eq!(scaled.config().rope_theta, 500_000.0);
    assert!(scaled.config().rope_scaling.is_some());
}

#[test]
fn parameter_counts_match_transformers() {
    // `model.num_parameters()` as make_tiny_models.py printed it (a tied lm_head counted once).
    let expected = [
        ("llama_untied", 78_144),
        ("llama3_scaled", 28_832),
        ("qwen2", 22_816),
        ("mistral", 78_144),
        ("llama_bias", 27_296),
    ];
    for (name, n) in expected {
        let model = load(&fixture(name));
        assert_eq!(model.num_parameters(), n, "{name}");
        assert_eq!(model.config().num_parameters(), n, "{name}");
    }
}

#[test]
fn kv_cache_path_matches_transformers() {
    for_each_family("kv cache", |name| {
        let (ids, want) = reference(name);
        let model = load(&fixture(name));
        let t = ids.dim(1).unwrap();
        let mut cache = KvCache::new();
        let prefix = ids.narrow(1, 0, PREFIX).unwrap();
        let got = model.forward(&prefix, Some(&mut cache)).unwrap(); // (B, 8, V)
        let mut d = max_abs_diff(&got, &want.narrow(1, 0, PREFIX).unwrap());
        for i in PREFIX..t {
            let step = ids.narrow(1, i, 1).unwrap(); // (B, 1)
            let got = model.forward_last(&step, Some(&mut cache)).unwrap(); // (B, V)
            d = d.max(max_abs_diff(&got, &want.i((.., i, ..)).unwrap()));
        }
        assert_eq!(cache.seq_len(), t, "{name}");
        d
    });
}

#[test]
fn save_pretrained_round_trip_is_bit_identical() {
    for_each_family("round trip", |name| {
        let (ids, _) = reference(name);
        let model = load(&fixture(name));
        let dir = tempfile::tempdir().unwrap();
        load::save_pretrained(&model, None, dir.path()).unwrap();
        let back = load(dir.path());
        assert_eq!(back.config(), model.config(), "{name}");
        let bits = |m: &Llama| -> Vec<u32> {
            let l = m.forward(&ids, None).unwrap().flatten_all().unwrap();
            l.to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        };
        assert!(bits(&model) == bits(&back), "{name}: logits changed");
        0.0
    });
}
