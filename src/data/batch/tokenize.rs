//! Tokenizing a dataset into labelled examples, and truncating them.
//!
//! **Labels** are *not* shifted here; the loss shifts, comparing the logits at `t - 1` with
//! `labels[t]` (transformers' `ForCausalLMLoss`: `logits[..., :-1, :]` vs `labels[..., 1:]`),
//! so the label at a sequence's first position is never used. [`LossOn`] picks the tokens
//! that carry labels ([`TokenizedExample::from_chat`]).
//!
//! **Truncation** keeps the first `max_length` tokens (trl's `truncation_mode="keep_start"`)
//! and is counted in the [`TokenizeReport`]; an example left without a label token is dropped
//! and counted. If *every* example is longer than `max_length` that is an error rather than a
//! dataset of stumps: the setting is almost certainly wrong.

use std::fmt;

use super::{BatchConfig, LossOn, IGNORE_INDEX};
use crate::data::template::{tokenize_chat, ChatOptions, TokenizedChat};
use crate::error::{Error, Result};
use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::tokenizer::Tokenizer;

/// One training example: token ids and their (unshifted) labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// `labels[t] = input_ids[t]` where the loss is taken, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

impl TokenizedExample {
    /// `input_ids` and `labels` have one entry per token each.
    pub(super) fn check_aligned(&self) -> Result<()> {
        if self.input_ids.len() != self.labels.len() {
            return Err(Error::Input(format!(
                "input_ids has {} tokens but labels has {}",
                self.input_ids.len(),
                self.labels.len()
            )));
        }
        Ok(())
    }

    /// An example with a label on every token.
    pub fn full(input_ids: Vec<u32>) -> Self {
        let labels = input_ids.iter().map(|&t| t as i64).collect();
        Self { input_ids, labels }
    }

    /// The example of a tokenized conversation with labels on the tokens `loss_on` selects.
    /// With `AssistantOnly` / `Completion` a conversation without an assistant turn is an
    /// [`Error::Input`].
    pub fn from_chat(chat: &TokenizedChat, loss_on: LossOn) -> Result<Self> {
        let last = chat.assistant_turn.iter().flatten().max().copied();
        if last.is_none() && loss_on != LossOn::Full {
            return Err(Error::Input(format!(
                "no assistant turn to train on (loss_on = {loss_on:?}); use LossOn::Full or \
                 add the assistant's reply"
            )));
        }
        let keep = |turn: Option<usize>| match loss_on {
            LossOn::Full => true,
            LossOn::AssistantOnly => turn.is_some(),
            LossOn::Completion => turn.is_some() && turn == last,
        };
        let labels = chat
            .input_ids
            .iter()
            .zip(&chat.assistant_turn)
            .map(|(&id, &turn)| if keep(turn) { id as i64 } else { IGNORE_INDEX })
            .collect();
        Ok(Self {
            input_ids: chat.input_ids.clone(),
            labels,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Labels the shifted loss uses: positions `t >= 1` with `labels[t] != -100`.
    pub fn num_label_tokens(&self) -> usize {
        count_labels(&self.labels)
    }
}

/// Label tokens the shifted loss uses in one row.
pub(super) fn count_labels(labels: &[i64]) -> usize {
    labels
        .iter()
        .skip(1)
        .filter(|&&l| l != IGNORE_INDEX)
        .count()
}

/// What tokenization and truncation did to a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizeReport {
    /// Examples kept.
    pub examples: usize,
    /// Examples cut to `max_length` (kept or dropped).
    pub truncated: usize,
    /// Examples dropped because no label token was left (cut off, or none to begin with).
    pub dropped_no_labels: usize,
    /// Length in tokens of the longest example before truncation.
    pub longest: usize,
    /// Tokens in the kept examples, after truncation.
    pub total_tokens: usize,
    /// Label tokens the loss uses in the kept examples (see
    /// [`TokenizedExample::num_label_tokens`]).
    pub label_tokens: usize,
    /// The limit applied.
    pub max_length: usize,
}

impl fmt::Display for TokenizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let share = if self.total_tokens > 0 {
            100.0 * self.label_tokens as f64 / self.total_tokens as f64
        } else {
            0.0
        };
        write!(
            f,
            "{} examples, {} tokens, {} with labels ({share:.1}%); longest {} tokens, {} \
             truncated to max_length = {}, {} dropped with no label token left",
            self.examples,
            self.total_tokens,
            self.label_tokens,
            self.longest,
            self.truncated,
            self.max_length,
            self.dropped_no_labels
        )
    }
}

/// Tokenized examples and the report of how they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokenized {
    /// The examples, in dataset order (dropped ones left out).
    pub examples: Vec<TokenizedExample>,
    /// Counts of what was truncated and dropped.
    pub report: TokenizeReport,
}

/// Tokenizes conversations role-safely with `template` ([`tokenize_chat`]), labels them per
/// `config.loss_on` and truncates them ([`truncate_examples`]).
///
/// Errors name the conversation's index: an empty conversation, one the template rejects, one
/// without an assistant turn when the loss is on assistant turns; also an empty dataset.
pub fn tokenize_conversations(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    conversations: &[Vec<Message>],
    config: &BatchConfig,
) -> Result<Tokenized> {
    config.validate()?;
    if conversations.is_empty() {
        return Err(Error::Input(
            "the dataset is empty: no conversations to tokenize".into(),
        ));
    }
    let opts = ChatOptions::default();
    let mut examples = Vec::with_capacity(conversations.len());
    for (i, messages) in conversations.iter().enumerate() {
        let chat =
            tokenize_chat(tokenizer, template, messages, &opts).map_err(|e| at_record(i, e))?;
        examples
            .push(TokenizedExample::from_chat(&chat, config.loss_on).map_err(|e| at_record(i, e))?);
    }
    truncate_examples(examples, config.max_length)
}

/// Tokenizes plain texts (`tokenizer.encode(text, true)`: BOS if the model adds one), appends
/// EOS if `config.add_eos` and labels every token; then truncates ([`truncate_examples`]).
pub fn tokenize_texts<S: AsRef<str>>(
    tokenizer: &Tokenizer,
    texts: &[S],
    config: &BatchConfig,
) -> Result<Tokenized> {
    config.validate()?;
    if texts.is_empty() {
        return Err(Error::Input(
            "the dataset is empty: no texts to tokenize".into(),
        ));
    }
    let eos = match (config.add_eos, tokenizer.eos_token_id()) {
        (true, None) => {
            return Err(Error::config(
                "add_eos",
                format!(
                    "add_eos is true but the tokenizer {} has no eos token",
                    tokenizer.source().display()
                ),
            ))
        }
        (true, Some(id)) => Some(id),
        (false, _) => None,
    };
    let mut examples = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let mut ids = tokenizer
            .encode(text.as_ref(), true)
            .map_err(|e| at_record(i, e))?;
        if let Some(eos) = eos {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        examples.push(TokenizedExample::full(ids));
    }
    truncate_examples(examples, config.max_length)
}

/// `e`, as having happened on example `i` ([`Error::Example`]).
fn at_record(i: usize, e: Error) -> Error {
    e.at_example(i)
}

/// Keeps the first `max_length` tokens of every example and drops those left without a
/// label token, counting both in the report.
///
/// Errors: no examples; `max_length` 0; every example longer than `max_length` (an
/// [`Error::Config`] naming the shortest example's length); no example with a label token left.
pub fn truncate_examples(examples: Vec<TokenizedExample>, max_length: usize) -> Result<Tokenized> {
    if max_length == 0 {
        return Err(Error::config(
            "max_length",
            "`max_length` should be a positive integer but is 0",
        ));
    }
    if examples.is_empty() {
        return Err(Error::Input("the dataset is empty: no examples".into()));
    }
    for (i, ex) in examples.iter().enumerate() {
        ex.check_aligned().map_err(|e| e.at_example(i))?;
    }
    let shortest = examples.iter().map(|e| e.len()).min().unwrap_or(0);
    if shortest > max_length {
        return Err(Error::config(
            "max_length",
            format!(
                "all {} examples are longer than max_length = {max_length} (the \
                 shortest has {shortest} tokens); raise max_length",
                examples.len()
            ),
        ));
    }
    let n = examples.len();
    let mut report = TokenizeReport {
        examples: 0,
        truncated: 0,
        dropped_no_labels: 0,
        longest: examples.iter().map(|e| e.len()).max().unwrap_or(0),
        total_tokens: 0,
        label_tokens: 0,
        max_length,
    };
    let mut kept = Vec::with_capacity(n);
    for mut ex in examples {
        if ex.len() > max_length {
            ex.input_ids.truncate(max_length);
            ex.labels.truncate(max_length);
            report.truncated += 1;
        }
        let labels = ex.num_label_tokens();
        if labels == 0 {
            report.dropped_no_labels += 1;
            continue;
        }
        report.total_tokens += ex.len();
        report.label_tokens += labels;
        kept.push(ex);
    }
    report.examples = kept.len();
    if kept.is_empty() {
        return Err(Error::Input(format!(
            "no example has a label token left after truncation to max_length = \
             {max_length} ({n} examples, {} truncated)",
            report.truncated
        )));
    }
    Ok(Tokenized {
        examples: kept,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(ids: &[u32], turns: &[Option<usize>]) -> TokenizedChat {
        TokenizedChat {
            text: String::new(),
            input_ids: ids.to_vec(),
            assistant_turn: turns.to_vec(),
        }
    }

    #[test]
    fn labels_per_loss_on() {
        // user turn (None), assistant 1, user 2, assistant 3
        let c = chat(
            &[10, 11, 12, 13, 14, 15, 16],
            &[None, None, Some(1), Some(1), None, Some(3), Some(3)],
        );
        let l = |on| TokenizedExample::from_chat(&c, on).unwrap().labels;
        let x = IGNORE_INDEX;
        assert_eq!(l(LossOn::AssistantOnly), vec![x, x, 12, 13, x, 15, 16]);
        assert_eq!(l(LossOn::Completion), vec![x, x, x, x, x, 15, 16]);
        assert_eq!(l(LossOn::Full), vec![10, 11, 12, 13, 14, 15, 16]);
        let none = chat(&[1, 2], &[None, None]);
        assert!(TokenizedExample::from_chat(&none, LossOn::AssistantOnly).is_err());
        assert!(TokenizedExample::from_chat(&none, LossOn::Full).is_ok());
    }
}
