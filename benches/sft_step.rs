//! One LoRA training step of SmolLM2-135M-Instruct on the CPU, the figure issue 6 compares with
//! PyTorch + peft (`benches/peer_torch_sft_step.py`, both driven by `benches/run_sft_step.sh`).
//!
//! The step: batch 4 × 256 tokens, labels on every token (4 × 255 targets), LoRA r = 16, α = 32,
//! dropout 0 on all linear layers, f32, AdamW lr 1e-4 (constant, no weight decay), gradient
//! norm clipped to 1.0 — `Trainer::train_steps(1)`, timed from outside. The model is the cached
//! `SmolLM2-135M-Instruct.Q4_1.gguf` dequantized to f32 (`Pretrained::load(None, ..)`); the
//! token ids come from a 64-bit LCG that the Python peer reproduces, so both train on the same
//! rows (the timings do not depend on the values).
//!
//! ```text
//! cargo bench --profile dev --bench sft_step -- [--runs 5] [--warmup 1] [--profile]
//! cargo bench --profile dev --bench sft_step -- --export DIR   # the f32 model as a HF dir
//! cargo bench --profile dev --bench sft_step -- --gemm         # the one-layer experiment only
//! cargo bench --profile dev --bench sft_step -- --gradient-checkpointing   # the trainer's option
//! ```
//!
//! Prints one JSON line: the median step time and tokens/s over `--runs` steps after `--warmup`
//! untimed ones, the median CPU time per step (user + system, both threads: steadier than wall
//! time on a shared machine) and tokens per CPU second, and memory from `/proc/self/status`: `rss_after_load_mb` (VmRSS once the model
//! is loaded and wrapped), `peak_rss_process_mb` (VmHWM at the end: the whole process, model
//! load included) and `peak_rss_training_mb` (VmHWM of the training steps alone: the high-water
//! mark is reset through `/proc/self/clear_refs` after loading, so a load-time peak does not
//! hide it). `--profile` replaces the trainer's steps by the same step taken apart with the
//! library's public pieces — forward (body, then lm_head + loss), backward, clipping, AdamW,
//! with the memory high-water mark after forward and after backward — and adds a one-layer
//! experiment on what a matmul's backward costs when the weight is frozen.

mod common;
use common::median;
use tunelab::peft::PeftMethod;

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use tunelab::data::batch::{BatchConfig, Batcher, TokenizedExample};
use tunelab::model::linear::linear_forward;
use tunelab::model::pretrained::{LoadOptions, Pretrained};
use tunelab::peft::{get_peft_model_seeded, LoraConfig, PeftModel, TargetModules};
use tunelab::train::loss::{cross_entropy_sum, shifted_targets};
use tunelab::train::{
    clip_grad_norm, AdamW, AdamWConfig, IntervalStrategy, ProgressStyle, SchedulerType, Trainer,
    TrainingArgs,
};

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`) in MB (1e6 bytes).
fn status_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb * 1024.0 / 1e6)
}

/// CPU seconds (user + system, all threads) of this process so far, from `/proc/self/stat`
/// (clock ticks of 1/100 s). A step's CPU time changes less than its wall time when other
/// processes share the cores.
fn cpu_seconds() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0); false where not allowed.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Row `row` of the benchmark data: `len` ids from a 64-bit LCG seeded with the row number
/// (`x ← x·6364136223846793005 + 1442695040888963407 mod 2⁶⁴`, id = (x >> 33) mod vocab).
/// `peer_torch_sft_step.py` computes the same rows.
fn lcg_row(row: u64, len: usize, vocab: u64) -> Vec<u32> {
    let mut x = row.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((x >> 33) % vocab) as u32
        })
        .collect()
}

/// The step taken apart (seconds): forward through the body, lm_head + loss on the target
/// rows, backward, clipping, AdamW — as `Trainer::optimizer_step` does it, one micro-batch.
fn profile_step(
    model: &mut PeftModel,
    batcher: &Batcher,
    opt: &mut AdamW,
    i: usize,
) -> tunelab::Result<([f64; 5], [f64; 3])> {
    let dev = Device::Cpu;
    let batch = batcher.batch(0, i, &dev)?;
    let (rows, tgt) = shifted_targets(&batch.labels.to_vec2::<i64>()?)?;
    let n = rows.len() as f64;
    model.train();
    let rss0 = status_mb("VmRSS:");
    reset_hwm();
    let t0 = Instant::now();
    let h = model.hidden_states(&batch.input_ids, &batch.forward_options())?; // (B, T, C)
    let t1 = Instant::now();
    let (b, t, c) = h.dims3()?;
    let flat = h.narrow(1, 0, t - 1)?.reshape((b * (t - 1), c))?;
    let picked = flat.index_select(&Tensor::new(rows.as_slice(), &dev)?, 0)?;
    let logits = model.lm_head().forward(&picked)?; // (B·(T-1), V)
    let loss = (cross_entropy_sum(&logits, &Tensor::new(tgt.as_slice(), &dev)?)? / n)?;
    let _ = loss.to_scalar::<f32>()?;
    let t2 = Instant::now();
    let hwm_fwd = status_mb("VmHWM:");
    let g = loss.backward()?;
    let hwm_bwd = status_mb("VmHWM:");
    let mut grads: Vec<Option<Tensor>> = opt
        .vars()
        .iter()
        .map(|(_, v)| g.get(v.as_tensor()).cloned())
        .collect();
    let t3 = Instant::now();
    clip_grad_norm(&mut grads, 1.0)?;
    let t4 = Instant::now();
    opt.step(&grads, 1e-4)?;
    let t5 = Instant::now();
    model.eval();
    let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
    let times = [s(t0, t1), s(t1, t2), s(t2, t3), s(t3, t4), s(t4, t5)];
    Ok((times, [rss0, hwm_fwd, hwm_bwd]))
}

/// One projection with a frozen weight, x `(4, 256, in)` needing a gradient, W `[out, in]`
/// not: forward + backward of `Σ (x·Wᵀ) ⊙ g` in ms, (a) with candle's own `broadcast_matmul`,
/// whose backward also computes (and keeps) an unused ∂W per batch element, and (b) with the
/// library's `linear_forward` (what every layer of the model calls); and (c) the ∂x matmul
/// alone, the only product PyTorch's backward computes for a weight with requires_grad=False;
/// then the forward alone, batched (as the model calls it) and as one flattened GEMM.
fn frozen_weight_backward(out: usize, inp: usize, runs: usize) -> tunelab::Result<[f64; 5]> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 256, inp), &dev)?)?;
    let w = Tensor::randn(0f32, 0.02, (out, inp), &dev)?;
    let gy = Tensor::randn(0f32, 1.0, (4, 256, out), &dev)?;
    let ms = |f: &mut dyn FnMut()| 1e3 * common::time(runs, f);
    let plain = ms(&mut || {
        let y = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    });
    let library = ms(&mut || {
        let y = linear_forward(x.as_tensor(), &w, None).unwrap();
        (y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    });
    let g2 = gy.reshape((1024, out))?;
    let dx = ms(&mut || {
        g2.matmul(&w).unwrap();
    });
    // Forward only: the (4, 256, in) input as the model passes it (a batched matmul against
    // the broadcast Wᵀ), and flattened to one (1024, in) GEMM.
    let x3 = x.as_tensor().detach();
    let x2 = x3.reshape((1024, inp))?;
    let wt = w.t()?;
    let fwd_3d = ms(&mut || {
        linear_forward(&x3, &w, None).unwrap();
    });
    let fwd_2d = ms(&mut || {
        x2.matmul(&wt).unwrap();
    });
    Ok([plain, library, dx, fwd_3d, fwd_2d])
}

/// [`frozen_weight_backward`] for SmolLM2's projection shapes and its lm_head, as JSON rows.
fn frozen_table() -> tunelab::Result<serde_json::Value> {
    let mut layers = Vec::new();
    for (o, i) in [(576usize, 576usize), (1536, 576), (576, 1536), (49152, 576)] {
        let [plain, library, dx, fwd_3d, fwd_2d] = frozen_weight_backward(o, i, 3)?;
        layers.push(serde_json::json!({
            "weight": format!("{o}x{i}"), "candle_matmul_fwd_bwd_ms": plain,
            "linear_forward_fwd_bwd_ms": library, "dx_matmul_ms": dx,
            "linear_forward_3d_ms": fwd_3d, "matmul_2d_ms": fwd_2d,
        }));
    }
    Ok(layers.into())
}

fn main() -> tunelab::Result<()> {
    let runs: usize = common::arg("--runs", 5);
    let warmup: usize = common::arg("--warmup", 1);
    let seq: usize = common::arg("--seq", 256);
    let batch: usize = common::arg("--batch", 4);
    let export: String = common::arg("--export", String::new());
    let profile = std::env::args().any(|a| a == "--profile");
    let checkpointing = std::env::args().any(|a| a == "--gradient-checkpointing");

    if std::env::args().any(|a| a == "--gemm") {
        // The one-layer experiment alone, without loading the model.
        println!(
            "{}",
            serde_json::json!({ "frozen_weight_backward": frozen_table()? })
        );
        return Ok(());
    }
    let t = Instant::now();
    let lm = Pretrained::load(None, &LoadOptions::default())?;
    let load_s = t.elapsed().as_secs_f64();
    if !export.is_empty() {
        lm.save_pretrained(&export)?;
        println!("{}", serde_json::json!({ "exported": export }));
        return Ok(());
    }
    let vocab = lm.model.config().vocab_size as u64;
    let pad = tunelab::data::batch::pad_token_id(&lm.tokenizer)?;
    let lcfg = LoraConfig::new(16, 32.0, TargetModules::all_linear()); // dropout 0
    let peft = get_peft_model_seeded(lm.model, &lcfg, 0)?;
    let trainable = peft.trainable_parameters().trainable;

    // warmup + runs steps of `batch` distinct rows each; profile steps reuse the first rows.
    let steps = warmup + runs;
    let examples: Vec<TokenizedExample> = (0..(steps * batch) as u64)
        .map(|r| TokenizedExample::full(lcg_row(r, seq, vocab)))
        .collect();
    let bcfg = BatchConfig::default()
        .with_max_length(seq)
        .with_batch_size(batch)
        .with_shuffle(false);
    let batcher = Batcher::new(examples, &bcfg, pad)?;
    let mut args = TrainingArgs::new(std::env::temp_dir().join("tunelab-sft-step-bench"));
    args.max_steps = Some(steps);
    args.per_device_train_batch_size = batch;
    args.learning_rate = 1e-4;
    args.lr_scheduler_type = SchedulerType::Constant;
    args.max_grad_norm = 1.0;
    args.max_length = seq;
    args.full_sequence_loss = true;
    args.save_strategy = IntervalStrategy::No;
    args.progress = ProgressStyle::Silent;
    args.gradient_checkpointing = checkpointing;
    let mut trainer = Trainer::new(peft, args, batcher.clone(), None)?;

    let rss_after_load = status_mb("VmRSS:");
    let hwm_load = status_mb("VmHWM:");
    let hwm_reset = reset_hwm();

    let tokens = (batch * seq) as f64;
    let mut report = serde_json::json!({
        "impl": "tunelab",
        "gradient_checkpointing": checkpointing,
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32)",
        "threads": candle_core::utils::get_num_threads(),
        "batch": batch, "seq": seq, "runs": runs, "warmup": warmup,
        "trainable": trainable,
        "load_s": load_s,
        "rss_after_load_mb": rss_after_load,
        "peak_rss_load_mb": hwm_load,
    });

    if profile {
        // Instead of the trainer's steps: the same step in pieces. Memory from the first step
        // (a fresh process: what the step itself holds), times from the ones after warm-up.
        let mut model = trainer.into_model();
        let vars = model.named_trainable_vars();
        let adam = AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let mut opt = AdamW::new(vars, adam);
        let mut parts: [Vec<f64>; 5] = Default::default();
        let mut mem = [0.0; 3];
        for i in 0..steps {
            let (p, m) = profile_step(&mut model, &batcher, &mut opt, i)?;
            if i == 0 {
                mem = m;
            }
            if i >= warmup {
                for (v, x) in parts.iter_mut().zip(p) {
                    v.push(x);
                }
            }
        }
        let names = ["body_fwd", "lm_head_loss_fwd", "backward", "clip", "adamw"];
        let mut prof = serde_json::Map::new();
        for (n, v) in names.iter().zip(parts) {
            prof.insert(format!("{n}_s"), median(v).into());
        }
        prof.insert("rss_before_first_step_mb".into(), mem[0].into());
        prof.insert("peak_rss_first_forward_mb".into(), mem[1].into());
        prof.insert("peak_rss_first_backward_mb".into(), mem[2].into());
        report["profile"] = prof.into();
        report["frozen_weight_backward"] = frozen_table()?;
    } else {
        let mut secs = Vec::new();
        let mut cpu = Vec::new();
        let mut losses = Vec::new();
        for i in 0..steps {
            let (t, c) = (Instant::now(), cpu_seconds());
            let out = trainer.train_steps(1)?;
            let s = t.elapsed().as_secs_f64();
            losses.push(out.last_loss);
            if i >= warmup {
                secs.push(s);
                cpu.push(cpu_seconds() - c);
            }
        }
        let cpu_s = median(cpu);
        report["cpu_s"] = cpu_s.into();
        report["tokens_per_cpu_s"] = (tokens / cpu_s).into();
        let peak_training = status_mb("VmHWM:");
        let step_s = median(secs.clone());
        report["step_s"] = step_s.into();
        report["tokens_per_s"] = (tokens / step_s).into();
        report["steps_s"] = secs.into();
        report["losses"] = losses.into();
        report["peak_rss_training_mb"] = if hwm_reset { peak_training } else { f64::NAN }.into();
    }
    // Last: the whole process, load included.
    report["peak_rss_process_mb"] = status_mb("VmHWM:").max(hwm_load).into();
    println!("{report}");
    Ok(())
}
