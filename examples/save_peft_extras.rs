//! The reverse direction of tests/peft_extras.rs: adapters with LoRA's extras (`bias`,
//! `modules_to_save` with tied embeddings, PiSSA saved as is and converted to plain LoRA), saved by
//! tunelab with noise on every trainable tensor, for Python peft to load. For each case writes
//! `OUT_DIR/<case>/` (the adapter, `logits.safetensors` with tunelab's adapted logits and
//! `input_ids`, and `BASE`, the name of its tiny_hf base). `scripts/ref/check_rust_adapters.sh`
//! runs it and checks every case with
//! `scripts/ref/make_peft_fixtures.py --check-rust-adapter OUT_DIR/<case> --base tests/fixtures/tiny_hf/<BASE>`.
//!
//! `cargo run --example save_peft_extras -- OUT_DIR`

use std::path::Path;
use tunelab::peft::PeftMethod;

use candle_core::{DType, Device, Tensor};
use tunelab::model::load::load_hf_dir;
use tunelab::peft::{
    get_peft_model_seeded, save_adapter, save_adapter_as_lora, InitLoraWeights, LoraBias,
    LoraConfig, TargetModules,
};
use tunelab::Llama;

fn base(name: &str) -> tunelab::Result<Llama> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_hf")
        .join(name);
    Ok(load_hf_dir(dir, DType::F32, &Device::Cpu)?.0)
}

fn main() -> tunelab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, out] = args.as_slice() else {
        eprintln!("usage: save_peft_extras OUT_DIR");
        std::process::exit(2);
    };
    let ids = Tensor::new(
        &[[1u32, 5, 9, 20, 17, 3, 44, 90, 2, 7, 11, 13]; 2],
        &Device::Cpu,
    )?
    .to_dtype(DType::I64)?;
    let pissa_init_dir =
        tempfile::tempdir().map_err(|e| tunelab::Error::io(std::env::temp_dir(), e))?;
    for (case, model) in [
        ("bias_all", "llama_bias"),
        ("bias_lora_only", "llama_bias"),
        ("mts_lm_head_norm", "llama_untied"),
        ("mts_embed_tied_ensure", "qwen2"),
        ("pissa_as_lora", "llama_untied"),
        ("pissa_as_is", "llama_untied"),
    ] {
        let mut c = LoraConfig::new(4, 12.0, TargetModules::names(["q_proj", "v_proj"]));
        c.init_lora_weights = InitLoraWeights::Random;
        match case {
            "bias_all" => c.bias = LoraBias::All,
            "bias_lora_only" => c.bias = LoraBias::LoraOnly,
            "mts_lm_head_norm" => c.modules_to_save = Some(vec!["lm_head".into(), "norm".into()]),
            "mts_embed_tied_ensure" => {
                c.modules_to_save = Some(vec!["embed_tokens".into()]);
                c.ensure_weight_tying = true;
            }
            _ => c.init_lora_weights = InitLoraWeights::Pissa,
        }
        let peft = get_peft_model_seeded(base(model)?, &c, 9)?;
        if case == "pissa_as_lora" {
            save_adapter(&peft, pissa_init_dir.path(), "default")?;
        }
        for v in peft.trainable_vars() {
            let noise = (v.as_tensor().randn_like(0.0, 0.05)? * (v.as_tensor().abs()? + 1.0)?)?;
            v.set(&(v.as_tensor() + noise)?)?;
        }
        let dir = Path::new(&out).join(case);
        if case == "pissa_as_lora" {
            save_adapter_as_lora(&peft, &dir, "default", pissa_init_dir.path())?;
        } else {
            save_adapter(&peft, &dir, "default")?;
        }
        let logits = peft
            .base_model()
            .forward(&ids.to_dtype(DType::U32)?, None)?;
        let t = std::collections::HashMap::from([
            ("logits".to_string(), logits),
            ("input_ids".to_string(), ids.clone()),
        ]);
        candle_core::safetensors::save(&t, dir.join("logits.safetensors"))?;
        std::fs::write(dir.join("BASE"), model)
            .map_err(|e| tunelab::Error::io(dir.join("BASE"), e))?;
        println!("saved {case} (base {model}) to {}", dir.display());
    }
    Ok(())
}
