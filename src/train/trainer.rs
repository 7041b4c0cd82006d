//! The SFT trainer that trains cell by cell: `train_steps(n)` runs n optimizer steps and returns;
//! the next call continues with the same optimizer state, schedule position and data position.
//!
//! One optimizer step (transformers' `Trainer.training_step` × `gradient_accumulation_steps`):
//!
//! ```text
//! for each micro-batch j of the step:      N = targets of all micro-batches together
//!     h = model(input_ids)                  hidden states (B, T, C)
//!     L_j = Σ CE(lm_head(h[t]), labels[t+1]) / N  (+ aux loss / micro-batches)
//!     g += ∂L_j/∂θ                          gradients summed over micro-batches
//! ‖g‖ → clip to max_grad_norm;  θ ← AdamW(θ, g, lr(k));  k += 1
//! ```
//!
//! Dividing by the step's N (not each micro-batch's) makes accumulation over four micro-batches
//! equal to one batch four times larger. A NaN or infinite loss or gradient norm stops training
//! before the update, with an error naming the step; nothing is written, so the last checkpoint
//! stays the last good one.

use std::path::{Path, PathBuf};
use std::time::Instant;

mod checkpointing;

use candle_core::{Device, Tensor};

use super::args::{IntervalStrategy, TrainingArgs};
use super::checkpoint::{check_writable, TrainerState};
use super::history::{EvalLog, History, StepLog};
use super::loss::{cross_entropy_sum, shifted_targets};
use super::optim::{clip_grad_norm, AdamW, AdamWConfig};
use super::progress::Progress;
use super::schedule::LrSchedule;
use super::trainable::Trainable;
use crate::data::batch::{Batch, Batcher};
use crate::peft::dropout::DropoutRng;
use crate::{Error, Result};

/// What one `train_*` call did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutput {
    /// Steps run by this call.
    pub steps: usize,
    /// The global step after it.
    pub global_step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Mean loss of this call's steps.
    pub mean_loss: f64,
    /// Loss of the last step.
    pub last_loss: f64,
    /// Wall time.
    pub seconds: f64,
    /// Tokens per second over the call.
    pub tokens_per_second: f64,
}

impl std::fmt::Display for TrainOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} steps ({}/{}) in {:.1} s · mean loss {:.4} · last {:.4} · {:.0} tok/s",
            self.steps,
            self.global_step,
            self.total_steps,
            self.seconds,
            self.mean_loss,
            self.last_loss,
            self.tokens_per_second
        )
    }
}

/// Gradients by parameter name (`None`: no gradient reached it).
pub type NamedGradients = Vec<(String, Option<Tensor>)>;

/// Gradients and numbers of one optimizer step's micro-batches.
struct Accumulated {
    grads: Vec<Option<Tensor>>,
    /// Mean cross-entropy over the step's targets, plus the mean auxiliary loss.
    loss: f64,
    aux_loss: Option<f64>,
    tokens: usize,
    targets: usize,
}

/// The trainer. Between cells, read the model with [`Trainer::model`] (generate with it,
/// look at it); take it back with [`Trainer::into_model`] to merge or save it. It is not a
/// public field: the optimizer holds its trainable tensors, and a model swapped behind the
/// trainer's back would not be the one trained.
pub struct Trainer<M: Trainable> {
    /// The model being trained.
    model: M,
    args: TrainingArgs,
    train: Batcher,
    eval: Option<Batcher>,
    optimizer: AdamW,
    schedule: LrSchedule,
    state: TrainerState,
    dropout: DropoutRng,
    device: Device,
    last_checkpoint: Option<PathBuf>,
}

impl<M: Trainable> Trainer<M> {
    /// A trainer for `model` on the `train` batches (and `eval` ones for [`Trainer::evaluate`]).
    /// The batcher's own batch size and order rule the data; `args` rules the optimization.
    /// Errors: bad arguments (naming the field), no trainable parameter, an empty dataset, an
    /// output directory that cannot be written (when checkpoints are to be saved).
    pub fn new(
        mut model: M,
        args: TrainingArgs,
        train: Batcher,
        eval: Option<Batcher>,
    ) -> Result<Self> {
        args.validate()?;
        let dtype = model.llama().dtype();
        for (flag, on, want) in [
            ("bf16", args.bf16, candle_core::DType::BF16),
            ("fp16", args.fp16, candle_core::DType::F16),
        ] {
            if on && dtype != want {
                return Err(Error::Config {
                    field: flag.into(),
                    msg: format!(
                        "the model computes in {dtype:?}; load it with dtype {want:?} to train in \
                         {flag} (trainable weights stay f32 either way)"
                    ),
                });
            }
        }
        let vars = model.named_trainable_vars();
        if vars.is_empty() {
            return Err(Error::Input(format!(
                "{} has no trainable parameters",
                model.describe()
            )));
        }
        let nb = train.num_batches();
        if nb == 0 {
            return Err(Error::Input("the training dataset has no batches".into()));
        }
        if args.save_strategy != IntervalStrategy::No {
            check_writable(&args.output_dir)?;
        }
        let per_epoch = nb.div_ceil(args.gradient_accumulation_steps);
        let total = match args.max_steps {
            Some(s) => s,
            None => ((args.num_train_epochs * per_epoch as f64).ceil() as usize).max(1),
        };
        let schedule = LrSchedule {
            kind: args.lr_scheduler_type,
            peak: args.learning_rate,
            warmup: args.warmup_for(total),
            total,
        };
        let optimizer = AdamW::new(
            vars,
            AdamWConfig {
                beta1: args.adam_beta1,
                beta2: args.adam_beta2,
                eps: args.adam_epsilon,
                weight_decay: args.weight_decay,
            },
        );
        let dropout = DropoutRng::new(args.seed);
        model.set_dropout_rng(&dropout);
        let device = model.llama().device().clone();
        let state = TrainerState {
            global_step: 0,
            total_steps: total,
            epoch: 0,
            batch_in_epoch: 0,
            batches_per_epoch: nb,
            tokens_seen: 0,
            args: args.clone(),
            history: History::default(),
        };
        Ok(Self {
            model,
            args,
            train,
            eval,
            optimizer,
            schedule,
            state,
            dropout,
            device,
            last_checkpoint: None,
        })
    }

    /// The model being trained (in evaluation mode between `train_*` calls).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The arguments.
    pub fn args(&self) -> &TrainingArgs {
        &self.args
    }

    /// Where the run is.
    pub fn state(&self) -> &TrainerState {
        &self.state
    }

    /// Optimizer steps done.
    pub fn global_step(&self) -> usize {
        self.state.global_step
    }

    /// Steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.state.total_steps
    }

    /// The log: loss, learning rate, gradient norm and tokens/s per step; evaluations.
    pub fn history(&self) -> &History {
        &self.state.history
    }

    /// The schedule.
    pub fn schedule(&self) -> &LrSchedule {
        &self.schedule
    }

    /// The last checkpoint written or resumed from.
    pub fn last_checkpoint(&self) -> Option<&Path> {
        self.last_checkpoint.as_deref()
    }

    /// The model, when training is over.
    pub fn into_model(self) -> M {
        self.model
    }

    /// Runs up to `n` optimizer steps (fewer if the run ends) and returns.
    pub fn train_steps(&mut self, n: usize) -> Result<TrainOutput> {
        self.run(|_, done| done >= n)
    }

    /// Runs to the end of the current epoch.
    pub fn train_epoch(&mut self) -> Result<TrainOutput> {
        let epoch = self.state.epoch;
        self.run(move |s, _| s.epoch != epoch)
    }

    /// Runs to the end (`max_steps` or `num_train_epochs`).
    pub fn train(&mut self) -> Result<TrainOutput> {
        self.run(|_, _| false)
    }

    fn run(&mut self, mut stop: impl FnMut(&TrainerState, usize) -> bool) -> Result<TrainOutput> {
        let progress = Progress::new(
            self.args.progress,
            self.args.logging_steps,
            self.state.global_step,
            self.state.total_steps,
        );
        let start = Instant::now();
        let first = self.state.history.steps.len();
        let mut done = 0;
        let result = (|| -> Result<()> {
            while self.state.global_step < self.state.total_steps && !stop(&self.state, done) {
                let epoch_before = self.state.epoch;
                let log = self.optimizer_step()?;
                done += 1;
                let every = self.args.logging_steps;
                let from = log.step.saturating_sub(every - 1).max(1);
                let smoothed = self
                    .state
                    .history
                    .mean_loss(from, log.step)
                    .unwrap_or(log.loss);
                progress.step(&log, smoothed);
                let epoch_end = self.state.epoch != epoch_before;
                let step = self.state.global_step;
                let due = |s: IntervalStrategy, every: usize| match s {
                    IntervalStrategy::No => false,
                    IntervalStrategy::Steps => step % every == 0,
                    IntervalStrategy::Epoch => epoch_end,
                };
                if self.eval.is_some() && due(self.args.eval_strategy, self.args.eval_every()) {
                    let e = self.evaluate()?;
                    progress.note(&format!(
                        "eval at step {}: loss {:.4} · perplexity {:.2}",
                        e.step, e.eval_loss, e.perplexity
                    ));
                }
                if due(self.args.save_strategy, self.args.save_steps) {
                    let p = self.save_checkpoint()?;
                    progress.note(&format!("saved {}", p.display()));
                }
            }
            Ok(())
        })();
        progress.finish();
        // Evaluation mode between cells (generation, evaluation), also after an error.
        self.model.set_training(false);
        result?;
        let logs = &self.state.history.steps[first..];
        let tokens: usize = logs.iter().map(|l| l.tokens).sum();
        let seconds = start.elapsed().as_secs_f64();
        Ok(TrainOutput {
            steps: done,
            global_step: self.state.global_step,
            total_steps: self.state.total_steps,
            mean_loss: if logs.is_empty() {
                f64::NAN
            } else {
                logs.iter().map(|l| l.loss).sum::<f64>() / logs.len() as f64
            },
            last_loss: logs.last().map_or(f64::NAN, |l| l.loss),
            seconds,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
        })
    }

    /// The micro-batches of the next optimizer step: up to `gradient_accumulation_steps` from
    /// the current position, never across the end of an epoch.
    fn next_micro_batches(&self) -> Result<Vec<Batch>> {
        let nb = self.train.num_batches();
        let from = self.state.batch_in_epoch;
        let to = (from + self.args.gradient_accumulation_steps).min(nb);
        (from..to)
            .map(|i| self.train.batch(self.state.epoch, i, &self.device))
            .collect()
    }

    /// Forward and backward over the micro-batches of optimizer step `step`: the summed
    /// gradients (aligned with the optimizer's parameters) and the step's numbers.
    fn accumulate(&mut self, micro: &[Batch], step: usize) -> Result<Accumulated> {
        let labels: Vec<Vec<Vec<i64>>> = micro
            .iter()
            .map(|b| b.labels.to_vec2::<i64>())
            .collect::<candle_core::Result<_>>()?;
        let targets: Vec<(Vec<u32>, Vec<u32>)> = labels
            .iter()
            .map(|l| shifted_targets(l))
            .collect::<Result<_>>()?;
        let n_targets: usize = targets.iter().map(|t| t.0.len()).sum();
        let vars: Vec<candle_core::Var> = self
            .optimizer
            .vars()
            .iter()
            .map(|(_, v)| v.clone())
            .collect();
        let mut acc = Accumulated {
            grads: vec![None; vars.len()],
            loss: 0.0,
            aux_loss: None,
            tokens: 0,
            targets: n_targets,
        };
        let mut loss_sum = 0.0f64;
        // Training mode for the step (dropout on; LoRA reads A and B, which the step changes).
        self.model.set_training(true);
        let accum = self.args.gradient_accumulation_steps as u64;
        for (j, (batch, (rows, tgt))) in micro.iter().zip(&targets).enumerate() {
            acc.tokens += batch.num_tokens;
            self.dropout.set_tick(step as u64 * accum + j as u64);
            let mut loss = None;
            let mut checkpointed = None;
            if !rows.is_empty() {
                let sum = if self.args.gradient_checkpointing {
                    let (h, ck) = self
                        .model
                        .hidden_states_checkpointed(&batch.input_ids, &batch.forward_options())?;
                    checkpointed = Some(ck);
                    self.head_loss_sum(&h, rows, tgt)?
                } else {
                    self.target_loss_sum(batch, rows, tgt)?
                };
                loss_sum += sum.to_scalar::<f32>()? as f64;
                loss = Some((sum / n_targets as f64)?);
            }
            if let Some(aux) = self.model.aux_loss()? {
                if self.args.gradient_checkpointing {
                    self.model.set_training(false);
                    return Err(Error::Training(
                        "gradient_checkpointing: the model adds an auxiliary loss, whose \
                         gradient a checkpointed forward does not carry back through the layers; \
                         set gradient_checkpointing to false"
                            .into(),
                    ));
                }
                let aux = aux.to_dtype(candle_core::DType::F32)?;
                *acc.aux_loss.get_or_insert(0.0) +=
                    aux.to_scalar::<f32>()? as f64 / micro.len() as f64;
                let aux = (aux / micro.len() as f64)?;
                loss = Some(match loss {
                    Some(l) => (l + aux)?,
                    None => aux,
                });
            }
            let Some(loss) = loss else { continue };
            let g = loss.backward()?;
            add_grads(&mut acc.grads, &vars, &g)?;
            if let Some(ck) = checkpointed {
                if let Some(grad_last) = g.get(ck.last_hidden()).cloned() {
                    drop(g);
                    let grads = &mut acc.grads;
                    self.model
                        .llama()
                        .backward_checkpointed(ck, &grad_last, &mut |store| {
                            add_grads(grads, &vars, store)
                        })?;
                }
            }
        }
        acc.loss = if n_targets > 0 {
            loss_sum / n_targets as f64
        } else {
            0.0
        };
        if let Some(a) = acc.aux_loss {
            acc.loss += a;
        }
        Ok(acc)
    }

    /// The loss and the (unclipped) gradients of the next optimizer step, by parameter name,
    /// without taking the step: for checking slide 35's formulas or gradient accumulation.
    pub fn next_step_gradients(&mut self) -> Result<(f64, NamedGradients)> {
        let micro = self.next_micro_batches()?;
        let acc = self.accumulate(&micro, self.state.global_step);
        self.model.set_training(false);
        let acc = acc?;
        let names = self.optimizer.vars().iter().map(|(n, _)| n.clone());
        Ok((acc.loss, names.zip(acc.grads).collect()))
    }

    fn optimizer_step(&mut self) -> Result<StepLog> {
        let t0 = Instant::now();
        let step = self.state.global_step;
        let micro = self.next_micro_batches()?;
        let Accumulated {
            mut grads,
            loss,
            aux_loss,
            tokens,
            targets,
        } = self.accumulate(&micro, step)?;
        let last_good = || match &self.last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written yet".to_string(),
        };
        if !loss.is_finite() {
            return Err(Error::TrainingStopped {
                step: step + 1,
                last_checkpoint: self.last_checkpoint.clone(),
                msg: format!(
                    "the loss of step {} is {loss}; the weights were not updated and {}. Lower \
                     learning_rate, check the data, or keep max_grad_norm on",
                    step + 1,
                    last_good()
                ),
            });
        }
        let grad_norm = clip_grad_norm(&mut grads, self.args.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(Error::TrainingStopped {
                step: step + 1,
                last_checkpoint: self.last_checkpoint.clone(),
                msg: format!(
                    "the gradient norm of step {} is {grad_norm}; the weights were not updated \
                     and {}",
                    step + 1,
                    last_good()
                ),
            });
        }
        let lr = self.schedule.lr(step);
        self.optimizer.step(&grads, lr)?;
        // Advance the position.
        self.state.global_step += 1;
        self.state.batch_in_epoch += micro.len();
        if self.state.batch_in_epoch >= self.train.num_batches() {
            self.state.epoch += 1;
            self.state.batch_in_epoch = 0;
        }
        self.state.tokens_seen += tokens;
        let log = StepLog {
            step: self.state.global_step,
            epoch: self.epoch_progress(),
            loss,
            aux_loss,
            lr,
            grad_norm,
            tokens,
            targets,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.state.history.steps.push(log.clone());
        Ok(log)
    }

    fn epoch_progress(&self) -> f64 {
        self.state.epoch as f64
            + self.state.batch_in_epoch as f64 / self.train.num_batches().max(1) as f64
    }

    /// `Σ CE` over the batch's targets: `lm_head` only on the rows that have one.
    fn target_loss_sum(&self, batch: &Batch, rows: &[u32], targets: &[u32]) -> Result<Tensor> {
        let h = self
            .model
            .hidden_states(&batch.input_ids, &batch.forward_options())?;
        self.head_loss_sum(&h, rows, targets)
    }

    /// `Σ CE` of the final hidden states `h: (B, T, C)` on the target rows.
    fn head_loss_sum(&self, h: &Tensor, rows: &[u32], targets: &[u32]) -> Result<Tensor> {
        let (b, t, c) = h.dims3()?;
        let flat = h.narrow(1, 0, t - 1)?.reshape((b * (t - 1), c))?;
        let picked = flat.index_select(&Tensor::new(rows, &self.device)?, 0)?;
        let logits = self.model.lm_head().forward(&picked)?;
        cross_entropy_sum(&logits, &Tensor::new(targets, &self.device)?)
    }

    /// Eval loss (mean cross-entropy over every eval target) and perplexity = exp(loss),
    /// recorded in the history. An error when no eval dataset was given.
    pub fn evaluate(&mut self) -> Result<EvalLog> {
        let Some(eval) = &self.eval else {
            return Err(Error::Input(
                "no eval dataset: pass one to Trainer::new to evaluate".into(),
            ));
        };
        self.model.set_training(false);
        let mut sum = 0.0f64;
        let mut n = 0usize;
        for i in 0..eval.num_batches() {
            let batch = eval.batch(0, i, &self.device)?;
            let (rows, tgt) = shifted_targets(&batch.labels.to_vec2::<i64>()?)?;
            if rows.is_empty() {
                continue;
            }
            let s = self.target_loss_sum(&batch, &rows, &tgt)?.detach();
            sum += s.to_scalar::<f32>()? as f64;
            n += rows.len();
        }
        if n == 0 {
            return Err(Error::Input(
                "the eval dataset has no target tokens (every label is -100)".into(),
            ));
        }
        let loss = sum / n as f64;
        let log = EvalLog {
            step: self.state.global_step,
            epoch: self.epoch_progress(),
            eval_loss: loss,
            perplexity: loss.exp(),
            targets: n,
        };
        self.state.history.evals.push(log.clone());
        Ok(log)
    }
}

/// Adds the gradients that `store` holds for `vars` into `slots` (one per var).
fn add_grads(
    slots: &mut [Option<Tensor>],
    vars: &[candle_core::Var],
    store: &candle_core::backprop::GradStore,
) -> Result<()> {
    for (slot, var) in slots.iter_mut().zip(vars) {
        if let Some(gi) = store.get(var.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(sum) => (sum + gi)?,
                None => gi.clone(),
            });
        }
    }
    Ok(())
}
