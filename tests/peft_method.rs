//! The one PEFT-method interface: every method trains with the same `Trainer`, generates
//! through `next_logits` as its full forward predicts, and saves and loads in PEFT's layout.

mod common;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, tiny};
use tunelab::data::batch::{BatchConfig, Batcher, TokenizedExample};
use tunelab::model::llama::{ForwardOptions, KvCache};
use tunelab::peft::{
    get_bottleneck_model, get_peft_model_seeded, get_prefix_tuning_model, get_prompt_tuning_model,
    BottleneckConfig, BottleneckModel, LoraConfig, PeftMethod, PrefixTuningConfig,
    PromptTuningConfig, PromptTuningInit, TargetModules,
};
use tunelab::train::{IntervalStrategy, ProgressStyle, Trainer, TrainingArgs};

/// Builds, trains and returns a method: (first loss, last loss, the method).
type Run<'a> = Box<dyn FnOnce() -> (f64, f64, Box<dyn PeftMethod>) + 'a>;

const SENTENCE: [u32; 12] = [1, 17, 42, 99, 3, 250, 64, 7, 18, 200, 31, 5];

fn data() -> Batcher {
    let examples = vec![TokenizedExample::full(SENTENCE.to_vec())];
    Batcher::new(examples, &BatchConfig::default(), 0).unwrap()
}

/// Ten AdamW steps at `lr` through the Trainer: the first and the last step's loss.
fn fit<M: PeftMethod>(model: M, lr: f64) -> (M, f64, f64) {
    let args = TrainingArgs {
        max_steps: Some(10),
        learning_rate: lr,
        warmup_ratio: 0.0,
        save_strategy: IntervalStrategy::No,
        progress: ProgressStyle::Silent,
        ..TrainingArgs::default()
    };
    let mut t = Trainer::new(model, args, data(), None).unwrap();
    t.train_steps(10).unwrap();
    let losses = t.history().losses();
    let (first, last) = (losses[0], losses[9]);
    (t.into_model(), first, last)
}

fn ids(t: &[u32]) -> Tensor {
    Tensor::new(t, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// Prefill on the first tokens, then one token at a time: each step's logits are the full
/// forward's at that position.
fn check_generation_path(m: &dyn PeftMethod, name: &str) {
    let full = m
        .forward(&ids(&SENTENCE), &ForwardOptions::default())
        .unwrap()
        .squeeze(0)
        .unwrap(); // (T, V)
    let mut cache = KvCache::new();
    let mut got = vec![m.next_logits(&ids(&SENTENCE[..5]), &mut cache).unwrap()];
    for &t in &SENTENCE[5..] {
        got.push(m.next_logits(&ids(&[t]), &mut cache).unwrap());
    }
    let got = Tensor::cat(&got, 0).unwrap(); // (T - 4, V)
    let want = full.narrow(0, 4, SENTENCE.len() - 4).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(d < 1e-4, "{name}: cached generation path differs by {d}");
}

#[test]
fn every_method_trains_with_the_trainer_and_generates_as_it_predicts() {
    let lora_cfg = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj", "v_proj"]));
    let mut dora_cfg = lora_cfg.clone();
    dora_cfg.use_dora = true;
    let prompt_cfg = PromptTuningConfig::new(4, PromptTuningInit::Random);
    let methods: Vec<(&str, Run<'_>)> = vec![
        (
            "prompt tuning",
            Box::new(|| {
                let m = get_prompt_tuning_model(tiny(1), &prompt_cfg, None, 0).unwrap();
                let (m, a, b) = fit(m, 3e-2);
                (a, b, Box::new(m) as Box<dyn PeftMethod>)
            }),
        ),
        (
            "prefix tuning",
            Box::new(|| {
                let m = get_prefix_tuning_model(tiny(1), &PrefixTuningConfig::new(4), 0).unwrap();
                let (m, a, b) = fit(m, 3e-2);
                (a, b, Box::new(m) as Box<dyn PeftMethod>)
            }),
        ),
        (
            "bottleneck",
            Box::new(|| {
                let m =
                    get_bottleneck_model(tiny(1), &BottleneckConfig::new(8, Default::default()), 0)
                        .unwrap();
                let (m, a, b) = fit(m, 1e-2);
                (a, b, Box::new(m) as Box<dyn PeftMethod>)
            }),
        ),
        (
            "LoRA",
            Box::new(|| {
                let m = get_peft_model_seeded(tiny(1), &lora_cfg, 0).unwrap();
                let (m, a, b) = fit(m, 1e-2);
                (a, b, Box::new(m) as Box<dyn PeftMethod>)
            }),
        ),
        (
            "DoRA",
            Box::new(|| {
                let m = get_peft_model_seeded(tiny(1), &dora_cfg, 0).unwrap();
                let (m, a, b) = fit(m, 1e-2);
                (a, b, Box::new(m) as Box<dyn PeftMethod>)
            }),
        ),
    ];
    for (name, run) in methods {
        let (first, last, m) = run();
        println!("{name}: loss {first:.3} -> {last:.3} over 10 steps");
        assert!(last < first, "{name}: loss {first} -> {last}");
        assert!(
            !m.base_model().is_training(),
            "{name}: the trainer leaves evaluation mode"
        );
        assert!(m.trainable_parameters().trainable > 0);
        check_generation_path(m.as_ref(), name);
    }
}

#[test]
fn bottleneck_adapters_save_and_load_in_peft_layout() {
    let cfg = BottleneckConfig::new(8, Default::default());
    let m = get_bottleneck_model(tiny(2), &cfg, 0).unwrap();
    let (m, _, _) = fit(m, 1e-2);
    let dir = tempfile::tempdir().unwrap();
    m.save_pretrained(dir.path()).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["peft_type"], "BOTTLENECK");
    assert_eq!(json["reduction_factor"], 8);
    let back = BottleneckModel::from_pretrained(tiny(2), dir.path()).unwrap();
    let o = ForwardOptions::default();
    let d = max_abs_diff(
        &back.forward(&ids(&SENTENCE), &o).unwrap(),
        &m.forward(&ids(&SENTENCE), &o).unwrap(),
    );
    assert_eq!(d, 0.0);
    assert_eq!(
        back.named_trainable_vars().len(),
        m.named_trainable_vars().len()
    );
    // A prompt-tuning directory is not a bottleneck one: the error names the file and field.
    let p = get_prompt_tuning_model(
        tiny(2),
        &PromptTuningConfig::new(2, PromptTuningInit::Random),
        None,
        0,
    )
    .unwrap();
    let other = tempfile::tempdir().unwrap();
    p.save_pretrained(other.path()).unwrap();
    let e = BottleneckModel::from_pretrained(tiny(2), other.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("peft_type"),
        "{e}"
    );
}

#[test]
fn checkpointing_is_refused_by_name_where_the_method_cannot_have_it() {
    let m = get_prefix_tuning_model(tiny(3), &PrefixTuningConfig::new(2), 0).unwrap();
    let args = TrainingArgs {
        max_steps: Some(1),
        gradient_checkpointing: true,
        save_strategy: IntervalStrategy::No,
        progress: ProgressStyle::Silent,
        ..TrainingArgs::default()
    };
    let mut t = Trainer::new(m, args, data(), None).unwrap();
    let e = t.train_steps(1).unwrap_err().to_string();
    assert!(
        e.contains("gradient_checkpointing") && e.contains("PREFIX_TUNING"),
        "{e}"
    );
}
