//! The chapter 5 demo end to end on SmolLM2-135M-Instruct, on CPU (or CUDA with the `cuda`
//! feature): ask the held-out prompts, LoRA-train (optionally on an NF4 base: QLoRA) on
//! `data/persona.jsonl` (a pirate persona: "Arr, matey! ... Yo-ho-ho!"), evaluate before and
//! after, ask again, save the adapter, merge and check the merge.
//!
//! ```sh
//! cargo run --release --example sft_persona -- [--qlora] [--steps 150] [--out outputs/persona]
//! ```
//! Prints eval loss before/after and how many held-out answers show the persona.

use candle_core::DType;
use tunelab::data::records::load_records;
use tunelab::device::best_device;
use tunelab::model::generate::chat;
use tunelab::peft::PeftMethod;
use tunelab::peft::{get_peft_model_seeded, LoraConfig, TargetModules};
use tunelab::quant::config::{quantize_model, QuantConfig};
use tunelab::train::{IntervalStrategy, SchedulerType, Trainer, TrainingArgs};
use tunelab::{GenerationConfig, Llama, LoadOptions, Message, Pretrained, Tokenizer};

fn ask(model: &Llama, tok: &Tokenizer, prompts: &[String]) -> tunelab::Result<usize> {
    let cfg = GenerationConfig::greedy(40);
    let mut persona = 0;
    for p in prompts {
        let g = chat(model, tok, &[Message::user(p.clone())], &cfg, None)?;
        let shows = g.text.trim_start().starts_with("Arr");
        persona += shows as usize;
        println!(
            "  [{}] {p}\n      → {}",
            if shows { "pirate" } else { "plain" },
            g.text.trim().replace('\n', " ")
        );
    }
    Ok(persona)
}

fn main() -> tunelab::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let flag = |name: &str| argv.iter().position(|a| a == name);
    let value = |name: &str, default: &str| {
        flag(name)
            .and_then(|i| argv.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let qlora = flag("--qlora").is_some();
    let steps: usize = value("--steps", "150").parse().expect("--steps N");
    let out = value("--out", "outputs/persona");

    let device = best_device();
    let pre = Pretrained::load(
        None,
        &LoadOptions::default()
            .with_dtype(DType::F32)
            .with_device(device),
    )?;
    let (mut model, tok) = (pre.model, pre.tokenizer);
    let heldout: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string("data/persona_heldout.json").expect("data/persona_heldout.json"),
    )
    .expect("a JSON array of prompts");

    println!("== before training");
    let before_persona = ask(&model, &tok, &heldout)?;
    if qlora {
        let s = quantize_model(&mut model, &QuantConfig::nf4_double_quant())?;
        println!(
            "== NF4 + double quant: {} layers, {} -> {} bytes",
            s.quantized.len(),
            s.bytes_before,
            s.bytes_after
        );
    }
    let mut cfg = LoraConfig::new(6, 8.0, TargetModules::all_linear());
    cfg.lora_dropout = 0.05;
    let peft = get_peft_model_seeded(model, &cfg, 42)?;
    peft.print_trainable_parameters();

    let records = load_records("data/persona.jsonl")?;
    let n_eval = records.len() / 10;
    let (eval, train) = records.split_at(n_eval);
    let args = TrainingArgs {
        output_dir: out.clone().into(),
        max_steps: Some(steps),
        per_device_train_batch_size: 4,
        per_device_eval_batch_size: 8,
        learning_rate: 1e-3,
        lr_scheduler_type: SchedulerType::Cosine,
        warmup_ratio: 0.05,
        logging_steps: 10,
        save_strategy: IntervalStrategy::No,
        max_length: 256,
        ..TrainingArgs::default()
    };
    let (mut trainer, report) = Trainer::sft(peft, &tok, args, train, Some(eval))?;
    println!("{report}");
    let e0 = trainer.evaluate()?;
    let out_train = trainer.train()?;
    let e1 = trainer.evaluate()?;
    println!("{out_train}");
    println!(
        "eval loss {:.4} -> {:.4} (perplexity {:.2} -> {:.2})",
        e0.eval_loss, e1.eval_loss, e0.perplexity, e1.perplexity
    );
    trainer
        .history()
        .loss_plot()?
        .save(format!("{out}/loss.svg"))?;
    let peft = trainer.into_model();
    tunelab::peft::save_adapter(&peft, format!("{out}/adapter"), "default")?;

    println!("== after training");
    let after_persona = ask(peft.base_model(), &tok, &heldout)?;
    let q = peft
        .lora_layer("model.layers.0.self_attn.q_proj")?
        .verify_merge()?;
    let merged = peft.merge_and_unload(true)?;
    println!("== merged model");
    let merged_persona = ask(&merged, &tok, &heldout)?;
    println!(
        "persona in held-out answers: before {before_persona}/{n}, after {after_persona}/{n}, merged {merged_persona}/{n}; verify_merge(layer 0 q_proj) = {q:e}",
        n = heldout.len()
    );
    Ok(())
}
