//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use tunelab::model::config::Config;
use tunelab::model::hub::{fallback_gguf, tunelab_cache_dir, FALLBACK_GGUF, FALLBACK_GGUF_SIZE};
use tunelab::model::llama::Llama;
use tunelab::model::load;

/// The shard names `save_sharded` writes.
pub const SHARDS: [&str; 2] = [
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
];

/// max |a − b| over all elements (shapes must agree).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| / max |b|: the largest difference relative to the largest value of the
/// reference `b` (shapes must agree).
pub fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(a, b) / scale
}

/// A randomly initialized model of the `tiny` preset, f32 on the CPU.
pub fn tiny(seed: u64) -> Llama {
    Llama::init_random(
        &Config::preset("tiny").unwrap(),
        DType::F32,
        &Device::Cpu,
        seed,
    )
    .unwrap()
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF that the tests run on, found (or fetched) by the same
/// function the library uses for its offline fallback, [`tunelab::model::hub::fallback_gguf`]:
/// the copy in `$TUNELAB_CACHE` (default `~/.cache/tunelab`), else `scripts/fetch_smollm2.py`
/// run by the library. A test that needs the model fails here, loudly, when it can be neither
/// found nor fetched; it never skips.
pub fn smollm2_gguf() -> PathBuf {
    // One fetch at a time within a test binary (the tests of a file run in parallel).
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCH.lock().unwrap_or_else(|p| p.into_inner());
    fallback_gguf().unwrap_or_else(|e| {
        panic!(
            "this test needs the SmolLM2-135M-Instruct Q4_1 GGUF ({FALLBACK_GGUF}, \
             {FALLBACK_GGUF_SIZE} bytes) in {}: {e}\n\
             get it with `python3 scripts/fetch_smollm2.py` (writes it to $TUNELAB_CACHE, \
             default ~/.cache/tunelab), or point TUNELAB_CACHE at a folder that holds it; \
             scripts/test.sh fetches it first",
            tunelab_cache_dir().display()
        )
    })
}

/// Writes `model` into `dir` as a sharded HF checkpoint: config.json,
/// model.safetensors.index.json and two shards (tensors alternate between them).
pub fn save_sharded(model: &Llama, dir: &Path) {
    let mut shards = [BTreeMap::new(), BTreeMap::new()];
    let mut map = serde_json::Map::new();
    for (i, (k, v)) in load::state_dict(model).unwrap().into_iter().enumerate() {
        map.insert(k.clone(), SHARDS[i % 2].into());
        shards[i % 2].insert(k, v);
    }
    for (tensors, name) in shards.iter().zip(SHARDS) {
        load::save_safetensors(tensors, &dir.join(name)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        model.config().to_hf_json("float32").to_string(),
    )
    .unwrap();
}
