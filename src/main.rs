//! The `tunelab` command line: thin, over the library.
//!
//! ```text
//! tunelab generate --model M --prompt P      # continue a prompt
//! tunelab chat [--model M]                   # interactive chat, streaming; /reset, /exit
//! tunelab info [M]                           # config, parameters by module kind, dtype, bytes
//! ```
//! Without `--model`, the default model (SmolLM2-135M-Instruct) is resolved as the library
//! describes: `TUNELAB_MODEL`, the hub cache, the hub, then the offline PyPI fallback.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tunelab::model::generate::FinishReason;
use tunelab::model::summary::ModelSummary;
use tunelab::{GenerationConfig, LoadOptions, Message, Pretrained};

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
        /// Render the prompt as one user message through the chat template.
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
    }
    Ok(())
}
