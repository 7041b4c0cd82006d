//! From conversations or texts to training batches: tokenize, label, truncate, pack, pad.
//!
//! ```text
//! Vec<Vec<Message>> --tokenize_conversations--> Vec<TokenizedExample> + TokenizeReport
//! Vec<String>       --tokenize_texts---------/        (labels with -100, truncated)
//!   -> Batcher::new (packing once) -> batch(epoch, index, device) -> Batch tensors
//! ```
//!
//! **Labels** follow transformers: `labels[t]` is the token at `t` itself, or [`IGNORE_INDEX`]
//! (-100) where no loss is taken. They are *not* shifted here; the loss shifts, comparing the
//! logits at `t - 1` with `labels[t]` (`ForCausalLMLoss`: `logits[..., :-1, :]` vs
//! `labels[..., 1:]`), so the label at a sequence's first position is never used. Which tokens
//! carry labels is [`LossOn`]: the assistant turns (the default here, trl's
//! `assistant_only_loss=True` — trl itself defaults to training on everything), the last
//! assistant turn only (trl's `completion_only_loss` for prompt/completion data), or everything.
//!
//! **Truncation** keeps the first `max_seq_length` tokens (as trl's SFT truncation does) and is
//! counted in the [`TokenizeReport`]; an example left without a label token is dropped
//! and counted. If *every* example is longer than `max_seq_length` that is an error rather than
//! a dataset of stumps: the setting is almost certainly wrong.
//!
//! **Packing** (trl's `packing=True`, its `"bfd"` strategy) puts several examples into one row
//! of at most `max_seq_length` tokens, best-fit decreasing (see [`pack_bfd`]). Inside a row the
//! position ids restart at 0 for every document and the segment ids number the documents, so
//! that [`Llama::forward_with`](crate::model::llama::Llama::forward_with) lets no document
//! attend to another: each document's logits are those it gets alone. The label at the first
//! token of every document is set to -100: the shifted loss would predict it from the logits of
//! the previous document's last token, across the boundary. (For the first document it is never
//! used anyway, so packed and unpacked data train on exactly the same label tokens.)
//!
//! **Collation** pads to the longest row of the batch (rounded up to `pad_to_multiple_of`) on
//! the right with the pad token (the tokenizer's EOS), labels -100 and attention mask 0 there.
//!
//! **Batching** is stateless: [`Batcher::batch`]`(epoch, index)` depends only on the examples,
//! the config and its arguments, so a resumed run gets exactly the batches it would have had.

use std::collections::BTreeSet;
use std::fmt;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::template::{tokenize_chat, ChatOptions, TokenizedChat};
use crate::error::{Error, Result};
use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::llama::ForwardOptions;
use crate::model::tokenizer::Tokenizer;

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
    /// Longest row in tokens (trl's `max_length`, formerly `max_seq_length`; default 1024):
    /// longer examples are truncated, packed rows are filled up to it.
    pub max_seq_length: usize,
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
            max_seq_length: 1024,
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
    /// Sets `max_seq_length`.
    pub fn with_max_seq_length(mut self, n: usize) -> Self {
        self.max_seq_length = n;
        self
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

    /// Checks the sizes: `max_seq_length`, `per_device_train_batch_size` and
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
        positive("max_seq_length", self.max_seq_length)?;
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

/// One training example: token ids and their (unshifted) labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedExample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// `labels[t] = input_ids[t]` where the loss is taken, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
}

impl TokenizedExample {
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
fn count_labels(labels: &[i64]) -> usize {
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
    /// Examples cut to `max_seq_length` (kept or dropped).
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
    pub max_seq_length: usize,
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
             truncated to max_seq_length = {}, {} dropped with no label token left",
            self.examples,
            self.total_tokens,
            self.label_tokens,
            self.longest,
            self.truncated,
            self.max_seq_length,
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
    truncate_examples(examples, config.max_seq_length)
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
    truncate_examples(examples, config.max_seq_length)
}

/// `e`, as having happened on example `i` ([`Error::Example`]).
fn at_record(i: usize, e: Error) -> Error {
    e.at_example(i)
}

/// Keeps the first `max_seq_length` tokens of every example and drops those left without a
/// label token, counting both in the report.
///
/// Errors: no examples; `max_seq_length` 0; every example longer than `max_seq_length` (an
/// [`Error::Config`] naming the shortest example's length); no example with a label token left.
pub fn truncate_examples(
    examples: Vec<TokenizedExample>,
    max_seq_length: usize,
) -> Result<Tokenized> {
    if max_seq_length == 0 {
        return Err(Error::config(
            "max_seq_length",
            "`max_seq_length` should be a positive integer but is 0",
        ));
    }
    if examples.is_empty() {
        return Err(Error::Input("the dataset is empty: no examples".into()));
    }
    for (i, ex) in examples.iter().enumerate() {
        if ex.input_ids.len() != ex.labels.len() {
            return Err(Error::Input(format!(
                "input_ids has {} tokens but labels has {}",
                ex.input_ids.len(),
                ex.labels.len()
            ))
            .at_example(i));
        }
    }
    let shortest = examples.iter().map(|e| e.len()).min().unwrap_or(0);
    if shortest > max_seq_length {
        return Err(Error::config(
            "max_seq_length",
            format!(
                "all {} examples are longer than max_seq_length = {max_seq_length} (the \
                 shortest has {shortest} tokens); raise max_seq_length",
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
        max_seq_length,
    };
    let mut kept = Vec::with_capacity(n);
    for mut ex in examples {
        if ex.len() > max_seq_length {
            ex.input_ids.truncate(max_seq_length);
            ex.labels.truncate(max_seq_length);
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
            "no example has a label token left after truncation to max_seq_length = \
             {max_seq_length} ({n} examples, {} truncated)",
            report.truncated
        )));
    }
    Ok(Tokenized {
        examples: kept,
        report,
    })
}

/// Best-fit-decreasing bin packing of documents of `lengths` tokens into rows of `capacity`:
/// the documents are taken longest first (ties: lower index first) and each goes into the open
/// row with the *least* room that still fits it (ties: the row opened first), or into a new row.
/// Returns the rows in the order they were opened, each listing its documents' indices in the
/// order they were placed. O(n log n) with an ordered set of (room, row).
///
/// Like first-fit decreasing, BFD needs at most 11/9·OPT + O(1) rows (Johnson 1973) and in
/// practice wastes little beyond the last row; it is trl's default packing strategy. A document longer than
/// `capacity`, or empty, is an [`Error::Input`].
pub fn pack_bfd(lengths: &[usize], capacity: usize) -> Result<Vec<Vec<usize>>> {
    for (i, &len) in lengths.iter().enumerate() {
        if len == 0 || len > capacity {
            return Err(Error::Input(format!(
                "pack_bfd: document {i} has {len} tokens; expected 1..={capacity}"
            )));
        }
    }
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new(); // (free tokens, bin)
    for i in order {
        let len = lengths[i];
        let fit = room.range((len, 0)..).next().copied();
        match fit {
            Some((free, bin)) => {
                room.remove(&(free, bin));
                bins[bin].push(i);
                room.insert((free - len, bin));
            }
            None => {
                bins.push(vec![i]);
                room.insert((capacity - len, bins.len() - 1));
            }
        }
    }
    Ok(bins)
}

/// One row of a batch before padding.
#[derive(Debug, Clone)]
struct Row {
    input_ids: Vec<u32>,
    labels: Vec<i64>,
    /// Packed rows only: positions restarting per document, and document numbers.
    position_ids: Vec<u32>,
    segment_ids: Vec<u32>,
}

/// A batch of rows as tensors, ready for the model and the loss.
///
/// # Shapes
/// Every tensor is `(B, T)`: B rows padded on the right to T.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, u32; padding is the pad token.
    pub input_ids: Tensor,
    /// Unshifted labels, i64; -100 on padding and wherever no loss is taken.
    pub labels: Tensor,
    /// 1 on real tokens, 0 on padding, u32.
    pub attention_mask: Option<Tensor>,
    /// Packed batches: positions restarting at 0 per document, u32.
    pub position_ids: Option<Tensor>,
    /// Packed batches: the document number of each token, u32 (padding gets its own).
    pub segment_ids: Option<Tensor>,
    /// Non-padding tokens.
    pub num_tokens: usize,
    /// Label tokens the shifted loss uses (`labels[:, 1:] != -100`): the loss's denominator.
    pub num_label_tokens: usize,
}

impl Batch {
    /// The model inputs beyond the ids: attention mask, positions and segments.
    pub fn forward_options(&self) -> ForwardOptions {
        ForwardOptions {
            position_ids: self.position_ids.clone(),
            attention_mask: self.attention_mask.clone(),
            segment_ids: self.segment_ids.clone(),
        }
    }
}

/// The pad id for `tokenizer`: its EOS (tokenizers of chat models rarely have a pad token, and
/// padding is masked out anyway); an [`Error::Config`] if it has none.
pub fn pad_token_id(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer.eos_token_id().ok_or_else(|| {
        Error::config(
            "pad_token_id",
            format!(
                "the tokenizer {} has no eos token to pad with; pass a pad_token_id to \
                 Batcher::new",
                tokenizer.source().display()
            ),
        )
    })
}

/// Rows (examples or packed rows) addressed by `(epoch, index)`: stateless and resumable.
#[derive(Debug, Clone)]
pub struct Batcher {
    rows: Vec<Row>,
    config: BatchConfig,
    pad_token_id: u32,
}

impl Batcher {
    /// Builds the rows from `examples` (packing them if `config.packing`), padding with
    /// `pad_token_id` ([`pad_token_id`] gives the tokenizer's).
    ///
    /// Errors: an invalid config, no examples, an example that is empty, has labels of another
    /// length, or is longer than `max_seq_length` (truncate with [`truncate_examples`] first).
    pub fn new(
        examples: Vec<TokenizedExample>,
        config: &BatchConfig,
        pad_token_id: u32,
    ) -> Result<Self> {
        config.validate()?;
        if examples.is_empty() {
            return Err(Error::Input("Batcher: no examples".into()));
        }
        let max = config.max_seq_length;
        for (i, ex) in examples.iter().enumerate() {
            if ex.input_ids.len() != ex.labels.len() {
                return Err(Error::Input(format!(
                    "input_ids has {} tokens but labels has {}",
                    ex.input_ids.len(),
                    ex.labels.len()
                ))
                .at_example(i));
            }
            if ex.is_empty() || ex.len() > max {
                return Err(Error::Input(format!(
                    "{} tokens; expected 1..={max} (max_seq_length; truncate with \
                     truncate_examples)",
                    ex.len()
                ))
                .at_example(i));
            }
        }
        let rows = if config.packing {
            let lengths: Vec<usize> = examples.iter().map(|e| e.len()).collect();
            pack_bfd(&lengths, max)?
                .into_iter()
                .map(|docs| pack_row(&docs, &examples))
                .collect()
        } else {
            examples
                .into_iter()
                .map(|e| Row {
                    input_ids: e.input_ids,
                    labels: e.labels,
                    position_ids: Vec::new(),
                    segment_ids: Vec::new(),
                })
                .collect()
        };
        Ok(Self {
            rows,
            config: config.clone(),
            pad_token_id,
        })
    }

    /// Tokenizes `conversations` ([`tokenize_conversations`]) and builds the batcher, padding
    /// with the tokenizer's EOS; returns the tokenization report too.
    pub fn from_conversations(
        tokenizer: &Tokenizer,
        template: &ChatTemplate,
        conversations: &[Vec<Message>],
        config: &BatchConfig,
    ) -> Result<(Self, TokenizeReport)> {
        let pad = pad_token_id(tokenizer)?;
        let t = tokenize_conversations(tokenizer, template, conversations, config)?;
        Ok((Self::new(t.examples, config, pad)?, t.report))
    }

    /// Tokenizes `texts` ([`tokenize_texts`]) and builds the batcher, padding with the
    /// tokenizer's EOS; returns the tokenization report too.
    pub fn from_texts<S: AsRef<str>>(
        tokenizer: &Tokenizer,
        texts: &[S],
        config: &BatchConfig,
    ) -> Result<(Self, TokenizeReport)> {
        let pad = pad_token_id(tokenizer)?;
        let t = tokenize_texts(tokenizer, texts, config)?;
        Ok((Self::new(t.examples, config, pad)?, t.report))
    }

    /// Number of rows (examples, or packed rows with packing).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows (never, for a constructed batcher).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Batches per epoch: `ceil(len / per_device_train_batch_size)`; the last may be smaller
    /// (transformers' `dataloader_drop_last=False`).
    pub fn num_batches(&self) -> usize {
        self.rows
            .len()
            .div_ceil(self.config.per_device_train_batch_size)
    }

    /// The config the batcher was built with.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Tokens per row, in row order.
    pub fn row_lengths(&self) -> Vec<usize> {
        self.rows.iter().map(|r| r.input_ids.len()).collect()
    }

    /// The order of the rows in `epoch`: `0..len` without shuffle, else a Fisher-Yates shuffle
    /// (rand's `SliceRandom::shuffle`) with `StdRng::seed_from_u64(seed + epoch · φ64)`, φ64 =
    /// 0x9E3779B97F4A7C15. The same (seed, epoch) always gives the same order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        if self.config.shuffle {
            let seed = self
                .config
                .seed
                .wrapping_add(epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            order.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        order
    }

    /// Batch `index` of `epoch`: rows `epoch_order(epoch)[index·B .. (index+1)·B]`, collated
    /// on `device`. An index past [`Batcher::num_batches`] is an [`Error::Input`].
    pub fn batch(&self, epoch: u64, index: usize, device: &Device) -> Result<Batch> {
        let n = self.num_batches();
        if index >= n {
            return Err(Error::Input(format!(
                "batch index {index} is out of range: an epoch has {n} batches"
            )));
        }
        let bs = self.config.per_device_train_batch_size;
        let order = self.epoch_order(epoch);
        let rows: Vec<&Row> = order[index * bs..((index + 1) * bs).min(order.len())]
            .iter()
            .map(|&i| &self.rows[i])
            .collect();
        self.collate(&rows, device)
    }

    /// Pads `rows` on the right to the longest (rounded up to `pad_to_multiple_of`).
    fn collate(&self, rows: &[&Row], device: &Device) -> Result<Batch> {
        let b = rows.len();
        let longest = rows.iter().map(|r| r.input_ids.len()).max().unwrap_or(0);
        let t = match self.config.pad_to_multiple_of {
            Some(m) => longest.div_ceil(m) * m,
            None => longest,
        };
        let packed = self.config.packing;
        let mut ids = vec![self.pad_token_id; b * t];
        let mut labels = vec![IGNORE_INDEX; b * t];
        let mut mask = vec![0u32; b * t];
        let mut pos = vec![0u32; if packed { b * t } else { 0 }];
        let mut seg = vec![0u32; if packed { b * t } else { 0 }];
        let (mut num_tokens, mut num_label_tokens) = (0, 0);
        for (r, row) in rows.iter().enumerate() {
            let n = row.input_ids.len();
            let at = r * t;
            ids[at..at + n].copy_from_slice(&row.input_ids);
            labels[at..at + n].copy_from_slice(&row.labels);
            mask[at..at + n].fill(1);
            if packed {
                pos[at..at + n].copy_from_slice(&row.position_ids);
                seg[at..at + n].copy_from_slice(&row.segment_ids);
                let pad_segment = row.segment_ids.last().map_or(0, |s| s + 1);
                seg[at + n..at + t].fill(pad_segment);
            }
            num_tokens += n;
            num_label_tokens += count_labels(&row.labels);
        }
        let packed_tensor = |v: Vec<u32>| -> Result<Option<Tensor>> {
            Ok(if packed {
                Some(Tensor::from_vec(v, (b, t), device)?)
            } else {
                None
            })
        };
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            labels: Tensor::from_vec(labels, (b, t), device)?,
            attention_mask: Some(Tensor::from_vec(mask, (b, t), device)?),
            position_ids: packed_tensor(pos)?,
            segment_ids: packed_tensor(seg)?,
            num_tokens,
            num_label_tokens,
        })
    }
}

/// Concatenates documents `docs` into one packed row: positions restart at 0, segments count
/// up, and each document's first label is -100 so the loss never predicts across a boundary.
fn pack_row(docs: &[usize], examples: &[TokenizedExample]) -> Row {
    let mut row = Row {
        input_ids: Vec::new(),
        labels: Vec::new(),
        position_ids: Vec::new(),
        segment_ids: Vec::new(),
    };
    for (s, &d) in docs.iter().enumerate() {
        let ex = &examples[d];
        row.input_ids.extend_from_slice(&ex.input_ids);
        row.labels.push(IGNORE_INDEX);
        row.labels.extend_from_slice(&ex.labels[1..]);
        row.position_ids.extend(0..ex.len() as u32);
        row.segment_ids
            .extend(std::iter::repeat_n(s as u32, ex.len()));
    }
    row
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

    #[test]
    fn packed_row_masks_document_starts() {
        let a = TokenizedExample::full(vec![1, 2, 3]);
        let b = TokenizedExample::full(vec![4, 5]);
        let row = pack_row(&[0, 1], &[a, b]);
        assert_eq!(row.input_ids, vec![1, 2, 3, 4, 5]);
        assert_eq!(row.labels, vec![-100, 2, 3, -100, 5]);
        assert_eq!(row.position_ids, vec![0, 1, 2, 0, 1]);
        assert_eq!(row.segment_ids, vec![0, 0, 0, 1, 1]);
    }
}
