//! Wraps a Hugging Face model directory in LoRA (random B, so the adapter changes the output),
//! saves the adapter in PEFT's format and the adapted logits beside it — the input of
//! `scripts/ref/make_peft_fixtures.py --check-rust-adapter`, which loads it in Python peft.
//!
//! `cargo run --example save_peft_adapter -- BASE_DIR OUT_DIR [lora|rslora|dora]`

use std::collections::BTreeMap;
use tunelab::peft::PeftMethod;

use candle_core::{DType, Device, Tensor};
use tunelab::model::load::{load_hf_dir, save_safetensors};
use tunelab::peft::{
    get_peft_model_seeded, save_adapter, InitLoraWeights, LoraConfig, TargetModules,
};

fn main() -> tunelab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (base, out, kind) = match args.as_slice() {
        [_, b, o] => (b.clone(), o.clone(), "lora".to_string()),
        [_, b, o, k] => (b.clone(), o.clone(), k.clone()),
        _ => {
            eprintln!("usage: save_peft_adapter BASE_DIR OUT_DIR [lora|rslora|dora]");
            std::process::exit(2);
        }
    };
    let (model, _) = load_hf_dir(&base, DType::F32, &Device::Cpu)?;
    let mut cfg = match kind.as_str() {
        "lora" => LoraConfig::new(
            4,
            12.0,
            TargetModules::names(["q_proj", "v_proj", "down_proj"]),
        ),
        "rslora" => {
            let mut c = LoraConfig::new(4, 16.0, TargetModules::all_linear());
            c.use_rslora = true;
            c
        }
        "dora" => {
            let mut c = LoraConfig::new(
                2,
                6.0,
                TargetModules::names(["q_proj", "k_proj", "o_proj", "up_proj"]),
            );
            c.use_dora = true;
            c
        }
        other => {
            eprintln!("unknown kind `{other}`");
            std::process::exit(2);
        }
    };
    cfg.init_lora_weights = InitLoraWeights::Random;
    let peft = get_peft_model_seeded(model, &cfg, 17)?;
    save_adapter(&peft, &out, "default")?;
    let ids = Tensor::new(
        &[
            [1u32, 7, 30, 4, 99, 12, 5, 64, 3, 18, 77, 2],
            [5, 9, 13, 21, 34, 55, 89, 44, 33, 22, 11, 0],
        ],
        &Device::Cpu,
    )?;
    let logits = peft.base_model().forward(&ids, None)?;
    let mut t = BTreeMap::new();
    t.insert("logits".to_string(), logits);
    t.insert("input_ids".to_string(), ids.to_dtype(DType::I64)?);
    save_safetensors(&t, &std::path::Path::new(&out).join("logits.safetensors"))?;
    println!("{out}: {kind} adapter and logits written");
    Ok(())
}
