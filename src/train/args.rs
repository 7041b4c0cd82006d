//! [`TrainingArgs`]: the knobs of a fine-tuning run, named as trl's `SFTConfig` (which extends
//! transformers' `TrainingArguments`), so a recipe from the seminar or the Hugging Face docs
//! reads the same here. The defaults are trl's too, except three, each said at its field:
//! the loss on conversations (assistant turns here, every token in trl), `gradient_checkpointing`
//! (trl: on) and `bf16` (trl: on). docs/05_sft_training.md has the table and the reasons.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the learning rate changes over the run (transformers' `lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    /// Linear warmup, then linear decay to 0 (transformers' default).
    #[default]
    Linear,
    /// Linear warmup, then a half cosine to 0.
    Cosine,
    /// The same rate throughout (warmup ignored, as in transformers).
    Constant,
    /// Linear warmup, then constant.
    ConstantWithWarmup,
}

/// When to evaluate or save (transformers' `IntervalStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IntervalStrategy {
    /// Never.
    #[default]
    No,
    /// Every `eval_steps` / `save_steps` optimizer steps.
    Steps,
    /// At the end of every epoch.
    Epoch,
}

/// How progress is shown while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProgressStyle {
    /// A progress bar when stderr is a terminal, log lines otherwise (notebooks).
    #[default]
    Auto,
    /// A terminal progress bar (indicatif).
    Bar,
    /// One line every `logging_steps` steps: readable in a notebook cell, never floods it.
    Lines,
    /// Nothing.
    Silent,
}

/// The arguments of a run, with `SFTConfig`'s defaults where it sets them (learning rate 2e-5,
/// logging every 10 steps, `max_length` 1024) and `TrainingArguments`' otherwise, except the
/// loss masking (`full_sequence_loss`), `gradient_checkpointing` and `bf16`, whose defaults
/// differ from trl's as their docs say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingArgs {
    /// Where checkpoints go (`output_dir/checkpoint-{step}`).
    pub output_dir: PathBuf,
    /// Epochs when `max_steps` is not set (3).
    pub num_train_epochs: f64,
    /// Optimizer steps of the whole run; overrides `num_train_epochs` (transformers: −1 = unset).
    pub max_steps: Option<usize>,
    /// Sequences per micro-batch (8).
    pub per_device_train_batch_size: usize,
    /// Sequences per evaluation batch (8).
    pub per_device_eval_batch_size: usize,
    /// Micro-batches whose gradients are summed before one optimizer step (1).
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate (SFTConfig: 2e-5; LoRA recipes use 1e-4 – 2e-4).
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay (0).
    pub weight_decay: f64,
    /// AdamW β₁ (0.9).
    pub adam_beta1: f64,
    /// AdamW β₂ (0.999).
    pub adam_beta2: f64,
    /// AdamW ε (1e-8).
    pub adam_epsilon: f64,
    /// Learning-rate schedule (linear).
    pub lr_scheduler_type: SchedulerType,
    /// Warmup as a fraction of all steps, rounded up (0).
    pub warmup_ratio: f64,
    /// Warmup steps; wins over `warmup_ratio` when > 0 (0).
    pub warmup_steps: usize,
    /// Clip the global gradient norm to this (1.0; 0 = no clipping).
    pub max_grad_norm: f64,
    /// Print a progress line / record a smoothed log entry every this many steps (10).
    pub logging_steps: usize,
    /// When to evaluate (no).
    pub eval_strategy: IntervalStrategy,
    /// Evaluate every this many steps with `eval_strategy = steps` (default: `logging_steps`).
    pub eval_steps: Option<usize>,
    /// When to save checkpoints (transformers' default: steps).
    pub save_strategy: IntervalStrategy,
    /// Save every this many steps with `save_strategy = steps` (500).
    pub save_steps: usize,
    /// Keep at most this many checkpoints, deleting the oldest (all).
    pub save_total_limit: Option<usize>,
    /// Seed of data order, adapter dropout and adapter init (42).
    pub seed: u64,
    /// Compute in bf16: the model must be loaded in bf16; trainable weights stay f32 (false;
    /// trl's `SFTConfig` defaults to true, but bf16 needs a bf16 model, and the CPU runs are f32).
    pub bf16: bool,
    /// Compute in f16: as `bf16`.
    pub fp16: bool,
    /// Longest tokenized example, in tokens; longer ones are truncated (keeping the start) and
    /// counted (1024). trl's `max_length` (`max_seq_length` in older trl), and
    /// [`BatchConfig::max_length`](crate::data::batch::BatchConfig::max_length).
    pub max_length: usize,
    /// Pack several examples into one sequence of `max_length` (false).
    pub packing: bool,
    /// Loss on every token instead of assistant turns / completions only (false).
    ///
    /// **Differs from trl.** With `false`, conversations (`messages`) train on the assistant
    /// turns (trl's `assistant_only_loss=True`, which trl defaults to `False`, and which in trl
    /// needs a chat template with `{% generation %}` markers), prompt/completion records on the
    /// completion (trl's default `completion_only_loss=None` does the same), plain text on
    /// every token (as trl). `true` is trl's default for conversations: every token.
    pub full_sequence_loss: bool,
    /// Gradient checkpointing per decoder layer (false; trl's `SFTConfig` defaults to true, but
    /// on a CPU with a small model memory is not the limit): keep only each layer's input in the
    /// forward and run the layer again in backward — less activation memory for a third more
    /// compute (`Llama::forward_hidden_checkpointed`; docs/05_sft_training.md).
    pub gradient_checkpointing: bool,
    /// Progress display.
    pub progress: ProgressStyle,
}

impl Default for TrainingArgs {
    fn default() -> Self {
        Self {
            output_dir: PathBuf::from("outputs"),
            num_train_epochs: 3.0,
            max_steps: None,
            per_device_train_batch_size: 8,
            per_device_eval_batch_size: 8,
            gradient_accumulation_steps: 1,
            learning_rate: 2e-5,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            lr_scheduler_type: SchedulerType::Linear,
            warmup_ratio: 0.0,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            logging_steps: 10,
            eval_strategy: IntervalStrategy::No,
            eval_steps: None,
            save_strategy: IntervalStrategy::Steps,
            save_steps: 500,
            save_total_limit: None,
            seed: 42,
            bf16: false,
            fp16: false,
            max_length: 1024,
            packing: false,
            full_sequence_loss: false,
            gradient_checkpointing: false,
            progress: ProgressStyle::Auto,
        }
    }
}

impl TrainingArgs {
    /// Arguments writing to `output_dir`, the rest default.
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        Self {
            output_dir: output_dir.into(),
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field and the value expected.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: String| {
            Err(Error::Config {
                field: field.into(),
                msg,
            })
        };
        for (field, v) in [
            (
                "per_device_train_batch_size",
                self.per_device_train_batch_size,
            ),
            (
                "per_device_eval_batch_size",
                self.per_device_eval_batch_size,
            ),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("logging_steps", self.logging_steps),
            ("max_length", self.max_length),
        ] {
            if v == 0 {
                return bad(field, "must be at least 1, found 0".into());
            }
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "must be at least 1 (or unset)".into());
        }
        if self.max_steps.is_none()
            && self.num_train_epochs.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return bad(
                "num_train_epochs",
                format!(
                    "must be > 0 when max_steps is unset, found {}",
                    self.num_train_epochs
                ),
            );
        }
        if !(self.learning_rate >= 0.0 && self.learning_rate.is_finite()) {
            return bad(
                "learning_rate",
                format!("must be finite and ≥ 0, found {}", self.learning_rate),
            );
        }
        if self.weight_decay.is_nan() || self.weight_decay < 0.0 {
            return bad(
                "weight_decay",
                format!("must be ≥ 0, found {}", self.weight_decay),
            );
        }
        for (field, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return bad(field, format!("must be in [0, 1), found {b}"));
            }
        }
        if self.adam_epsilon.is_nan() || self.adam_epsilon <= 0.0 {
            return bad(
                "adam_epsilon",
                format!("must be > 0, found {}", self.adam_epsilon),
            );
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad(
                "warmup_ratio",
                format!("must be in [0, 1], found {}", self.warmup_ratio),
            );
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm < 0.0 {
            return bad(
                "max_grad_norm",
                format!(
                    "must be ≥ 0 (0 = no clipping), found {}",
                    self.max_grad_norm
                ),
            );
        }
        if self.eval_steps == Some(0) {
            return bad("eval_steps", "must be at least 1".into());
        }
        if self.save_strategy == IntervalStrategy::Steps && self.save_steps == 0 {
            return bad(
                "save_steps",
                "must be at least 1 with save_strategy steps".into(),
            );
        }
        if self.save_total_limit == Some(0) {
            return bad("save_total_limit", "must be at least 1 (or unset)".into());
        }
        if self.bf16 && self.fp16 {
            return bad("bf16", "bf16 and fp16 exclude each other".into());
        }
        Ok(())
    }

    /// Warmup steps for a run of `total` steps: `warmup_steps` if set, else
    /// `⌈total · warmup_ratio⌉` (transformers' `get_warmup_steps`).
    pub fn warmup_for(&self, total: usize) -> usize {
        if self.warmup_steps > 0 {
            self.warmup_steps
        } else {
            (total as f64 * self.warmup_ratio).ceil() as usize
        }
    }

    /// Evaluation interval in steps (`eval_steps`, else `logging_steps`).
    pub fn eval_every(&self) -> usize {
        self.eval_steps.unwrap_or(self.logging_steps)
    }
}
