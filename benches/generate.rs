//! Greedy generation speed of SmolLM2-135M-Instruct on CPU (the fallback Q4_1 GGUF, dequantized
//! to f32), the peer being llama-cpp-python on the same GGUF (benches/peer_llamacpp.py); run both
//! with benches/run.sh, which writes the side-by-side figures.
//!
//! `cargo bench --bench generate -- [--tokens N] [--runs R] [--prompt TEXT]`
//! Prints one JSON line: per-run tokens/s of the decode phase, the median, and prefill time.

mod common;
use common::median;

use std::time::Instant;

use candle_core::Tensor;
use tunelab::model::generate::{generate_ids, GenerationConfig};
use tunelab::Pretrained;

fn main() -> tunelab::Result<()> {
    let tokens: usize = common::arg("--tokens", 64);
    let runs: usize = common::arg("--runs", 5);
    let prompt: String = common::arg("--prompt", "The history of the Roman Empire".to_string());
    let path = tunelab::model::hub::fallback_gguf()?;
    let lm = Pretrained::load_path(&path, &Default::default())?;
    let ids = lm.tokenizer.encode(&prompt, false)?;
    // Never stop early: no EOS, so every run decodes exactly `tokens` tokens.
    let cfg = GenerationConfig {
        eos_token_ids: vec![u32::MAX],
        ..GenerationConfig::greedy(tokens)
    };
    // Warm-up (allocations, thread pool).
    let _ = lm.model.forward_last(
        &Tensor::new(ids.as_slice(), lm.model.device())?.unsqueeze(0)?,
        None,
    )?;
    let mut tps = Vec::new();
    let mut prefill_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let g = generate_ids(&lm.model, &lm.tokenizer, &ids, &cfg, None)?;
        let _total = t.elapsed();
        tps.push(g.tokens_per_second());
        prefill_ms.push(g.prefill_seconds * 1e3);
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "tunelab",
            "dtype": "f32",
            "tokens": tokens,
            "prompt_tokens": ids.len(),
            "threads": candle_core::utils::get_num_threads(),
            "runs": tps,
            "median_tok_s": median(tps.clone()),
            "median_prompt_ms": median(prefill_ms),
        })
    );
    Ok(())
}
