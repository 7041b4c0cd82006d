//! Model configuration, in two tiers as in candle-transformers: [`HfConfig`] mirrors a Hugging
//! Face `config.json` on disk (optional fields, defaults of transformers; `hf_config.rs`), and
//! [`Config`] is the plain struct the model code uses (this file, with its checks, the GGUF
//! `llama.*` / `qwen2.*` metadata conversion and the parameter count).
//! [`Config::preset`] names a few well-known shapes, including a `tiny` one for tests
//! (`presets.rs`).
//!
//! Families covered: Llama 2/3 (with Llama 3 rope scaling), Mistral, SmolLM2, TinyLlama and
//! Qwen2 (which has biases on q/k/v).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

mod hf_config;
mod presets;

pub use hf_config::HfConfig;

/// Llama 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Scale applied to low frequencies (`factor`, 8.0 for Llama 3.1).
    pub factor: f64,
    /// `low_freq_factor` (1.0 for Llama 3.1).
    pub low_freq_factor: f64,
    /// `high_freq_factor` (4.0 for Llama 3.1).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` (8192 for Llama 3.1).
    pub original_max_position_embeddings: usize,
}

/// The architectures the model code implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama 2/3, SmolLM2, TinyLlama.
    Llama,
    /// Mistral (same block as Llama; sliding window not applied, see [`Config::sliding_window`]).
    Mistral,
    /// Qwen2 (Llama block with biases on q, k and v).
    Qwen2,
}

impl Family {
    /// The HF `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }

    /// The HF `architectures[0]` string.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// The configuration the model code uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Which architecture variant.
    pub family: Family,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width `d_model`.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Per-head width (usually `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Llama 3 rope scaling, if any.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Context length the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2; Llama's `attention_bias`, which also puts one on
    /// `o_proj`, see [`Config::o_proj_bias`]).
    pub attention_bias: bool,
    /// Bias on the MLP projections (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// Mistral's sliding window; recorded and written back, but attention is full (exact for
    /// sequences no longer than the window).
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (Llama 3 has several).
    pub eos_token_ids: Vec<u32>,
}

impl Config {
    /// Builds the config from GGUF `llama.*` metadata (llama.cpp's names).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch = g.get_str("general.architecture")?;
        let family = match arch {
            "llama" => Family::Llama,
            "qwen2" => Family::Qwen2,
            other => {
                return Err(Error::format(
                    g.path(),
                    format!("GGUF `general.architecture` is `{other}`; supported: llama, qwen2"),
                ))
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = g.get_usize(&k("embedding_length"))?;
        let heads = g.get_usize(&k("attention.head_count"))?;
        let kv_heads = g
            .get_usize_opt(&k("attention.head_count_kv"))?
            .unwrap_or(heads);
        let head_dim = match g.get_usize_opt(&k("attention.key_length"))? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let vocab_size = match g.get_usize_opt(&k("vocab_size"))? {
            Some(v) => v,
            None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let eos = g.get_usize_opt("tokenizer.ggml.eos_token_id")?;
        let cfg = Config {
            family,
            vocab_size,
            hidden_size: hidden,
            intermediate_size: g.get_usize(&k("feed_forward_length"))?,
            num_hidden_layers: g.get_usize(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: g
                .get_f64_opt(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: g.get_f64_opt(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: g.get_usize_opt(&k("context_length"))?.unwrap_or(2048),
            tie_word_embeddings: !g.has_tensor("output.weight"),
            attention_bias: family == Family::Qwen2 || g.has_tensor("blk.0.attn_q.bias"),
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: g
                .get_usize_opt("tokenizer.ggml.bos_token_id")?
                .map(|x| x as u32),
            eos_token_ids: eos.map(|x| vec![x as u32]).unwrap_or_default(),
        };
        cfg.validate()
            .map_err(|e| Error::format(g.path(), e.to_string()))?;
        Ok(cfg)
    }

    /// Whether `o_proj` has a bias: Llama's `attention_bias` covers all four attention
    /// projections (transformers' `LlamaAttention`), Qwen2's q/k/v biases do not.
    pub fn o_proj_bias(&self) -> bool {
        self.attention_bias && self.family == Family::Llama
    }

    /// Checks that the shape numbers are consistent; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::config(
                    field,
                    "should be a positive integer but is 0",
                ));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(Error::config(
                "head_dim",
                format!("RoPE needs an even head_dim, found {}", self.head_dim),
            ));
        }
        Ok(())
    }

    /// Number of parameters of the dense model described by this config.
    pub fn num_parameters(&self) -> usize {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let q = self.num_attention_heads * hd;
        let kv = self.num_key_value_heads * hd;
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.attention_bias { q + 2 * kv } else { 0 }
            + if self.o_proj_bias() { h } else { 0 };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let per_layer = attn + mlp + 2 * h;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.num_hidden_layers * per_layer + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_8b_parameter_count() {
        // Meta-Llama-3-8B: 8,030,261,248 parameters (its model card's 8.03B).
        assert_eq!(
            Config::preset("llama-3-8b").unwrap().num_parameters(),
            8_030_261_248
        );
    }

    #[test]
    fn tinyllama_parameter_count() {
        // TinyLlama-1.1B: 1,100,048,384 parameters.
        assert_eq!(
            Config::preset("tinyllama-1.1b").unwrap().num_parameters(),
            1_100_048_384
        );
    }
}
