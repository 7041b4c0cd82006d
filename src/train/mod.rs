//! Supervised fine-tuning (slides 44–52): one trainer for LoRA, QLoRA and full fine-tuning that
//! runs cell by cell — `trainer.train_steps(50)` returns, the next cell plots
//! `trainer.history().loss_plot()`, the one after continues with the same optimizer state,
//! schedule and data position.
//!
//! | file | what |
//! |---|---|
//! | `args.rs` | [`TrainingArgs`]: trl's `SFTConfig` fields and defaults |
//! | `trainer.rs` | [`Trainer`]: steps, gradient accumulation, clipping, evaluation, checkpoints |
//! | `loss.rs` | causal-LM cross-entropy with the −100 ignore index |
//! | `optim.rs` | AdamW with its state in the open, gradient-norm clipping |
//! | `schedule.rs` | constant / linear / cosine / constant-with-warmup learning rates |
//! | `checkpoint.rs` | atomic checkpoints and exact resume |
//! | `history.rs` | per-step log and the loss plot |
//! | `trainable.rs`, `full.rs` | what can be trained: a [`PeftModel`](crate::peft::PeftModel) or [`FullFineTune`] |
//! | `sft.rs` | records → chat template → labelled batches → trainer, as trl's `SFTTrainer` |
//! | `progress.rs` | a terminal bar, or a line every `logging_steps` in notebooks |

pub mod args;
pub mod checkpoint;
pub mod full;
pub mod history;
pub mod loss;
pub mod optim;
mod progress;
pub mod schedule;
pub mod sft;
pub mod trainable;
pub mod trainer;

pub use args::{IntervalStrategy, ProgressStyle, SchedulerType, TrainingArgs};
pub use checkpoint::{latest_checkpoint, TrainerState};
pub use full::FullFineTune;
pub use history::{EvalLog, History, StepLog};
pub use loss::{causal_lm_loss, IGNORE_INDEX};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use schedule::LrSchedule;
pub use sft::{batch_config, sft_batcher, SftReport};
pub use trainable::Trainable;
pub use trainer::{TrainOutput, Trainer};
