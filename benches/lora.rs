//! What LoRA costs at inference before merging: the forward time of SmolLM2-135M plain against
//! the same model with LoRA adapters on all linear layers and on q,v only, at r = 8, 16, 64, for a
//! 128-token input (prefill/training-like) and a 1-token input (decode-like, no KV cache); and
//! the time of `merge_and_unload` for the whole model at r = 16, after which the overhead is 0.
//!
//! The model is `Config::preset("smollm2-135m")` with random f32 weights (`Llama::init_random`):
//! nothing is downloaded, and the timings depend on the shapes only, not on the values (B = 0 at
//! peft's default init still runs both adapter matmuls). Also timed: `singular_values_of` on one
//! 576×1536 weight (down_proj's shape), the largest matrix a notebook would give it.
//!
//! `cargo bench --profile dev --bench lora -- [--runs R]` prints one JSON line: medians of R
//! runs after one warm-up, in ms; the plain and the LoRA model run alternately, and `overhead`
//! is the median of the per-run ratios LoRA / plain.

mod common;
use common::median;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tunelab::peft::{get_peft_model_seeded, singular_values_of, LoraConfig, TargetModules};
use tunelab::{Config, Llama};

/// Median milliseconds of `runs` calls after one warm-up call.
fn time_ms(runs: usize, f: impl FnMut()) -> f64 {
    1e3 * common::time(runs, f)
}

/// Forward times (ms) of `plain` and `lora` on `ids`, alternating within each run so that load
/// from elsewhere on a shared machine hits both alike: (plain median, LoRA median, median of the
/// per-run ratios LoRA/plain).
fn paired_ms(plain: &Llama, lora: &Llama, ids: &Tensor, runs: usize) -> (f64, f64, f64) {
    let one = |m: &Llama| {
        let t = Instant::now();
        m.forward(ids, None).unwrap();
        t.elapsed().as_secs_f64() * 1e3
    };
    one(plain);
    one(lora);
    let (p, l): (Vec<f64>, Vec<f64>) = (0..runs).map(|_| (one(plain), one(lora))).unzip();
    let ratios = p.iter().zip(&l).map(|(p, l)| l / p).collect();
    (median(p), median(l), median(ratios))
}

fn main() -> tunelab::Result<()> {
    let runs: usize = common::arg("--runs", 5);
    let dev = Device::Cpu;
    let cfg = Config::preset("smollm2-135m")?;
    // Two copies with the same weights: one stays plain, the other is wrapped and unwrapped.
    let plain = Llama::init_random(&cfg, DType::F32, &dev, 0)?;
    let mut model = Llama::init_random(&cfg, DType::F32, &dev, 0)?;
    let vocab = cfg.vocab_size as u32;
    let tokens = [128usize, 1];
    let inputs: Vec<Tensor> = tokens
        .iter()
        .map(|&t| {
            let ids: Vec<u32> = (0..t as u32).map(|i| (17 + 131 * i) % vocab).collect();
            Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)
        })
        .collect::<candle_core::Result<_>>()?;

    let mut rows = Vec::new();
    let targets = [
        ("all-linear", TargetModules::all_linear()),
        ("q,v", TargetModules::names(["q_proj", "v_proj"])),
    ];
    for (tname, target) in &targets {
        for r in [8usize, 16, 64] {
            let lcfg = LoraConfig::new(r, 2.0 * r as f64, target.clone());
            let peft = get_peft_model_seeded(model, &lcfg, 0)?;
            let mut row = serde_json::json!({
                "targets": tname, "r": r, "trainable": peft.trainable_parameters().trainable,
            });
            for (ids, t) in inputs.iter().zip(tokens) {
                let (p, l, ratio) = paired_ms(&plain, &peft.model, ids, runs);
                row[format!("plain_t{t}_ms")] = p.into();
                row[format!("lora_t{t}_ms")] = l.into();
                row[format!("overhead_t{t}")] = ratio.into();
            }
            model = peft.unload()?;
            rows.push(row);
        }
    }

    // merge_and_unload at r = 16, all-linear: a fresh wrap per run (not timed).
    let lcfg = LoraConfig::new(16, 32.0, TargetModules::all_linear());
    let mut merge = Vec::new();
    for _ in 0..runs {
        let peft = get_peft_model_seeded(model, &lcfg, 0)?;
        let t = Instant::now();
        model = peft.merge_and_unload(true)?;
        merge.push(t.elapsed().as_secs_f64() * 1e3);
    }

    let w = model
        .linear("model.layers.0.mlp.down_proj")?
        .dense_weight()?;
    let svd = time_ms(1, || {
        singular_values_of(&w).unwrap();
    });

    println!(
        "{}",
        serde_json::json!({
            "impl": "tunelab",
            "model": "smollm2-135m preset, random f32 weights",
            "threads": candle_core::utils::get_num_threads(),
            "runs": runs,
            "lora": rows,
            "merge_and_unload_r16_ms": median(merge),
            "svd_576x1536_ms": svd,
        })
    );
    Ok(())
}
