//! Rows to tensors: the [`Batcher`] holds the rows (examples, or packed rows), orders them per
//! epoch and collates a batch.
//!
//! **Collation** pads to the longest row of the batch (rounded up to `pad_to_multiple_of`) on
//! the right with the pad token (the tokenizer's EOS), labels -100 and attention mask 0 there
//! (transformers' `DataCollatorForLanguageModeling` with right padding).
//!
//! **Batching** is stateless: [`Batcher::batch`]`(epoch, index)` depends only on the examples,
//! the config and its arguments, so a resumed run gets exactly the batches it would have had.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::pack::{pack_bfd, pack_row};
use super::tokenize::{count_labels, tokenize_conversations, tokenize_texts, TokenizeReport};
use super::{BatchConfig, TokenizedExample, IGNORE_INDEX};
use crate::error::{Error, Result};
use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::llama::ForwardOptions;
use crate::model::tokenizer::Tokenizer;

/// One row of a batch before padding.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) input_ids: Vec<u32>,
    pub(super) labels: Vec<i64>,
    /// Packed rows only: positions restarting per document, and document numbers.
    pub(super) position_ids: Vec<u32>,
    pub(super) segment_ids: Vec<u32>,
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
    /// length, or is longer than `max_length` (truncate with
    /// [`truncate_examples`](super::truncate_examples) first).
    pub fn new(
        examples: Vec<TokenizedExample>,
        config: &BatchConfig,
        pad_token_id: u32,
    ) -> Result<Self> {
        config.validate()?;
        if examples.is_empty() {
            return Err(Error::Input("Batcher: no examples".into()));
        }
        let max = config.max_length;
        for (i, ex) in examples.iter().enumerate() {
            ex.check_aligned().map_err(|e| e.at_example(i))?;
            if ex.is_empty() || ex.len() > max {
                return Err(Error::Input(format!(
                    "{} tokens; expected 1..={max} (max_length; truncate with \
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
