//! The trainer on the tiny random model: the loss falls; a resumed run continues the exact
//! loss curve; gradient accumulation equals a larger batch; a NaN stops training and keeps
//! the last checkpoint; bad output directories are reported; full fine-tuning shares the loop;
//! gradient checkpointing gives the same gradients.

mod common;

use std::cell::Cell;
use std::path::Path;
use tunelab::peft::PeftMethod;

use candle_core::{Tensor, Var};
use common::tiny;
use tunelab::data::batch::{BatchConfig, Batcher, LossOn, TokenizedExample, IGNORE_INDEX};
use tunelab::model::linear::Linear;
use tunelab::model::llama::{ForwardOptions, Llama};
use tunelab::peft::{get_peft_model_seeded, LoraConfig, PeftModel, TargetModules};
use tunelab::train::{
    FullFineTune, IntervalStrategy, ProgressStyle, SchedulerType, Trainable, Trainer, TrainingArgs,
};
use tunelab::{Error, Result};

/// Examples of a learnable pattern: a "prompt" of 3 ids (label -100) whose last one, k, picks
/// one of three fixed runs `10 + 40k + 7j` as the "completion". Lengths vary (padding).
fn examples(n: usize) -> Vec<TokenizedExample> {
    (0..n)
        .map(|i| {
            let k = (i % 3) as u32;
            let len = 6 + i % 5;
            let prompt = [250u32, (i * 37 % 200) as u32, k];
            let ids: Vec<u32> = prompt
                .iter()
                .copied()
                .chain((0..len as u32).map(|j| (10 + 40 * k + 7 * j) % 256))
                .collect();
            let labels = ids
                .iter()
                .enumerate()
                .map(|(t, &id)| if t < 3 { IGNORE_INDEX } else { id as i64 })
                .collect();
            TokenizedExample {
                input_ids: ids,
                labels,
            }
        })
        .collect()
}

fn batcher(ex: Vec<TokenizedExample>, batch: usize, shuffle: bool) -> Batcher {
    let cfg = BatchConfig::default()
        .with_max_length(64)
        .with_loss_on(LossOn::Completion)
        .with_batch_size(batch)
        .with_shuffle(shuffle)
        .with_seed(5);
    Batcher::new(ex, &cfg, 0).unwrap()
}

/// The tiny model with its (tied) embeddings scaled from std 0.02 to 0.2: with RMSNorm's unit
/// gain frozen, |logit| ≤ ‖h‖·‖e‖ = 8 · 0.16 would keep every LoRA-reachable loss near ln 256.
fn tiny_trainable(seed: u64) -> Llama {
    let mut m = tiny(seed);
    m.embed_tokens = (&m.embed_tokens * 10.0).unwrap();
    let head = tunelab::Dense::new(m.embed_tokens.clone(), None).unwrap();
    m.replace_linear("lm_head", Linear::new(head)).unwrap();
    m
}

fn lora(seed: u64, dropout: f64) -> PeftModel {
    let mut cfg = LoraConfig::new(8, 16.0, TargetModules::all_linear());
    cfg.lora_dropout = dropout;
    get_peft_model_seeded(tiny_trainable(seed), &cfg, seed).unwrap()
}

fn args(dir: &Path) -> TrainingArgs {
    TrainingArgs {
        output_dir: dir.to_path_buf(),
        learning_rate: 1e-2,
        per_device_train_batch_size: 4,
        save_strategy: IntervalStrategy::No,
        logging_steps: 5,
        progress: ProgressStyle::Silent,
        ..TrainingArgs::default()
    }
}

#[test]
fn lora_training_lowers_eval_loss_cell_by_cell() {
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArgs {
        max_steps: Some(40),
        warmup_steps: 4,
        ..args(dir.path())
    };
    let mut t = Trainer::new(
        lora(1, 0.05),
        a,
        batcher(examples(32), 4, true),
        Some(batcher(examples(40)[32..].to_vec(), 4, false)),
    )
    .unwrap();
    let before = t.evaluate().unwrap();
    // Two "cells": the second continues where the first stopped.
    let first = t.train_steps(15).unwrap();
    assert_eq!((first.steps, first.global_step), (15, 15));
    let rest = t.train().unwrap();
    assert_eq!((rest.steps, rest.global_step), (25, 40));
    let after = t.evaluate().unwrap();
    println!(
        "eval loss {:.4} -> {:.4}",
        before.eval_loss, after.eval_loss
    );
    assert!(
        after.eval_loss < 0.7 * before.eval_loss,
        "eval loss {} -> {}",
        before.eval_loss,
        after.eval_loss
    );
    let h = t.history();
    assert_eq!(h.steps.len(), 40);
    assert_eq!(h.evals.len(), 2);
    // Linear schedule with 4 warmup steps: lr(k) = k/4 · peak, then linear decay to 0.
    assert_eq!(h.steps[0].lr, 0.0);
    assert!((h.steps[2].lr - 0.5 * 1e-2).abs() < 1e-12);
    assert!((h.steps[39].lr - 1e-2 * (40.0 - 39.0) / 36.0).abs() < 1e-12);
    assert!(h
        .steps
        .iter()
        .all(|s| s.grad_norm.is_finite() && s.tokens > 0));
    let svg = h.loss_plot().unwrap();
    assert!(svg.as_str().contains("train loss") && svg.as_str().contains("eval loss"));
    // Eight batches per epoch: 40 steps are 5 epochs.
    assert!((h.steps[39].epoch - 5.0).abs() < 1e-12);
}

#[test]
fn train_epoch_stops_at_the_epoch_end() {
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArgs {
        num_train_epochs: 2.0,
        gradient_accumulation_steps: 3,
        ..args(dir.path())
    };
    // 8 batches, accumulation 3: steps of 3, 3, 2 micro-batches = 3 steps per epoch.
    let mut t = Trainer::new(lora(2, 0.0), a, batcher(examples(32), 4, true), None).unwrap();
    assert_eq!(t.total_steps(), 6);
    let out = t.train_epoch().unwrap();
    assert_eq!(out.steps, 3);
    assert_eq!(t.state().epoch, 1);
    assert_eq!(t.state().batch_in_epoch, 0);
    assert!(matches!(t.evaluate(), Err(Error::Input(_))));
}

/// Kill a run after step 3, resume from its checkpoint in a new process-like setup (new model
/// with the same init, new trainer): steps 4..6 have the losses of the uninterrupted run.
#[test]
fn resume_continues_the_exact_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let a = |out: &Path| TrainingArgs {
        max_steps: Some(7),
        gradient_accumulation_steps: 2,
        save_strategy: IntervalStrategy::Steps,
        save_steps: 3,
        lr_scheduler_type: SchedulerType::Cosine,
        warmup_ratio: 0.2,
        ..args(out)
    };
    // Dropout 0.1: the masks must be reproduced too.
    let full_dir = dir.path().join("full");
    let mut full = Trainer::new(
        lora(3, 0.1),
        a(&full_dir),
        batcher(examples(20), 3, true),
        None,
    )
    .unwrap();
    full.train().unwrap();
    let want = full.history().losses();

    let killed_dir = dir.path().join("killed");
    let mut killed = Trainer::new(
        lora(3, 0.1),
        a(&killed_dir),
        batcher(examples(20), 3, true),
        None,
    )
    .unwrap();
    killed.train_steps(4).unwrap(); // checkpoint at 3, then one more step, then "killed"
    drop(killed);

    let mut resumed = Trainer::new(
        lora(3, 0.1),
        a(&killed_dir),
        batcher(examples(20), 3, true),
        None,
    )
    .unwrap();
    let ck = tunelab::train::latest_checkpoint(&killed_dir)
        .unwrap()
        .unwrap();
    assert!(ck.ends_with("checkpoint-3"), "{}", ck.display());
    resumed.resume_from_checkpoint(&ck).unwrap();
    assert_eq!(resumed.global_step(), 3);
    resumed.train().unwrap();
    let got = resumed.history().losses();
    assert_eq!(got.len(), 7);
    for k in 0..7 {
        assert!(
            (got[k] - want[k]).abs() <= 1e-6,
            "step {}: resumed {} vs uninterrupted {}",
            k + 1,
            got[k],
            want[k]
        );
    }
    // Epoch boundary crossed (7 batches per epoch, 4 steps per epoch) and the data differ
    // between steps: the check is not vacuous.
    assert!(want.windows(2).all(|w| w[0] != w[1]));
    // The final checkpoints hold the same adapter.
    let read = |p: &Path| {
        candle_core::safetensors::load(
            p.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (x, y) = (
        read(&full_dir.join("checkpoint-6")),
        read(&killed_dir.join("checkpoint-6")),
    );
    for (k, v) in &x {
        assert_eq!(common::max_abs_diff(v, &y[k]), 0.0, "{k}");
    }
}

/// Four micro-batches of one sequence, accumulated, give the gradient of one batch of four
/// (the loss is divided by the step's target count, not each micro-batch's).
#[test]
fn gradient_accumulation_equals_a_four_times_larger_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ex = examples(4); // lengths 9..12: the big batch is padded
    let accumulated = TrainingArgs {
        gradient_accumulation_steps: 4,
        ..args(dir.path())
    };
    let mut a = Trainer::new(
        lora(4, 0.0),
        accumulated,
        batcher(ex.clone(), 1, false),
        None,
    )
    .unwrap();
    let mut b = Trainer::new(lora(4, 0.0), args(dir.path()), batcher(ex, 4, false), None).unwrap();
    // B = 0 at init makes ∂L/∂A zero; take one step first so both factors have gradients.
    a.train_steps(1).unwrap();
    b.train_steps(1).unwrap();
    let (la, ga) = a.next_step_gradients().unwrap();
    let (lb, gb) = b.next_step_gradients().unwrap();
    assert!((la - lb).abs() < 1e-5 * lb.abs(), "loss {la} vs {lb}");
    let mut worst = 0.0f32;
    for ((na, ta), (nb, tb)) in ga.iter().zip(&gb) {
        assert_eq!(na, nb);
        let (ta, tb) = (ta.as_ref().unwrap(), tb.as_ref().unwrap());
        worst = worst.max(common::max_rel_diff(ta, tb));
    }
    println!("max relative gradient difference {worst:e}");
    // f32 sums in another order (the big batch is padded to 12 positions, so every matmul has
    // other shapes): measured 5.4e-7 of the largest gradient of a tensor at worst.
    assert!(worst < 5e-6, "{worst}");
}

/// The largest relative difference between two runs' gradients, name by name.
fn worst_rel(ga: &[(String, Option<Tensor>)], gb: &[(String, Option<Tensor>)]) -> f32 {
    let mut worst = 0.0f32;
    for ((na, ta), (nb, tb)) in ga.iter().zip(gb) {
        assert_eq!(na, nb);
        match (ta, tb) {
            (Some(ta), Some(tb)) => worst = worst.max(common::max_rel_diff(ta, tb)),
            (None, None) => {}
            _ => panic!("{na}: a gradient on one side only"),
        }
    }
    worst
}

/// Gradient checkpointing gives the gradients and losses of the ordinary backward: LoRA with
/// seeded dropout (the re-run layers draw the same masks), packing-free padded batches, two
/// steps; and full fine-tuning, whose embeddings get their gradient after the layers'.
#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let with = |on: bool| TrainingArgs {
        gradient_checkpointing: on,
        gradient_accumulation_steps: 2,
        ..args(dir.path())
    };
    let mut a = Trainer::new(
        lora(6, 0.1),
        with(false),
        batcher(examples(16), 4, true),
        None,
    )
    .unwrap();
    let mut b = Trainer::new(
        lora(6, 0.1),
        with(true),
        batcher(examples(16), 4, true),
        None,
    )
    .unwrap();
    a.train_steps(2).unwrap();
    b.train_steps(2).unwrap();
    let (la, lb) = (a.history().losses(), b.history().losses());
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "losses {la:?} vs {lb:?}");
    }
    let (_, ga) = a.next_step_gradients().unwrap();
    let (_, gb) = b.next_step_gradients().unwrap();
    let worst = worst_rel(&ga, &gb);
    println!("LoRA: max relative gradient difference {worst:e}");
    assert!(worst < 1e-5, "{worst}");

    let full = |on: bool| {
        let model = FullFineTune::new(tiny(9)).unwrap();
        Trainer::new(model, with(on), batcher(examples(8), 4, false), None).unwrap()
    };
    let (mut a, mut b) = (full(false), full(true));
    let (_, ga) = a.next_step_gradients().unwrap();
    let (_, gb) = b.next_step_gradients().unwrap();
    assert!(ga
        .iter()
        .any(|(n, g)| n.contains("embed_tokens") && g.is_some()));
    let worst = worst_rel(&ga, &gb);
    println!("full fine-tuning: max relative gradient difference {worst:e}");
    assert!(worst < 1e-5, "{worst}");
}

/// A PEFT model whose auxiliary loss turns NaN at a given step.
struct NanAt {
    inner: PeftModel,
    calls: Cell<usize>,
    at: usize,
}

impl Trainable for NanAt {
    fn llama(&self) -> &Llama {
        self.inner.base_model()
    }
    fn hidden_states(&self, ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        PeftMethod::hidden_states(&self.inner, ids, opts)
    }
    fn lm_head(&self) -> &Linear {
        PeftMethod::lm_head(&self.inner)
    }
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        PeftMethod::named_trainable_vars(&self.inner)
    }
    fn set_training(&mut self, on: bool) {
        PeftMethod::set_training(&mut self.inner, on)
    }
    fn aux_loss(&self) -> Result<Option<Tensor>> {
        self.calls.set(self.calls.get() + 1);
        let v = if self.calls.get() >= self.at {
            f32::NAN
        } else {
            0.0
        };
        Ok(Some(Tensor::new(v, &candle_core::Device::Cpu)?))
    }
    fn save_trained(&self, dir: &Path) -> Result<()> {
        self.inner.save_pretrained(dir)
    }
    fn describe(&self) -> String {
        "NaN test".into()
    }
}

#[test]
fn nan_loss_stops_training_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let a = TrainingArgs {
        max_steps: Some(10),
        save_strategy: IntervalStrategy::Steps,
        save_steps: 2,
        ..args(dir.path())
    };
    let model = NanAt {
        inner: lora(5, 0.0),
        calls: Cell::new(0),
        at: 3,
    };
    let mut t = Trainer::new(model, a, batcher(examples(16), 4, true), None).unwrap();
    let err = t.train_steps(5).unwrap_err();
    let msg = err.to_string();
    let Error::TrainingStopped {
        step,
        last_checkpoint,
        ..
    } = &err
    else {
        panic!("expected Error::TrainingStopped: {msg}");
    };
    assert_eq!(*step, 3, "{msg}");
    assert!(
        last_checkpoint
            .as_deref()
            .is_some_and(|p| p.ends_with("checkpoint-2")),
        "{msg}"
    );
    assert!(
        msg.contains("step 3") && msg.contains("checkpoint-2"),
        "{msg}"
    );
    assert_eq!(t.global_step(), 2);
    let ck = dir.path().join("checkpoint-2");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["checkpoint-2".to_string()],
        "no temp files left"
    );
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "trainable.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ck.join(f).exists(), "{f}");
    }
}

#[test]
fn unwritable_output_dir_is_reported_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = file.join("out");
    let a = TrainingArgs {
        save_strategy: IntervalStrategy::Steps,
        ..args(&out)
    };
    let err = Trainer::new(lora(6, 0.0), a, batcher(examples(8), 4, false), None)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("a-file/out") && msg.contains("not writable"),
        "{msg}"
    );
}

#[test]
fn bad_arguments_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (field, a) in [
        (
            "gradient_accumulation_steps",
            TrainingArgs {
                gradient_accumulation_steps: 0,
                ..args(dir.path())
            },
        ),
        (
            "warmup_ratio",
            TrainingArgs {
                warmup_ratio: 1.5,
                ..args(dir.path())
            },
        ),
        (
            "bf16",
            TrainingArgs {
                bf16: true,
                ..args(dir.path())
            },
        ),
    ] {
        let err = Trainer::new(lora(7, 0.0), a, batcher(examples(8), 4, false), None)
            .err()
            .unwrap();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
}

#[test]
fn full_fine_tuning_shares_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let model = FullFineTune::new(tiny(8)).unwrap();
    let n = model.num_trainable();
    assert_eq!(n, tiny(8).num_parameters());
    let a = TrainingArgs {
        max_steps: Some(25),
        learning_rate: 3e-3,
        ..args(dir.path())
    };
    let mut t = Trainer::new(model, a, batcher(examples(32), 4, true), None).unwrap();
    t.train().unwrap();
    let h = t.history();
    let (first, last) = (h.mean_loss(1, 5).unwrap(), h.mean_loss(21, 25).unwrap());
    assert!(last < 0.7 * first, "loss {first} -> {last}");
    // Tied embeddings stay tied: lm_head is the embedding matrix.
    let m = t.model().llama();
    let head = m.lm_head.dense_weight().unwrap();
    assert_eq!(common::max_abs_diff(&head, &m.embed_tokens), 0.0);
    // Saving writes a HF model directory.
    let out = dir.path().join("saved");
    t.model().save_trained(&out).unwrap();
    assert!(out.join("model.safetensors").exists() && out.join("config.json").exists());
}
