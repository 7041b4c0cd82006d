//! From conversations or texts to training batches: tokenize, label, truncate, pack, pad.
//!
//! ```text
//! Vec<Vec<Message>> --tokenize_conversations--> Vec<TokenizedExample> + TokenizeReport
//! Vec<String>       --tokenize_texts---------/        (labels with -100, truncated)
//!   -> Batcher::new (packing once) -> batch(epoch, index, device) -> Batch tensors
//! ```
//!
//! One step per file: `tokenize.rs` (labels and truncation), `pack.rs` (best-fit-decreasing
//! packing), `collate.rs` (the [`Batcher`]: rows, shuffling, padding into tensors). This file
//! holds what they share: [`BatchConfig`], [`LossOn`] and [`IGNORE_INDEX`]. Every public name
//! is re-exported here, so `tunelab::data::batch::Batcher` etc. are the paths to use.
//!
//! **Labels** follow transformers: `labels[t]` is the token at `t` itself, or [`IGNORE_INDEX`]
//! (-100) where no loss is taken; the loss shifts them. Which tokens carry labels is
//! [`LossOn`]: the assistant turns by default here (trl's `assistant_only_loss=True`; trl itself
//! defaults to the whole sequence for conversations, see docs/05_sft_training.md), the last
//! assistant turn only (trl's `completion_only_loss`), or everything.

use crate::error::{Error, Result};

mod collate;
mod pack;
mod tokenize;

pub use collate::{pad_token_id, Batch, Batcher};
pub use pack::pack_bfd;
pub use tokenize::{
    tokenize_conversations, tokenize_texts, truncate_examples, TokenizeReport, Tokenized,
    TokenizedExample,
};

/// The label of tokens that take no loss (PyTorch's `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// Which tokens of a conversation carry labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LossOn {
    /// Every assistant turn: its content and its end-of-turn token (trl's
    /// `assistant_only_loss=True`); system, user and template tokens get -100.
    #[default]
    AssistantOnly,
    /// Only the last assistant turn, the completion (trl's `completion_only_loss` for
    /// prompt/completion data): the earlier turns are prompt.
    Completion,
    /// Every token (continued pre-training; trl's default for conversations).
    Full,
}

/// How examples become batches. Plain texts have no prompt: every token carries a label
/// whatever `loss_on` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Longest row in tokens (trl's `SFTConfig.max_length`, called `max_seq_length` in older
    /// trl; default 1024, as trl's):
    /// longer examples are truncated, packed rows are filled up to it.
    pub max_length: usize,
    /// Which tokens carry labels (default [`LossOn::AssistantOnly`]).
    pub loss_on: LossOn,
    /// Pack several examples into each row (default `false`).
    pub packing: bool,
    /// Pad each batch's length up to a multiple of this (e.g. 8 for tensor cores).
    pub pad_to_multiple_of: Option<usize>,
    /// Rows per batch (default 8, as in transformers' `TrainingArguments`).
    pub per_device_train_batch_size: usize,
    /// Shuffle the rows every epoch (default `true`).
    pub shuffle: bool,
    /// Seed of the shuffle (default 42, as in transformers).
    pub seed: u64,
    /// Append EOS to plain texts that do not end with it (default `true`, as trl does), so the
    /// model learns where a document stops.
    pub add_eos: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_length: 1024,
            loss_on: LossOn::AssistantOnly,
            packing: false,
            pad_to_multiple_of: None,
            per_device_train_batch_size: 8,
            shuffle: true,
            seed: 42,
            add_eos: true,
        }
    }
}

impl BatchConfig {
    /// Sets `max_length`.
    pub fn with_max_length(mut self, n: usize) -> Self {
        self.max_length = n;
        self
    }

    /// The old name of [`BatchConfig::with_max_length`] (older trl's `max_seq_length`).
    #[deprecated(
        note = "use `with_max_length`: trl's `SFTConfig` and `TrainingArgs` say `max_length`"
    )]
    pub fn with_max_seq_length(self, n: usize) -> Self {
        self.with_max_length(n)
    }

    /// Sets `loss_on`.
    pub fn with_loss_on(mut self, loss_on: LossOn) -> Self {
        self.loss_on = loss_on;
        self
    }

    /// Sets `packing`.
    pub fn with_packing(mut self, packing: bool) -> Self {
        self.packing = packing;
        self
    }

    /// Sets `pad_to_multiple_of`.
    pub fn with_pad_to_multiple_of(mut self, m: Option<usize>) -> Self {
        self.pad_to_multiple_of = m;
        self
    }

    /// Sets `per_device_train_batch_size`.
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.per_device_train_batch_size = n;
        self
    }

    /// Sets `shuffle`.
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }

    /// Sets `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets `add_eos`.
    pub fn with_add_eos(mut self, add_eos: bool) -> Self {
        self.add_eos = add_eos;
        self
    }

    /// Checks the sizes: `max_length`, `per_device_train_batch_size` and
    /// `pad_to_multiple_of` must be positive.
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::config(
                    field,
                    format!("`{field}` should be a positive integer but is 0"),
                ))
            } else {
                Ok(())
            }
        };
        positive("max_length", self.max_length)?;
        positive(
            "per_device_train_batch_size",
            self.per_device_train_batch_size,
        )?;
        if let Some(m) = self.pad_to_multiple_of {
            positive("pad_to_multiple_of", m)?;
        }
        Ok(())
    }
}
