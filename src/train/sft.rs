//! From records to a trainer, as trl's `SFTTrainer` does it: the records are rendered with the
//! tokenizer's own chat template, tokenized role-safely, labelled (assistant turns only unless
//! `full_sequence_loss`), truncated to `max_length` (and packed with `packing`) according to
//! [`TrainingArgs`], then batched for the [`Trainer`].

use crate::data::batch::{
    pad_token_id, tokenize_conversations, tokenize_texts, BatchConfig, Batcher, LossOn,
    TokenizeReport,
};
use crate::data::records::Conversation;
use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

use super::args::TrainingArgs;
use super::trainable::Trainable;
use super::trainer::Trainer;

/// What tokenizing the datasets did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SftReport {
    /// The training set.
    pub train: TokenizeReport,
    /// The eval set, if any.
    pub eval: Option<TokenizeReport>,
}

impl std::fmt::Display for SftReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "train: {}", self.train)?;
        if let Some(e) = &self.eval {
            write!(f, "\neval: {e}")?;
        }
        Ok(())
    }
}

/// The batch configuration `args` implies for training (`eval = false`) or evaluation.
pub fn batch_config(args: &TrainingArgs, eval: bool) -> BatchConfig {
    let loss_on = if args.full_sequence_loss {
        LossOn::Full
    } else {
        LossOn::AssistantOnly
    };
    let cfg = BatchConfig::default()
        .with_max_length(args.max_length)
        .with_loss_on(loss_on)
        .with_seed(args.seed);
    if eval {
        cfg.with_batch_size(args.per_device_eval_batch_size)
            .with_shuffle(false)
            .with_packing(false)
    } else {
        cfg.with_batch_size(args.per_device_train_batch_size)
            .with_shuffle(true)
            .with_packing(args.packing)
    }
}

/// Tokenizes `records` (all chat, or all plain text) into a [`Batcher`]. `template`: the
/// tokenizer's own when `None` (an error if it has none). Errors name the record's file and
/// line.
pub fn sft_batcher(
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    records: &[Conversation],
    config: &BatchConfig,
) -> Result<(Batcher, TokenizeReport)> {
    let Some(first) = records.first() else {
        return Err(Error::Input("the dataset is empty: no records".into()));
    };
    if let Some(other) = records.iter().find(|r| r.is_text() != first.is_text()) {
        let kind = |r: &Conversation| if r.is_text() { "plain text" } else { "chat" };
        return Err(other.source.wrap(Error::Input(format!(
            "a {} record in a dataset of {} records ({}); keep chat and plain text apart",
            kind(other),
            kind(first),
            first.source
        ))));
    }
    // Tokenizing (and truncating) sees one example per record, in order, so an
    // `Error::Example { index }` from it is `records[index]`; the batcher itself, after
    // truncation has dropped examples, is not located.
    let with_source = |e: Error| locate(e, records);
    let pad = pad_token_id(tokenizer)?;
    if first.is_text() {
        let texts: Vec<&str> = records.iter().filter_map(|r| r.text.as_deref()).collect();
        let t = tokenize_texts(tokenizer, &texts, config).map_err(with_source)?;
        return Ok((Batcher::new(t.examples, config, pad)?, t.report));
    }
    let template = match template {
        Some(t) => t,
        None => tokenizer.chat_template().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template; pass one (data::template::builtin(\"chatml\"), ...)",
                tokenizer.source().display()
            ))
        })?,
    };
    let chats: Vec<Vec<Message>> = records.iter().map(|r| r.messages.clone()).collect();
    let t = tokenize_conversations(tokenizer, template, &chats, config).map_err(with_source)?;
    Ok((Batcher::new(t.examples, config, pad)?, t.report))
}

/// The batcher's [`Error::Example`] (an index into `records`) as an [`Error::Record`] naming
/// the record's file and line.
fn locate(e: Error, records: &[Conversation]) -> Error {
    match e {
        Error::Example { index, source } if index < records.len() => {
            records[index].source.wrap(*source)
        }
        other => other,
    }
}

impl<M: Trainable> Trainer<M> {
    /// trl's `SFTTrainer(model, args, train_dataset, eval_dataset, processing_class)`: tokenizes
    /// the records with the tokenizer's chat template (see [`sft_batcher`]) as `args` says and
    /// builds the trainer. Returns the tokenization report beside it.
    pub fn sft(
        model: M,
        tokenizer: &Tokenizer,
        args: TrainingArgs,
        train: &[Conversation],
        eval: Option<&[Conversation]>,
    ) -> Result<(Self, SftReport)> {
        args.validate()?;
        let (train_b, train_r) = sft_batcher(tokenizer, None, train, &batch_config(&args, false))?;
        let (eval_b, eval_r) = match eval {
            Some(e) => {
                let (b, r) = sft_batcher(tokenizer, None, e, &batch_config(&args, true))?;
                (Some(b), Some(r))
            }
            None => (None, None),
        };
        let trainer = Trainer::new(model, args, train_b, eval_b)?;
        Ok((
            trainer,
            SftReport {
                train: train_r,
                eval: eval_r,
            },
        ))
    }
}
