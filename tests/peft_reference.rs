//! Against Python peft 0.21.2 (tests/fixtures/peft, made by scripts/ref/make_peft_fixtures.py):
//! adapters saved by peft load here and give peft's logits, before and after merging; the
//! trainable-parameter line matches peft's digit for digit.

mod common;

use std::path::{Path, PathBuf};
use tunelab::peft::PeftMethod;

use candle_core::{DType, Device};
use tunelab::model::load::load_hf_dir;
use tunelab::peft::{get_peft_model_seeded, load_adapter, save_adapter, LoraConfig, TargetModules};
use tunelab::{Config, Llama};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn base() -> Llama {
    load_hf_dir(
        fixtures().join("tiny_hf/llama_untied"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .0
}

#[test]
fn peft_adapters_load_and_give_peft_logits() {
    for case in [
        "lora_qv",
        "rslora_all_linear",
        "dora_attn",
        "regex_layer1_mlp",
        "layers_patterns",
    ] {
        let dir = fixtures().join("peft").join(case);
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
        let peft = load_adapter(base(), &dir).unwrap();
        let adapted = peft.base_model().forward(&ids, None).unwrap();
        let d = common::max_abs_diff(&adapted, &expected["logits_adapted"]);
        println!("{case}: max |ours − peft| adapted {d:.2e}");
        assert!(d < 1e-4, "{case}: adapted logits differ from peft's by {d}");
        let merged = peft.merge_and_unload(true).unwrap();
        if let Some(w) = expected.get("merged.model.layers.0.self_attn.q_proj.weight") {
            let ours = merged
                .linear("model.layers.0.self_attn.q_proj")
                .unwrap()
                .dense_weight()
                .unwrap();
            let dw = common::max_abs_diff(&ours, w);
            assert!(dw < 1e-6, "{case}: merged q_proj weight differs by {dw}");
        }
        let m = merged.forward(&ids, None).unwrap();
        let dm = common::max_abs_diff(&m, &expected["logits_merged"]);
        assert!(
            dm < 1e-4,
            "{case}: merged logits differ from peft's by {dm}"
        );
    }
}

#[test]
fn adapters_saved_here_have_peft_names_and_reload() {
    // The reverse direction in Python: scripts/ref/make_peft_fixtures.py --check-rust-adapter.
    // Here: what we save loads back and keeps peft's tensor names for the same config.
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("peft/dora_attn");
    let peft = load_adapter(base(), &src).unwrap();
    save_adapter(&peft, dir.path(), "default").unwrap();
    let ours =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let theirs =
        candle_core::safetensors::load(src.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let mut a: Vec<_> = ours.keys().collect();
    let mut b: Vec<_> = theirs.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for (k, t) in &theirs {
        assert_eq!(common::max_abs_diff(&ours[k], t), 0.0, "{k}");
    }
}

#[test]
fn trainable_parameter_lines_equal_peft() {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("peft/trainable_params.json")).unwrap(),
    )
    .unwrap();
    let cfg = Config::preset("smollm2-135m").unwrap();
    for (case, lora) in [
        (
            "r16_all_linear",
            LoraConfig::new(16, 32.0, TargetModules::all_linear()),
        ),
        (
            "r8_q_v",
            LoraConfig::new(8, 16.0, TargetModules::names(["q_proj", "v_proj"])),
        ),
        ("r16_all_linear_dora", {
            let mut c = LoraConfig::new(16, 32.0, TargetModules::all_linear());
            c.use_dora = true;
            c
        }),
    ] {
        let model = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 0).unwrap();
        let peft = get_peft_model_seeded(model, &lora, 0).unwrap();
        let line = json["cases"][case]["line"].as_str().unwrap();
        assert_eq!(peft.trainable_parameters().to_string(), line, "{case}");
    }
    // peft counts a 4-bit weight as its logical size, so QLoRA's line is LoRA's.
    let line = json["cases_4bit"]["r8_q_v_nf4_storage_uint8"]["line"].as_str();
    if let Some(line) = line {
        let mut model = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 0).unwrap();
        tunelab::quant::quantize_model(
            &mut model,
            &tunelab::quant::QuantConfig::nf4_double_quant(),
        )
        .unwrap();
        let peft = get_peft_model_seeded(
            model,
            &LoraConfig::new(8, 16.0, TargetModules::names(["q_proj", "v_proj"])),
            0,
        )
        .unwrap();
        assert_eq!(peft.trainable_parameters().to_string(), line);
    }
}
