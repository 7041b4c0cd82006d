//! Writes the inputs of `cross_check_with_peft` in tests/peft_prompt.rs (whose doc comment
//! has the Python side, peft 0.21.2 + transformers 5.23.0): the tiny model as an HF checkpoint
//! (`DIR/model/`), three adapters saved by `save_pretrained` (`DIR/prompt/`, `DIR/prefix/`,
//! `DIR/prefix_proj/`) and tunelab's logits for the test's input (`DIR/<name>_logits.safetensors`).
//!
//! `cargo run --example save_prompt_adapters -- DIR`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use tunelab::peft::PeftMethod;

use candle_core::{Device, Tensor};
use tunelab::model::llama::ForwardOptions;
use tunelab::peft::{
    get_prefix_tuning_model, get_prompt_tuning_model, PrefixTuningConfig, PromptTuningConfig,
    PromptTuningInit,
};

/// The input of `cross_check_with_peft`.
const INPUT: [u32; 5] = [1, 5, 9, 200, 17];

fn main() -> tunelab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir] = args.as_slice() else {
        eprintln!("usage: save_prompt_adapters DIR");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let model_dir = dir.join("model");
    std::fs::create_dir_all(&model_dir).map_err(|e| tunelab::Error::io(&model_dir, e))?;
    common::save_sharded(&common::tiny(21), &model_dir);
    let ids = Tensor::new(&INPUT, &Device::Cpu)?.unsqueeze(0)?;
    let none = ForwardOptions::default();
    let save_logits = |name: &str, logits: Tensor| {
        let t = BTreeMap::from([("logits".to_string(), logits)]);
        tunelab::model::load::save_safetensors(&t, &dir.join(format!("{name}_logits.safetensors")))
    };
    let pt = get_prompt_tuning_model(
        common::tiny(21),
        &PromptTuningConfig::new(4, PromptTuningInit::Random),
        None,
        22,
    )?;
    pt.save_pretrained(dir.join("prompt"))?;
    save_logits("prompt", pt.forward(&ids, &none)?)?;
    for (name, cfg) in [
        ("prefix", PrefixTuningConfig::new(3)),
        (
            "prefix_proj",
            PrefixTuningConfig::new(3).with_projection(Some(24)),
        ),
    ] {
        let pm = get_prefix_tuning_model(common::tiny(21), &cfg, 23)?;
        pm.save_pretrained(dir.join(name))?;
        save_logits(name, pm.forward(&ids, &none)?)?;
    }
    println!(
        "wrote the model, the adapters and the logits to {}",
        dir.display()
    );
    Ok(())
}
