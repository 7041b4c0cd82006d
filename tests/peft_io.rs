//! PEFT-format adapters: save and load round trip, errors naming the file, field and tensor.

mod common;

use candle_core::{Device, Tensor};
use tunelab::peft::io::{read_adapter_config, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use tunelab::peft::PeftMethod;
use tunelab::peft::{
    get_peft_model_seeded, load_adapter, save_adapter, InitLoraWeights, LoraConfig, TargetModules,
};

use common::tiny;

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 200, 17, 3, 44, 90]], &Device::Cpu).unwrap()
}

fn config() -> LoraConfig {
    let mut c = LoraConfig::new(4, 16.0, TargetModules::all_linear());
    c.use_rslora = true;
    c.init_lora_weights = InitLoraWeights::Random;
    c
}

#[test]
fn save_then_load_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let peft = get_peft_model_seeded(tiny(4), &config(), 5).unwrap();
    let before = peft.base_model().forward(&ids(), None).unwrap();
    save_adapter(&peft, dir.path(), "default").unwrap();
    // PEFT's names: adapter name stripped, under base_model.model.
    let t = candle_core::safetensors::load(dir.path().join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    assert!(t.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(t.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(t.len(), 2 * 2 * 7);
    let cfg = read_adapter_config(dir.path()).unwrap();
    assert_eq!(cfg.lora, peft.peft_config("default").unwrap().clone());
    let mut loaded = load_adapter(tiny(4), dir.path()).unwrap();
    // Loaded in evaluation mode: forward multiplies by contiguous copies of Aᵀ, Bᵀ, which
    // rounds differently (a few ulps); the same code path gives the same bits.
    let after = loaded.base_model().forward(&ids(), None).unwrap();
    assert!(common::max_abs_diff(&after, &before) < 1e-5);
    loaded.train();
    let after = loaded.base_model().forward(&ids(), None).unwrap();
    assert_eq!(common::max_abs_diff(&after, &before), 0.0);
}

#[test]
fn dora_adapters_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.use_dora = true;
    let peft = get_peft_model_seeded(tiny(4), &c, 5).unwrap();
    let before = peft.base_model().forward(&ids(), None).unwrap();
    save_adapter(&peft, dir.path(), "default").unwrap();
    let t = candle_core::safetensors::load(dir.path().join(ADAPTER_WEIGHTS), &Device::Cpu).unwrap();
    assert_eq!(
        t["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"].dims(),
        [64]
    );
    let loaded = load_adapter(tiny(4), dir.path()).unwrap();
    let after = loaded.base_model().forward(&ids(), None).unwrap();
    assert_eq!(common::max_abs_diff(&after, &before), 0.0);
}

#[test]
fn unknown_config_fields_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let peft = get_peft_model_seeded(tiny(4), &config(), 5).unwrap();
    save_adapter(&peft, dir.path(), "default").unwrap();
    let path = dir.path().join(ADAPTER_CONFIG);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["some_future_field"] = serde_json::json!({"x": 1});
    std::fs::write(&path, v.to_string()).unwrap();
    let cfg = read_adapter_config(dir.path()).unwrap();
    assert_eq!(cfg.extra["some_future_field"]["x"], 1);
    assert_eq!(cfg.to_json()["some_future_field"]["x"], 1);
}

#[test]
fn bad_adapters_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let peft = get_peft_model_seeded(tiny(4), &config(), 5).unwrap();
    save_adapter(&peft, dir.path(), "default").unwrap();
    // A model of another width: the first mismatching tensor is named.
    let mut cfg = tunelab::Config::preset("tiny").unwrap();
    cfg.intermediate_size = 96;
    let other =
        tunelab::Llama::init_random(&cfg, candle_core::DType::F32, &Device::Cpu, 0).unwrap();
    let e = load_adapter(other, dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("gate_proj.lora_B.weight") && e.contains("shape"),
        "{e}"
    );
    // A config that does not parse names the file.
    let path = dir.path().join(ADAPTER_CONFIG);
    std::fs::write(&path, "{ not json").unwrap();
    let e = load_adapter(tiny(4), dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("JSON"),
        "{e}"
    );
    std::fs::write(&path, r#"{"peft_type": "LORA", "r": "eight"}"#).unwrap();
    let e = load_adapter(tiny(4), dir.path()).err().unwrap().to_string();
    assert!(e.contains("field `r`"), "{e}");
    std::fs::write(&path, r#"{"peft_type": "IA3"}"#).unwrap();
    let e = load_adapter(tiny(4), dir.path()).err().unwrap().to_string();
    assert!(e.contains("peft_type"), "{e}");
}
