//! Prompt tuning and prefix tuning (peft's PROMPT_TUNING / PREFIX_TUNING for causal LMs).
//!
//! The equivalences are exact statements about the maths: virtual tokens set to the embeddings
//! of real tokens are those tokens; a key/value prefix taken from the base model's own KV cache
//! of a text is that text (transformers uses past keys unrotated and starts the new positions
//! after them). Parameter counts are peft 0.21.2's `get_nb_trainable_parameters` on the
//! SmolLM2-135M config (script quoted at `counts_match_peft`).

mod common;

use candle_core::{DType, Device, Tensor, Var};
use tunelab::model::llama::{ForwardOptions, KvCache};
use tunelab::peft::PeftMethod;
use tunelab::peft::{
    get_prefix_tuning_model, get_prompt_tuning_model, PrefixTuningConfig, PrefixTuningModel,
    PromptTuningConfig, PromptTuningInit, PromptTuningModel,
};
use tunelab::{Config, Llama};

use common::{max_abs_diff, max_rel_diff, tiny};

/// A text the prompt/prefix stands for, and the input after it.
const PREFIX: [u32; 3] = [7, 42, 99];
const INPUT: [u32; 5] = [1, 5, 9, 200, 17];

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

fn joined() -> Vec<u32> {
    PREFIX.iter().chain(INPUT.iter()).copied().collect()
}

/// The base model's logits for INPUT when it comes after PREFIX: `(1, 5, V)`.
fn base_after_prefix(base: &Llama) -> Tensor {
    let n = PREFIX.len();
    base.forward(&ids(&joined()), None)
        .unwrap()
        .narrow(1, n, INPUT.len())
        .unwrap()
}

fn embeddings_of(m: &Llama, tokens: &[u32]) -> Tensor {
    m.embed_tokens
        .index_select(&Tensor::new(tokens, &Device::Cpu).unwrap(), 0)
        .unwrap()
}

fn prompt(seed: u64, n: usize) -> PromptTuningModel {
    let cfg = PromptTuningConfig::new(n, PromptTuningInit::Random);
    get_prompt_tuning_model(tiny(seed), &cfg, None, 11).unwrap()
}

fn none() -> ForwardOptions {
    ForwardOptions::default()
}

#[test]
fn virtual_tokens_set_to_token_embeddings_are_those_tokens() {
    let base = tiny(3);
    let want = base_after_prefix(&base);
    let pt = prompt(3, PREFIX.len());
    pt.set_prompt_embeddings(&embeddings_of(&base, &PREFIX))
        .unwrap();
    let got = pt.forward(&ids(&INPUT), &none()).unwrap();
    assert_eq!(got.dims(), [1, INPUT.len(), 256]);
    // The same tensor goes through the same ops: bit-identical.
    let d = max_abs_diff(&got, &want);
    println!("prompt tuning vs base on [prefix ; input]: max |Δ| = {d:e}");
    assert_eq!(d, 0.0);
    // An all-ones attention mask changes nothing; a batch of two is two single rows.
    let ones = Tensor::ones((1, INPUT.len()), DType::U32, &Device::Cpu).unwrap();
    let masked = pt
        .forward(
            &ids(&INPUT),
            &ForwardOptions {
                attention_mask: Some(ones),
                ..none()
            },
        )
        .unwrap();
    assert!(max_abs_diff(&masked, &want) < 1e-6);
    let other = [3u32, 4, 250, 8, 8];
    let batch = Tensor::new(&[INPUT, other], &Device::Cpu).unwrap();
    let both = pt.forward(&batch, &none()).unwrap();
    let alone = pt.forward(&ids(&other), &none()).unwrap();
    assert!(max_abs_diff(&both.narrow(0, 1, 1).unwrap(), &alone) < 1e-5);
    assert!(max_abs_diff(&both.narrow(0, 0, 1).unwrap(), &want) < 1e-5);
}

#[test]
fn sample_vocab_rows_are_embedding_rows_and_random_is_standard_normal() {
    let cfg = PromptTuningConfig::new(6, PromptTuningInit::SampleVocab);
    let pt = get_prompt_tuning_model(tiny(2), &cfg, None, 5).unwrap();
    let p: Vec<Vec<f32>> = pt.prompt_embeddings().as_tensor().to_vec2().unwrap();
    let e: Vec<Vec<f32>> = pt.base_model().embed_tokens.to_vec2().unwrap();
    for row in &p {
        assert!(
            e.contains(row),
            "a SAMPLE_VOCAB row is not an embedding row"
        );
    }
    let cfg = PromptTuningConfig::new(32, PromptTuningInit::Random);
    let pt = get_prompt_tuning_model(tiny(2), &cfg, None, 5).unwrap();
    let v: Vec<f32> = pt
        .prompt_embeddings()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt();
    // 2048 draws of N(0, 1): |mean| < 4σ/√n ≈ 0.09, std within ±6%.
    println!("RANDOM init: mean {mean:.4}, std {std:.4}");
    assert!(mean.abs() < 0.09 && (std - 1.0).abs() < 0.06);
}

#[test]
fn prompt_tuning_generation_through_the_cache_matches_the_forward() {
    let pt = prompt(6, 4);
    let mut cache = KvCache::new();
    let last = pt.prefill(&ids(&INPUT), &mut cache).unwrap(); // fused kernels
    assert_eq!(cache.seq_len(), 4 + INPUT.len());
    let full = pt.forward(&ids(&INPUT), &none()).unwrap(); // differentiable path
    let want = full
        .narrow(1, INPUT.len() - 1, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    assert!(max_rel_diff(&last, &want) < 1e-5);
    let next = [33u32];
    let step = pt
        .base_model()
        .forward_last(&ids(&next), Some(&mut cache))
        .unwrap();
    let longer: Vec<u32> = INPUT.iter().chain(next.iter()).copied().collect();
    let full = pt.forward(&ids(&longer), &none()).unwrap();
    let want = full.narrow(1, INPUT.len(), 1).unwrap().squeeze(1).unwrap();
    let d = max_rel_diff(&step, &want);
    println!("prompt tuning, cached step vs forward: max rel Δ = {d:e}");
    assert!(d < 1e-5);
}

/// The base model's cache after PREFIX, and a prefix-tuning model set from it.
fn prefix_from_cache(seed: u64) -> (Llama, KvCache, PrefixTuningModel) {
    let base = tiny(seed);
    let mut cache = KvCache::new();
    base.forward(&ids(&PREFIX), Some(&mut cache)).unwrap();
    let pm =
        get_prefix_tuning_model(tiny(seed), &PrefixTuningConfig::new(PREFIX.len()), 1).unwrap();
    pm.set_prefix_from_cache(&cache).unwrap();
    (base, cache, pm)
}

#[test]
fn prefix_from_the_base_kv_cache_is_the_prefix_text() {
    let (base, mut cache, pm) = prefix_from_cache(4);
    // Training path (plain ops) against the base on [prefix ; input] without a cache: the
    // prefix keys were rotated by the fused kernel, so equal to float rounding.
    let want = base_after_prefix(&base);
    let got = pm.forward(&ids(&INPUT), &none()).unwrap();
    let d = max_rel_diff(&got, &want);
    println!("prefix tuning (no cache) vs base on [prefix ; input]: max rel Δ = {d:e}");
    assert!(d < 1e-5);
    // Generation path: the prefix served from a cache is the base continuing its own cache,
    // bit for bit.
    let want = base.forward(&ids(&INPUT), Some(&mut cache)).unwrap();
    let mut c = pm.new_cache(1).unwrap();
    assert_eq!(c.seq_len(), PREFIX.len());
    let got = pm.base_model().forward(&ids(&INPUT), Some(&mut c)).unwrap();
    assert_eq!(max_abs_diff(&got, &want), 0.0);
    // Explicit positions 0..T are shifted by n, as peft does: the same result.
    let pos = Tensor::arange(0u32, INPUT.len() as u32, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let with_pos = pm
        .forward(
            &ids(&INPUT),
            &ForwardOptions {
                position_ids: Some(pos),
                ..none()
            },
        )
        .unwrap();
    let plain = pm.forward(&ids(&INPUT), &none()).unwrap();
    assert!(max_abs_diff(&with_pos, &plain) < 1e-6);
}

#[test]
fn prefix_attention_mask_and_padding() {
    let (_, _, pm) = prefix_from_cache(5);
    let real = [5u32, 6, 7];
    let alone = pm.forward(&ids(&real), &none()).unwrap();
    // Left-padded by two, with the mask (extended by n ones) and positions 0,0,0,1,2.
    let padded = Tensor::new(&[[0u32, 0, 5, 6, 7], [9, 10, 11, 12, 13]], &Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0u32, 0, 1, 1, 1], [1, 1, 1, 1, 1]], &Device::Cpu).unwrap();
    let pos = Tensor::new(&[[0u32, 0, 0, 1, 2], [0, 1, 2, 3, 4]], &Device::Cpu).unwrap();
    let out = pm
        .forward(
            &padded,
            &ForwardOptions {
                position_ids: Some(pos),
                attention_mask: Some(mask),
                segment_ids: None,
            },
        )
        .unwrap();
    let row0 = out.narrow(0, 0, 1).unwrap().narrow(1, 2, 3).unwrap();
    let d = max_abs_diff(&row0, &alone);
    assert!(d < 1e-5, "padded row differs by {d}");
    let row1 = out.narrow(0, 1, 1).unwrap();
    let alone1 = pm.forward(&ids(&[9, 10, 11, 12, 13]), &none()).unwrap();
    assert!(max_abs_diff(&row1, &alone1) < 1e-5);
    // Packing: each document sees the prefix and only itself.
    let packed = pm
        .forward(
            &ids(&[5, 6, 7, 9, 10]),
            &ForwardOptions {
                position_ids: Some(ids(&[0, 1, 2, 0, 1])),
                segment_ids: Some(ids(&[0, 0, 0, 1, 1])),
                attention_mask: None,
            },
        )
        .unwrap();
    assert!(max_abs_diff(&packed.narrow(1, 0, 3).unwrap(), &alone) < 1e-5);
    let doc2 = pm.forward(&ids(&[9, 10]), &none()).unwrap();
    assert!(max_abs_diff(&packed.narrow(1, 3, 2).unwrap(), &doc2) < 1e-5);
}

/// Next-token cross-entropy of `logits (1, T, V)` against `INPUT` shifted by one.
fn loss(logits: &Tensor) -> Tensor {
    let t = INPUT.len();
    let l = logits.squeeze(0).unwrap().narrow(0, 0, t - 1).unwrap();
    let y = Tensor::new(&INPUT[1..], &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&l, &y).unwrap()
}

enum Method {
    Prompt(PromptTuningModel),
    Prefix(PrefixTuningModel),
}

impl Method {
    fn logits(&self) -> Tensor {
        match self {
            Method::Prompt(m) => m.forward(&ids(&INPUT), &none()).unwrap(),
            Method::Prefix(m) => m.forward(&ids(&INPUT), &none()).unwrap(),
        }
    }
    fn vars(&self) -> Vec<Var> {
        match self {
            Method::Prompt(m) => m.trainable_vars(),
            Method::Prefix(m) => m.trainable_vars(),
        }
    }
    fn model(&self) -> &Llama {
        match self {
            Method::Prompt(m) => m.base_model(),
            Method::Prefix(m) => m.base_model(),
        }
    }
}

fn methods() -> Vec<(&'static str, Method)> {
    let prefix = |cfg: PrefixTuningConfig| get_prefix_tuning_model(tiny(7), &cfg, 3).unwrap();
    vec![
        ("prompt n=4", Method::Prompt(prompt(7, 4))),
        (
            "prefix n=4",
            Method::Prefix(prefix(PrefixTuningConfig::new(4))),
        ),
        (
            "prefix n=4 projection enc=24",
            Method::Prefix(prefix(PrefixTuningConfig::new(4).with_projection(Some(24)))),
        ),
    ]
}

#[test]
fn gradients_reach_only_the_new_vars() {
    for (name, m) in methods() {
        let grads = loss(&m.logits()).backward().unwrap();
        for v in m.vars() {
            let g = grads
                .get(v.as_tensor())
                .expect("a trainable Var has a gradient");
            let s = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(s > 0.0, "{name}: zero gradient for a {:?} Var", v.dims());
        }
        let base = m.model();
        assert!(grads.get(&base.embed_tokens).is_none(), "{name}");
        for path in [
            "model.layers.0.self_attn.k_proj",
            "model.layers.1.mlp.down_proj",
        ] {
            let w = base.linear(path).unwrap().dense_weight().unwrap();
            assert!(grads.get(&w).is_none(), "{name}: {path} has a gradient");
        }
    }
}

#[test]
fn a_few_sgd_steps_lower_the_loss() {
    use candle_nn::Optimizer;
    for (name, m) in methods() {
        let mut opt = candle_nn::SGD::new(m.vars(), 0.5).unwrap();
        let first = loss(&m.logits()).to_scalar::<f32>().unwrap();
        for _ in 0..5 {
            opt.backward_step(&loss(&m.logits())).unwrap();
        }
        let last = loss(&m.logits()).to_scalar::<f32>().unwrap();
        println!("{name}: loss {first:.4} -> {last:.4}");
        assert!(last < first, "{name}: {first} -> {last}");
    }
}

#[test]
fn prefix_projection_builds_the_prefix_through_the_mlp() {
    let cfg = PrefixTuningConfig::new(4).with_projection(Some(24));
    let pm = get_prefix_tuning_model(tiny(8), &cfg, 2).unwrap();
    let mut names: Vec<String> = pm.varmap().data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "prompt_encoder.default.embedding.weight",
            "prompt_encoder.default.transform.0.bias",
            "prompt_encoder.default.transform.0.weight",
            "prompt_encoder.default.transform.2.bias",
            "prompt_encoder.default.transform.2.weight",
        ]
    );
    // tiny: 2 layers, 2 kv heads × 16 → kv_dim 32; out = 2·2·32 = 128.
    let data = pm.varmap().data().lock().unwrap();
    let dims = |k: &str| data[&format!("prompt_encoder.default.{k}")].dims().to_vec();
    assert_eq!(dims("embedding.weight"), [4, 32]);
    assert_eq!(dims("transform.0.weight"), [24, 32]);
    assert_eq!(dims("transform.2.weight"), [128, 24]);
    // The prefix is W₂·tanh(W₁·E + b₁) + b₂, computed here from the Vars with plain loops.
    let v = |k: &str| -> Vec<f32> {
        data[&format!("prompt_encoder.default.{k}")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (e, w1, b1, w2, b2) = (
        v("embedding.weight"),
        v("transform.0.weight"),
        v("transform.0.bias"),
        v("transform.2.weight"),
        v("transform.2.bias"),
    );
    drop(data);
    let got: Vec<Vec<f32>> = pm.prompt_embeddings().unwrap().to_vec2().unwrap();
    let mut worst = 0f32;
    for t in 0..4 {
        let h: Vec<f64> = (0..24)
            .map(|j| {
                let s: f64 = (0..32)
                    .map(|i| w1[j * 32 + i] as f64 * e[t * 32 + i] as f64)
                    .sum();
                (s + b1[j] as f64).tanh()
            })
            .collect();
        for o in 0..128 {
            let s: f64 = (0..24).map(|j| w2[o * 24 + j] as f64 * h[j]).sum::<f64>() + b2[o] as f64;
            worst = worst.max((s as f32 - got[t][o]).abs());
        }
    }
    assert!(worst < 1e-5, "MLP prefix differs by {worst}");
    // Per layer (1, KV, n, D), and a prefix from a cache needs projection off.
    let pkv = pm.past_key_values().unwrap();
    assert_eq!(pkv.len(), 2);
    assert_eq!(pkv[1].0.dims(), [1, 2, 4, 16]);
    let e = pm
        .set_prefix_from_cache(&KvCache::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("prefix_projection"), "{e}");
}

#[test]
fn trainable_counts() {
    let c = Config::preset("tiny").unwrap(); // hidden 64, 2 layers, kv_dim 32
    let pt = prompt(1, 5);
    assert_eq!(pt.trainable_parameters().trainable, 5 * 64);
    let base = tiny(1).num_parameters();
    assert_eq!(pt.trainable_parameters().all, base + 5 * 64);
    for (cfg, want) in [
        (PrefixTuningConfig::new(5), 5 * 2 * 2 * 32),
        (
            PrefixTuningConfig::new(5).with_projection(None),
            5 * 32 + (32 * 32 + 32) + (32 * 128 + 128),
        ),
        (
            PrefixTuningConfig::new(5).with_projection(Some(24)),
            5 * 32 + (32 * 24 + 24) + (24 * 128 + 128),
        ),
    ] {
        let pm = get_prefix_tuning_model(tiny(1), &cfg, 0).unwrap();
        assert_eq!(pm.trainable_parameters().trainable, want, "{cfg:?}");
        assert_eq!(cfg.num_trainable_parameters(&c), want);
    }
    assert!(pt
        .trainable_parameters()
        .to_string()
        .starts_with("trainable params: 320 || all params: "));
}

/// peft 0.21.2 on the SmolLM2-135M config (transformers 5.23.0, random weights):
/// ```python
/// cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
///     num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
///     rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
/// for pc in [PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8),
///            PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8),
///            PrefixTuningConfig(..., num_virtual_tokens=8, prefix_projection=True),
///            PrefixTuningConfig(..., prefix_projection=True, encoder_hidden_size=128)]:
///     print(get_peft_model(LlamaForCausalLM(cfg), pc).get_nb_trainable_parameters())
/// ```
/// (4608, 134519616), (92160, 134607168), (2261952, 136776960), (1512320, 136027328);
/// base 134,515,008. With projection peft's embedding is [8, 192] (kv_dim), not [8, 576].
#[test]
fn counts_match_peft() {
    let c = Config::preset("smollm2-135m").unwrap();
    let base = 134_515_008;
    assert_eq!(c.num_parameters(), base);
    let prompt = PromptTuningConfig::new(8, PromptTuningInit::Random);
    assert_eq!(prompt.num_trainable_parameters(&c), 4_608);
    for (cfg, want) in [
        (PrefixTuningConfig::new(8), 92_160),
        (PrefixTuningConfig::new(8).with_projection(None), 2_261_952),
        (
            PrefixTuningConfig::new(8).with_projection(Some(128)),
            1_512_320,
        ),
    ] {
        assert_eq!(cfg.num_trainable_parameters(&c), want, "{cfg:?}");
    }
    assert_eq!(base + 2_261_952, 136_776_960);
}

#[test]
fn save_and_load_in_peft_format() {
    let dir = tempfile::tempdir().unwrap();
    // Prompt tuning: one tensor `prompt_embeddings` [n, C].
    let pt = prompt(9, 4);
    let before = pt.forward(&ids(&INPUT), &none()).unwrap();
    pt.save_pretrained(dir.path()).unwrap();
    let t =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(t.keys().collect::<Vec<_>>(), ["prompt_embeddings"]);
    assert_eq!(t["prompt_embeddings"].dims(), [4, 64]);
    assert_eq!(t["prompt_embeddings"].dtype(), DType::F32);
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "PROMPT_TUNING");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["num_virtual_tokens"], 4);
    assert_eq!(cfg["token_dim"], 64);
    assert_eq!(cfg["num_attention_heads"], 4);
    assert_eq!(cfg["prompt_tuning_init"], "RANDOM");
    let loaded = PromptTuningModel::from_pretrained(tiny(9), dir.path()).unwrap();
    let after = loaded.forward(&ids(&INPUT), &none()).unwrap();
    assert_eq!(max_abs_diff(&after, &before), 0.0);
    // Prefix tuning with a projection: the MLP's output is saved, [n, L·2·kv_dim].
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrefixTuningConfig::new(3).with_projection(Some(16));
    let pm = get_prefix_tuning_model(tiny(9), &cfg, 4).unwrap();
    let before = pm.forward(&ids(&INPUT), &none()).unwrap();
    pm.save_pretrained(dir.path()).unwrap();
    let t =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(t["prompt_embeddings"].dims(), [3, 128]);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["peft_type"], "PREFIX_TUNING");
    assert_eq!(json["token_dim"], 32); // kv_heads·head_dim, as peft rewrites it
    assert_eq!(json["num_attention_heads"], 2);
    assert_eq!(json["prefix_projection"], true);
    assert_eq!(json["encoder_hidden_size"], 16);
    let loaded = PrefixTuningModel::from_pretrained(tiny(9), dir.path()).unwrap();
    assert_eq!(loaded.trainable_parameters().trainable, 3 * 128);
    let after = loaded.forward(&ids(&INPUT), &none()).unwrap();
    assert!(max_abs_diff(&after, &before) < 1e-6);
    // The wrong kind of adapter, or one made for another model, is named.
    let e = PromptTuningModel::from_pretrained(tiny(9), dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("peft_type") && e.contains("PROMPT_TUNING"),
        "{e}"
    );
    let other = Llama::init_random(
        &Config::preset("tiny")
            .map(|mut c| {
                c.num_hidden_layers = 3;
                c
            })
            .unwrap(),
        DType::F32,
        &Device::Cpu,
        1,
    )
    .unwrap();
    let e = PrefixTuningModel::from_pretrained(other, dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("num_layers") && e.contains('3'), "{e}");
}

#[test]
fn bad_configs_are_named() {
    let e = get_prompt_tuning_model(
        tiny(1),
        &PromptTuningConfig::new(0, PromptTuningInit::Random),
        None,
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("num_virtual_tokens") && e.contains("got 0"),
        "{e}"
    );
    let e = get_prefix_tuning_model(tiny(1), &PrefixTuningConfig::new(0), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("num_virtual_tokens"), "{e}");
    let e = get_prompt_tuning_model(
        tiny(1),
        &PromptTuningConfig::new(4, PromptTuningInit::Text("Classify:".into())),
        None,
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("tokenizer"), "{e}");
    let mut c = PromptTuningConfig::new(4, PromptTuningInit::Random);
    c.token_dim = Some(32);
    let e = get_prompt_tuning_model(tiny(1), &c, None, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token_dim") && e.contains("64"), "{e}");
    let e = get_prefix_tuning_model(
        tiny(1),
        &PrefixTuningConfig::new(2).with_projection(Some(0)),
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("encoder_hidden_size"), "{e}");
    // Wrong shapes and a prefix with a cache.
    let pt = prompt(1, 4);
    let e = pt
        .set_prompt_embeddings(&Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("[4, 64]") && e.contains("[3, 64]"), "{e}");
    let e = pt
        .forward(
            &ids(&INPUT),
            &ForwardOptions {
                attention_mask: Some(ids(&[1, 1])),
                ..none()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention_mask"), "{e}");
    let (_, _, pm) = prefix_from_cache(1);
    let pkv = pm.past_key_values().unwrap();
    let mut cache = pm.new_cache(1).unwrap();
    let x = pm.base_model().embed(&ids(&INPUT)).unwrap();
    let e = pm
        .base_model()
        .forward_hidden_embeds(&x, &none(), Some(&pkv), Some(&mut cache))
        .unwrap_err()
        .to_string();
    assert!(e.contains("KvCache::from_prefix"), "{e}");
    let e = pm
        .base_model()
        .forward_hidden_embeds(&x, &none(), Some(&pkv[..1]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 layers") && e.contains("has 2"), "{e}");
}

/// SmolLM2-135M (the cached GGUF, dequantized to f32) with its tokenizer: TEXT init as peft
/// does it, and the prefix equivalence on a real model and a real text.
#[test]
fn smollm2_text_init_and_prefix_from_a_text() {
    let path = common::smollm2_gguf();
    let lm = tunelab::Pretrained::load_path(&path, &Default::default()).unwrap();
    let tok = lm.tokenizer;
    let text = "Classify if the tweet is a complaint or not:";
    let text_ids = tok.encode(text, true).unwrap();
    let input = tok
        .encode(" @HMRCcustomers No this is my first job", true)
        .unwrap();
    println!("init text: {} tokens {text_ids:?}", text_ids.len());
    // n = 12 > len: repeated then truncated, as peft's `ids * ceil(n / len)` then `[:n]`.
    let n = 12;
    let want_ids: Vec<u32> = text_ids.iter().cycle().take(n).copied().collect();
    let cfg = PromptTuningConfig::new(n, PromptTuningInit::Text(text.into()));
    let pt = get_prompt_tuning_model(lm.model, &cfg, Some(&tok), 0).unwrap();
    let want = embeddings_of(pt.base_model(), &want_ids);
    assert_eq!(max_abs_diff(pt.prompt_embeddings().as_tensor(), &want), 0.0);
    assert_eq!(pt.trainable_parameters().trainable, n * 576);
    assert_eq!(pt.trainable_parameters().all, 134_515_008 + n * 576);
    // Virtual tokens = the text's own embeddings (n = its length): the base on [text ; input].
    let model = pt.unload();
    let k = text_ids.len();
    let joined: Vec<u32> = text_ids.iter().chain(input.iter()).copied().collect();
    let base = model
        .forward(&ids(&joined), None)
        .unwrap()
        .narrow(1, k, input.len())
        .unwrap();
    let cfg = PromptTuningConfig::new(k, PromptTuningInit::Text(text.into()));
    let pt = get_prompt_tuning_model(model, &cfg, Some(&tok), 0).unwrap();
    let got = pt.forward(&ids(&input), &none()).unwrap();
    let d_prompt = max_abs_diff(&got, &base);
    // Prefix tuning from the base model's KV cache of the text.
    let model = pt.unload();
    let mut cache = KvCache::new();
    model.forward(&ids(&text_ids), Some(&mut cache)).unwrap();
    let pm = get_prefix_tuning_model(model, &PrefixTuningConfig::new(k), 0).unwrap();
    assert_eq!(pm.trainable_parameters().trainable, k * 30 * 2 * 192);
    pm.set_prefix_from_cache(&cache).unwrap();
    let got = pm.forward(&ids(&input), &none()).unwrap();
    let d_prefix = max_rel_diff(&got, &base);
    println!(
        "SmolLM2, {k}-token text: prompt tuning max |Δ| = {d_prompt:e}, prefix tuning max rel Δ = {d_prefix:e}"
    );
    assert_eq!(d_prompt, 0.0);
    assert!(d_prefix < 1e-4);
    // The greedy next token agrees.
    let last = |t: &Tensor| -> u32 {
        t.squeeze(0)
            .unwrap()
            .get(input.len() - 1)
            .unwrap()
            .argmax(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    assert_eq!(last(&got), last(&base));
}

/// peft 0.21.2 + transformers 5.23.0 (torch 2.15.0, CPU, f32) loading the adapters that
/// tunelab saved (`cargo run --example save_prompt_adapters -- DIR`, examples/
/// save_prompt_adapters.rs) onto the tiny model saved as an HF
/// checkpoint, forward on INPUT, logits[0, :, :3] (for prompt tuning peft returns all n + T
/// positions; these are `[:, n:]`):
/// ```python
/// ids = torch.tensor([[1, 5, 9, 200, 17]])
/// for name, n in [("prompt", 4), ("prefix", 3), ("prefix_proj", 3)]:
///     base = AutoModelForCausalLM.from_pretrained(f"{d}/model", dtype=torch.float32)
///     m = PeftModel.from_pretrained(base, f"{d}/{name}").eval()
///     out = m(input_ids=ids).logits            # prompt: (1, 9, 256), prefix: (1, 5, 256)
///     if name == "prompt": out = out[:, n:]
///     print((out - ours).abs().max(), out[0, :, :3].tolist())
/// ```
/// Over all 5 × 256 logits peft and tunelab differ by at most 1.5e-7 (prompt), 1.5e-7
/// (prefix), 1.3e-7 (prefix with projection): peft reads the saved files as tunelab means them.
#[test]
fn cross_check_with_peft() {
    let peft: [(&str, [[f32; 3]; 5]); 3] = [
        (
            "prompt",
            [
                [-0.2270067, 1.014809, 0.02286111],
                [-0.09588362, 0.05653676, 0.1056472],
                [-0.2133721, 0.3552049, -0.0923638],
                [-0.01117223, 0.1921899, -0.08854377],
                [0.05278102, 0.1688013, -0.04093333],
            ],
        ),
        (
            "prefix",
            [
                [-0.06329642, 0.08412714, -0.04761293],
                [-0.03773567, -0.1605795, -0.02051905],
                [-0.07211417, -0.08510163, -0.05788134],
                [0.02083883, -0.1013429, -0.0747992],
                [0.01234364, -0.1148872, -0.03963181],
            ],
        ),
        (
            "prefix_proj",
            [
                [0.05122592, 0.7388992, -0.2053697],
                [0.1024819, 0.1655461, -0.09408167],
                [0.06149571, 0.3546785, -0.2524087],
                [0.1483873, 0.2358141, -0.2041313],
                [0.23615, 0.2395734, -0.1581621],
            ],
        ),
    ];
    for (name, want) in peft {
        let logits = match name {
            "prompt" => get_prompt_tuning_model(
                tiny(21),
                &PromptTuningConfig::new(4, PromptTuningInit::Random),
                None,
                22,
            )
            .unwrap()
            .forward(&ids(&INPUT), &none()),
            _ => {
                let mut cfg = PrefixTuningConfig::new(3);
                if name == "prefix_proj" {
                    cfg = cfg.with_projection(Some(24));
                }
                get_prefix_tuning_model(tiny(21), &cfg, 23)
                    .unwrap()
                    .forward(&ids(&INPUT), &none())
            }
        }
        .unwrap();
        let got = logits.squeeze(0).unwrap().narrow(1, 0, 3).unwrap();
        let want = Tensor::new(&want, &Device::Cpu).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < 1e-6, "{name}: differs from peft by {d}");
    }
}
