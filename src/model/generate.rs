//! Text generation: greedy decoding or sampling with temperature, top-k, top-p and a
//! repetition penalty, stopping on EOS, stop strings or `max_new_tokens`, seedable, with a
//! streaming callback. The processors run in transformers' order:
//! repetition penalty → temperature → top-k → top-p → sample.
//!
//! - repetition penalty (Keskar et al. 2019, CTRL): for every token already in the context,
//!   `logit / p` if the logit is positive, `logit · p` otherwise;
//! - temperature: `logits / T`;
//! - top-k: keep the `k` largest logits;
//! - top-p (Holtzman et al. 2019): keep the smallest set of most likely tokens whose
//!   probability sums to at least `p`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::model::chat_template::Message;
use crate::model::config::Config;
use crate::model::llama::{KvCache, Llama};
use crate::model::tokenizer::Tokenizer;

/// How to generate; the field names and defaults are transformers' `GenerationConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// New tokens at most.
    pub max_new_tokens: usize,
    /// Sample (`true`) or take the arg-max (`false`, greedy).
    pub do_sample: bool,
    /// Softmax temperature (sampling only).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (sampling only); `None` or 0 keeps all.
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold (sampling only); `None` or 1.0 keeps all.
    pub top_p: Option<f64>,
    /// Repetition penalty (1.0 = off); applied in greedy mode too, as in transformers.
    pub repetition_penalty: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Stop when the generated text contains one of these (the text is cut before it).
    pub stop_strings: Vec<String>,
    /// Stop on these ids; empty means the model's and tokenizer's EOS.
    pub eos_token_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 42,
            stop_strings: vec![],
            eos_token_ids: vec![],
        }
    }
}

impl GenerationConfig {
    /// Greedy decoding of at most `max_new_tokens`.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            ..Self::default()
        }
    }

    /// Sampling with `temperature` and `top_p`.
    pub fn sampling(temperature: f64, top_p: f64) -> Self {
        Self {
            do_sample: true,
            temperature,
            top_p: Some(top_p),
            ..Self::default()
        }
    }

    /// Sets `max_new_tokens`.
    pub fn with_max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Checks the values; the error names the field and the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.do_sample && !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::config(
                "temperature",
                format!(
                    "should be a positive number when sampling but is {}",
                    self.temperature
                ),
            ));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::config(
                    "top_p",
                    format!("should be in (0, 1] but is {p}"),
                ));
            }
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::config(
                "repetition_penalty",
                format!(
                    "should be a positive number but is {}",
                    self.repetition_penalty
                ),
            ));
        }
        Ok(())
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is not part of the text).
    Eos,
    /// A stop string appeared; the text is cut before it.
    StopString(String),
    /// `max_new_tokens` were produced.
    MaxNewTokens,
    /// The model's context (max_position_embeddings) is full.
    ContextFull,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Ids of the generated tokens (the EOS token included if one stopped generation).
    pub token_ids: Vec<u32>,
    /// The generated text (special tokens skipped, cut at a stop string).
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt (prefill).
    pub prefill_seconds: f64,
    /// Seconds spent producing the new tokens.
    pub decode_seconds: f64,
}

impl Generation {
    /// New tokens per second of decoding.
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_seconds > 0.0 {
            self.token_ids.len() as f64 / self.decode_seconds
        } else {
            0.0
        }
    }
}

/// Applies the repetition penalty to `logits` for every id in `context`.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in context {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            logits[i] = if logits[i] > 0.0 {
                logits[i] / penalty
            } else {
                logits[i] * penalty
            };
        }
    }
}

/// The index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws a token from `logits` with temperature, top-k and top-p, using `rng`.
pub fn sample(logits: &[f32], cfg: &GenerationConfig, rng: &mut StdRng) -> u32 {
    let t = cfg.temperature as f32;
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = cfg.top_k.filter(|&k| k > 0 && k < idx.len()) {
        idx.truncate(k);
    }
    let max = logits[idx[0]] / t;
    let mut probs: Vec<f32> = idx.iter().map(|&i| (logits[i] / t - max).exp()).collect();
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
        // Keep the smallest prefix whose mass reaches p (at least one token).
        let mut acc = 0.0f32;
        let mut keep = probs.len();
        for (n, q) in probs.iter().enumerate() {
            acc += q;
            if acc >= p as f32 {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let s: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= s);
    }
    let u: f32 = rng.random();
    let mut acc = 0.0;
    for (n, q) in probs.iter().enumerate() {
        acc += q;
        if u < acc {
            return idx[n] as u32;
        }
    }
    idx[probs.len() - 1] as u32
}

/// What generation needs of a model: its config and device, and the logits of the next token.
/// Implemented by [`Llama`] and, through `peft::PeftMethod`, by every PEFT method (prompt
/// tuning puts its virtual tokens first, prefix tuning starts the cache from its prefix).
pub trait CausalLm {
    /// The model's configuration (context length, EOS ids).
    fn config(&self) -> &Config;
    /// The device the model runs on.
    fn device(&self) -> &Device;
    /// Logits `(1, V)` (f32) of the last position of `input_ids: (1, T)`, the keys and values
    /// appended to `cache`. The first call gets an empty cache and the whole prompt; each later
    /// call one new token.
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;
}

impl CausalLm for Llama {
    fn config(&self) -> &Config {
        Llama::config(self)
    }
    fn device(&self) -> &Device {
        Llama::device(self)
    }
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_last(input_ids, Some(cache))
    }
}

/// Generates from `prompt_ids`, calling `on_text` with each new piece of text as soon as it
/// is complete (for streaming).
pub fn generate_ids(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    cfg: &GenerationConfig,
    mut on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Generation> {
    cfg.validate()?;
    if prompt_ids.is_empty() {
        return Err(Error::Input("the prompt is empty (0 tokens)".into()));
    }
    let ctx = model.config().max_position_embeddings;
    if prompt_ids.len() >= ctx {
        return Err(Error::Input(format!(
            "the prompt is {} tokens but the model's context (max_position_embeddings) is {ctx}: no room to generate; shorten the prompt",
            prompt_ids.len()
        )));
    }
    let mut eos = cfg.eos_token_ids.clone();
    if eos.is_empty() {
        eos.extend(model.config().eos_token_ids.iter().copied());
        eos.extend(tokenizer.eos_token_id());
    }
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut cache = KvCache::new();
    let mut context: Vec<u32> = prompt_ids.to_vec();
    let mut generated: Vec<u32> = Vec::new();
    let mut stream = tokenizer.stream();
    let mut text = String::new();
    let mut finish = FinishReason::MaxNewTokens;

    let start = Instant::now();
    let input = Tensor::new(prompt_ids, device)?.unsqueeze(0)?;
    let mut logits = model.next_logits(&input, &mut cache)?;
    let prefill_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    while generated.len() < cfg.max_new_tokens {
        let mut l: Vec<f32> = logits.squeeze(0)?.to_vec1()?;
        apply_repetition_penalty(&mut l, &context, cfg.repetition_penalty);
        let next = if cfg.do_sample {
            sample(&l, cfg, &mut rng)
        } else {
            argmax(&l)
        };
        generated.push(next);
        context.push(next);
        if eos.contains(&next) {
            finish = FinishReason::Eos;
            break;
        }
        if let Some(piece) = stream.push(next)? {
            text.push_str(&piece);
            if let Some(stop) = cfg
                .stop_strings
                .iter()
                .find(|s| !s.is_empty() && text.contains(s.as_str()))
            {
                let cut = text.find(stop.as_str()).unwrap_or(text.len());
                let emitted = text.len() - piece.len();
                if cut > emitted {
                    if let Some(cb) = on_text.as_mut() {
                        cb(&text[emitted..cut]);
                    }
                }
                text.truncate(cut);
                finish = FinishReason::StopString(stop.clone());
                break;
            }
            if let Some(cb) = on_text.as_mut() {
                cb(&piece);
            }
        }
        if context.len() >= ctx {
            finish = FinishReason::ContextFull;
            break;
        }
        if generated.len() < cfg.max_new_tokens {
            let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
            logits = model.next_logits(&input, &mut cache)?;
        }
    }
    if !matches!(finish, FinishReason::StopString(_)) {
        if let Some(rest) = stream.flush()? {
            text.push_str(&rest);
            if let Some(cb) = on_text.as_mut() {
                cb(&rest);
            }
        }
    }
    Ok(Generation {
        token_ids: generated,
        text,
        finish_reason: finish,
        prompt_tokens: prompt_ids.len(),
        prefill_seconds,
        decode_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Generates a continuation of `prompt` (special-token markup in it is recognised; BOS is
/// added if the tokenizer asks for it).
pub fn generate(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt: &str,
    cfg: &GenerationConfig,
    on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Generation> {
    let ids = tokenizer.encode(prompt, true)?;
    generate_ids(model, tokenizer, &ids, cfg, on_text)
}

/// Renders `messages` with the model's own chat template (with the generation prompt) and
/// generates the assistant's answer.
pub fn chat(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    messages: &[Message],
    cfg: &GenerationConfig,
    on_text: Option<&mut dyn FnMut(&str)>,
) -> Result<Generation> {
    let prompt = tokenizer.apply_chat_template(messages, true)?;
    // The template writes BOS itself when the model wants one.
    let ids = tokenizer.encode(&prompt, false)?;
    generate_ids(model, tokenizer, &ids, cfg, on_text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_as_transformers() {
        // transformers' RepetitionPenaltyLogitsProcessor with penalty 2.0 on ids [0, 1, 1]:
        // positive logits are divided, negative multiplied, each id once.
        let mut l = vec![2.0f32, -1.0, 0.5];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -2.0, 0.5]);
    }

    #[test]
    fn top_k_one_is_greedy_and_top_p_keeps_the_nucleus() {
        let logits = vec![0.0f32, 3.0, 1.0, 2.9];
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = GenerationConfig {
            do_sample: true,
            top_k: Some(1),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &cfg, &mut rng), 1);
        }
        // p(1) ≈ 0.46, p(3) ≈ 0.42: top_p = 0.5 keeps {1, 3} only.
        let cfg = GenerationConfig {
            do_sample: true,
            top_p: Some(0.5),
            ..Default::default()
        };
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[sample(&logits, &cfg, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[0] + seen[2], 0, "{seen:?}");
        assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
        assert_eq!(argmax(&logits), 1);
    }

    #[test]
    fn sampling_is_seeded() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = GenerationConfig::sampling(0.8, 0.95);
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..30)
                .map(|_| sample(&logits, &cfg, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn bad_config_is_named() {
        let cfg = GenerationConfig {
            do_sample: true,
            temperature: 0.0,
            ..Default::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("temperature"));
        let cfg = GenerationConfig {
            top_p: Some(1.5),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().to_string().contains("top_p"));
    }
}
