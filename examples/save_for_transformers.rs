//! Saves models with tunelab's `save_pretrained` for transformers to load back — the input of
//! `scripts/ref/check_save_pretrained.py`, which checks the reverse direction of
//! tests/hf_families.rs (transformers loading what tunelab writes).
//!
//! ```text
//! cargo run --example save_for_transformers -- tiny OUT_DIR     # every tests/fixtures/tiny_hf model, to OUT_DIR/<name>
//! cargo run --example save_for_transformers -- smollm2 OUT_DIR  # SmolLM2-135M-Instruct from its GGUF (f32), model + tokenizer
//! ```
//!
//! `smollm2` finds the GGUF as the library does (`$TUNELAB_CACHE`, else fetched by
//! `scripts/fetch_smollm2.py`).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use tunelab::model::load;

/// The families of tests/fixtures/tiny_hf (see its README).
const FAMILIES: [&str; 5] = [
    "llama_untied",
    "llama3_scaled",
    "qwen2",
    "mistral",
    "llama_bias",
];

fn main() -> tunelab::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, what, out] if what == "tiny" => {
            let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_hf");
            for name in FAMILIES {
                let (model, _) = load::load_hf_dir(fixtures.join(name), DType::F32, &Device::Cpu)?;
                let dest = Path::new(out).join(name);
                load::save_pretrained(&model, None, &dest)?;
                println!("saved {name} to {}", dest.display());
            }
        }
        [_, what, out] if what == "smollm2" => {
            let gguf = tunelab::model::hub::fallback_gguf()?;
            let lm = tunelab::Pretrained::load_path(&gguf, &Default::default())?;
            lm.save_pretrained(PathBuf::from(out))?;
            println!("saved {} to {out}", gguf.display());
        }
        _ => {
            eprintln!("usage: save_for_transformers (tiny|smollm2) OUT_DIR");
            std::process::exit(2);
        }
    }
    Ok(())
}
