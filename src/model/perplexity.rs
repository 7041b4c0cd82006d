//! Perplexity of a text under the model, with the strided sliding window of transformers'
//! guide "Perplexity of fixed-length models" (huggingface.co/docs/transformers/perplexity).
//!
//! ```text
//! PPL(X) = exp( −(1/t) · Σᵢ log p(xᵢ | x<ᵢ) )          over the t predicted tokens x₁..x_t
//! ```
//!
//! A text longer than the context is cut into windows of `max_length` tokens starting every
//! `stride` tokens (`begin = 0, stride, 2·stride, ...`, `end = min(begin + max_length, n)`,
//! stopping at the window that reaches the end). Each window scores only the tokens the
//! previous windows have not scored (`prev_end..end`): the overlap is context only (labels
//! −100 in the guide), so every token but the first is predicted exactly once, with at least
//! `max_length − stride` tokens of context (or all of them, near the start). A smaller stride
//! gives more context and a lower (better) perplexity, at the price of more forward passes.
//!
//! One detail differs from the guide's code: it weights each window's mean loss by
//! `num_valid_tokens − 1` ("subtract batch_size due to internal label shift"), which is right
//! for the first window but one short for the later ones, whose first scored token does have a
//! context in the window. Here the negative log-likelihoods of all scored tokens are summed (in
//! f64) and divided by their count. Both agree whenever the text fits in one window, and differ
//! by far less than a percent otherwise.

use candle_core::{DType, Tensor, D};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::llama::{ForwardOptions, Llama};
use crate::model::tokenizer::Tokenizer;

/// Positions whose logits are computed at once: `(chunk, vocab)` f32 logits, 50 MB for
/// SmolLM2's 49152-token vocabulary, instead of `(max_length, vocab)`.
const LOGITS_CHUNK: usize = 256;

/// How to cut the text into windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PerplexityOptions {
    /// Tokens per window (the guide's `max_length`); `None` = the model's context
    /// (`max_position_embeddings`).
    pub max_length: Option<usize>,
    /// Start of one window to the start of the next; `None` = `max_length / 2` (the guide runs
    /// GPT-2's 1024 with a stride of 512). Must be in `1..=max_length`.
    pub stride: Option<usize>,
    /// Tokenize with the model's special tokens (BOS if its tokenizer adds one), as
    /// transformers' `tokenizer(text)` does. Default `true`.
    pub add_special_tokens: bool,
}

impl Default for PerplexityOptions {
    fn default() -> Self {
        Self {
            max_length: None,
            stride: None,
            add_special_tokens: true,
        }
    }
}

impl PerplexityOptions {
    /// Sets `max_length`.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Sets `stride`.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = Some(stride);
        self
    }

    /// `(max_length, stride)` for `model`, checked.
    fn resolve(&self, model: &Llama) -> Result<(usize, usize)> {
        let context = model.config().max_position_embeddings;
        let max_length = self.max_length.unwrap_or(context);
        if max_length < 2 || max_length > context {
            return Err(Error::config(
                "max_length",
                format!(
                    "should be between 2 and the model's context ({context}) but is {max_length}"
                ),
            ));
        }
        let stride = self.stride.unwrap_or((max_length / 2).max(1));
        if stride == 0 || stride > max_length {
            return Err(Error::config(
                "stride",
                format!(
                    "should be between 1 and max_length ({max_length}) but is {stride}; a \
                     larger stride would skip tokens"
                ),
            ));
        }
        Ok((max_length, stride))
    }
}

/// A perplexity and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Perplexity {
    /// `exp(nll)`.
    pub ppl: f64,
    /// Mean negative log-likelihood per predicted token, in nats (the cross-entropy).
    pub nll: f64,
    /// Σ of the per-token negative log-likelihoods.
    pub nll_sum: f64,
    /// Predicted (scored) tokens: `n − 1` for `n` input tokens.
    pub tokens: usize,
    /// Forward passes (windows).
    pub windows: usize,
    /// Window length used.
    pub max_length: usize,
    /// Stride used.
    pub stride: usize,
}

/// Perplexity of `text`, tokenized by `tokenizer` (see [`PerplexityOptions::add_special_tokens`]).
pub fn perplexity(
    model: &Llama,
    tokenizer: &Tokenizer,
    text: &str,
    opts: &PerplexityOptions,
) -> Result<Perplexity> {
    let ids = tokenizer.encode(text, opts.add_special_tokens)?;
    perplexity_of_ids(model, &ids, opts)
}

/// Perplexity of the token sequence `ids` (at least 2 tokens), by the sliding window of the
/// module docs.
pub fn perplexity_of_ids(
    model: &Llama,
    ids: &[u32],
    opts: &PerplexityOptions,
) -> Result<Perplexity> {
    let (max_length, stride) = opts.resolve(model)?;
    let n = ids.len();
    if n < 2 {
        return Err(Error::Input(format!(
            "perplexity needs at least 2 tokens (one to predict from, one to predict), got {n}"
        )));
    }
    let device = model.device();
    let (mut nll_sum, mut tokens, mut windows) = (0f64, 0usize, 0usize);
    let (mut begin, mut prev_end) = (0usize, 0usize);
    loop {
        let end = (begin + max_length).min(n);
        // Score tokens first..end; token j is predicted by the hidden state at j − 1.
        let first = prev_end.max(begin + 1);
        let window = Tensor::new(&ids[begin..end], device)?.unsqueeze(0)?; // (1, L)
        let hidden = model.forward_hidden(&window, &ForwardOptions::default(), None)?; // (1, L, C)
        let mut j = first;
        while j < end {
            let len = LOGITS_CHUNK.min(end - j);
            let h = hidden.narrow(1, j - 1 - begin, len)?;
            let logits = model
                .lm_head
                .forward(&h)?
                .to_dtype(DType::F32)?
                .squeeze(0)?; // (len, V)
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let targets = Tensor::new(&ids[j..j + len], device)?.unsqueeze(1)?; // (len, 1)
            let picked = logp
                .gather(&targets, 1)?
                .flatten_all()?
                .to_dtype(DType::F64)?;
            nll_sum -= picked.to_vec1::<f64>()?.iter().sum::<f64>();
            j += len;
        }
        tokens += end - first;
        windows += 1;
        prev_end = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    let nll = nll_sum / tokens as f64;
    Ok(Perplexity {
        ppl: nll.exp(),
        nll,
        nll_sum,
        tokens,
        windows,
        max_length,
        stride,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Config;
    use candle_core::Device;

    fn tiny() -> Llama {
        Llama::init_random(
            &Config::preset("tiny").unwrap(),
            DType::F32,
            &Device::Cpu,
            7,
        )
        .unwrap()
    }

    fn ids(n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 37 + 11) % 256).collect()
    }

    /// `−log softmax(z)[y] = logsumexp(z) − z_y`, in f64 from the f32 logits.
    fn nll_by_hand(logits: &[f32], y: u32) -> f64 {
        let m = logits
            .iter()
            .fold(f64::NEG_INFINITY, |a, &z| a.max(z as f64));
        let lse = m + logits
            .iter()
            .map(|&z| (z as f64 - m).exp())
            .sum::<f64>()
            .ln();
        lse - logits[y as usize] as f64
    }

    /// Logits of `ids` in one forward, `(T, V)` as rows.
    fn logits(model: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
        let x = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model
            .forward(&x, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap()
    }

    #[test]
    fn one_window_is_exp_of_mean_next_token_cross_entropy() {
        let m = tiny();
        let ids = ids(40);
        let l = logits(&m, &ids);
        let want: f64 = (1..40).map(|j| nll_by_hand(&l[j - 1], ids[j])).sum::<f64>() / 39.0;
        let p = perplexity_of_ids(&m, &ids, &PerplexityOptions::default()).unwrap();
        assert_eq!((p.tokens, p.windows, p.max_length), (39, 1, 128));
        assert!(((p.nll - want) / want).abs() < 1e-5, "{} vs {want}", p.nll);
        assert!(((p.ppl - want.exp()) / want.exp()).abs() < 1e-5);
        // A random model with std-0.02 weights is close to uniform over the 256 tokens.
        assert!((p.ppl - 256.0).abs() < 10.0, "{}", p.ppl);
    }

    /// Windows [0,16) [8,24) [16,32) [24,40): tokens 1..16 scored in the first, then 8 new ones
    /// per window, each with the window's earlier tokens as context.
    #[test]
    fn sliding_window_scores_each_token_once_with_its_window_context() {
        let m = tiny();
        let ids = ids(40);
        let opts = PerplexityOptions::default()
            .with_max_length(16)
            .with_stride(8);
        let p = perplexity_of_ids(&m, &ids, &opts).unwrap();
        assert_eq!((p.tokens, p.windows), (39, 4));
        let mut sum = 0.0;
        for (begin, first) in [(0usize, 1usize), (8, 16), (16, 24), (24, 32)] {
            let l = logits(&m, &ids[begin..begin + 16]);
            for j in first..begin + 16 {
                sum += nll_by_hand(&l[j - 1 - begin], ids[j]);
            }
        }
        assert!(
            ((p.nll_sum - sum) / sum).abs() < 1e-5,
            "{} vs {sum}",
            p.nll_sum
        );
        // Disjoint windows (stride = max_length): each window's first token is never scored.
        let p = perplexity_of_ids(&m, &ids, &opts.clone().with_stride(16)).unwrap();
        assert_eq!((p.tokens, p.windows), (40 - 3, 3));
    }

    #[test]
    fn bad_options_are_errors() {
        let m = tiny();
        let e = perplexity_of_ids(&m, &[1], &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2 tokens"), "{e}");
        let o = PerplexityOptions::default()
            .with_max_length(16)
            .with_stride(17);
        let e = perplexity_of_ids(&m, &ids(20), &o).unwrap_err().to_string();
        assert!(e.contains("`stride`") && e.contains("17"), "{e}");
        let o = PerplexityOptions::default().with_max_length(129);
        let e = perplexity_of_ids(&m, &ids(20), &o).unwrap_err().to_string();
        assert!(e.contains("`max_length`") && e.contains("128"), "{e}");
        let e = perplexity_of_ids(&m, &[1, 999], &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("999"), "{e}");
    }
}
