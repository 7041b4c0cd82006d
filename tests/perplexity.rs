//! Perplexity of SmolLM2-135M-Instruct (the Q4_1 GGUF, dequantized to f32) on a fixed
//! paragraph, against transformers on the same GGUF, text and token ids
//! (tests/fixtures/smollm2/perplexity.json, made by scripts/ref/perplexity_reference.py).
//!
//! Skipped, with a message, when the GGUF is not in the cache (scripts/fetch_smollm2.py puts
//! it there; scripts/test.sh always does).

use std::path::PathBuf;

use tunelab::model::perplexity::{perplexity, perplexity_of_ids, PerplexityOptions};
use tunelab::Pretrained;

mod common;
use common::smollm2_gguf;

#[derive(serde::Deserialize)]
struct Single {
    loss: f64,
    nll: f64,
    ppl: f64,
    tokens: usize,
}

#[derive(serde::Deserialize)]
struct Sliding {
    max_length: usize,
    stride: usize,
    nll: f64,
    ppl: f64,
    tokens: usize,
    windows: usize,
    guide_ppl: f64,
}

#[derive(serde::Deserialize)]
struct Fixture {
    transformers: String,
    text: String,
    input_ids: Vec<u32>,
    single_window: Single,
    sliding_window: Sliding,
}

fn fixture() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2/perplexity.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Tolerance on the mean NLL. Per token, `NLL = logsumexp(z) − z_y`, and logsumexp moves by at
/// most `max_i |Δz_i|`, so `|ΔNLL| ≤ 2·max|Δz|` for every token and for their mean. Our f32
/// logits agree with transformers' to 6.3e-5 (max abs over 64 positions, tests/smollm2.rs);
/// allowing 2e-4 for the longer sequence gives `|Δnll| ≤ 4e-4`, and `|Δppl|/ppl ≤ e^{4e-4}−1`.
const NLL_TOL: f64 = 4e-4;

#[test]
fn smollm2_perplexity_matches_transformers() {
    let path = smollm2_gguf();
    let lm = Pretrained::load_path(path, &Default::default()).unwrap();
    let fx = fixture();
    let ids = lm.tokenizer.encode(&fx.text, true).unwrap();
    assert_eq!(ids, fx.input_ids, "tokenization differs from transformers'");

    // One window: the whole paragraph (214 tokens) in the 8192-token context.
    let p = perplexity(
        &lm.model,
        &lm.tokenizer,
        &fx.text,
        &PerplexityOptions::default(),
    )
    .unwrap();
    let want = &fx.single_window;
    println!(
        "SmolLM2-135M-Instruct, water-cycle paragraph ({} tokens): ppl {:.6} (nll {:.7}), \
         transformers {} {:.6} (nll {:.7}, its f32 loss {:.7}); |Δnll| = {:.2e}",
        fx.input_ids.len(),
        p.ppl,
        p.nll,
        fx.transformers,
        want.ppl,
        want.nll,
        want.loss,
        (p.nll - want.nll).abs()
    );
    assert_eq!((p.tokens, p.windows), (want.tokens, 1));
    assert!(
        (2.0..100.0).contains(&p.ppl),
        "implausible perplexity {}",
        p.ppl
    );
    assert!(
        (p.nll - want.nll).abs() <= NLL_TOL,
        "{} vs {}",
        p.nll,
        want.nll
    );
    assert!((p.ppl / want.ppl - 1.0).abs() <= NLL_TOL.exp_m1());

    // Sliding window of 64 with stride 32: six windows, each token scored once.
    let s = &fx.sliding_window;
    let opts = PerplexityOptions::default()
        .with_max_length(s.max_length)
        .with_stride(s.stride);
    let q = perplexity_of_ids(&lm.model, &ids, &opts).unwrap();
    println!(
        "sliding window {}/{}: ppl {:.6} vs transformers {:.6} (the guide's weighting gives \
         {:.6}); |Δnll| = {:.2e}",
        s.max_length,
        s.stride,
        q.ppl,
        s.ppl,
        s.guide_ppl,
        (q.nll - s.nll).abs()
    );
    assert_eq!((q.tokens, q.windows), (s.tokens, s.windows));
    assert!((q.nll - s.nll).abs() <= NLL_TOL, "{} vs {}", q.nll, s.nll);
    // Less context per token: a higher perplexity than with the whole paragraph in view.
    assert!(q.ppl > p.ppl);
}
