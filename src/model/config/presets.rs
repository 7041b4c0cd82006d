//! Named shapes of well-known checkpoints ([`Config::preset`]), and `tiny` for tests. The
//! numbers are those of each model's `config.json` on the Hugging Face hub; the parameter
//! counts in `mod.rs`'s tests check them against the model cards.

use super::{Config, Family, Llama3RopeScaling};
use crate::error::{Error, Result};

impl Config {
    /// Names of the built-in presets, for [`Config::preset`].
    pub const PRESETS: &'static [&'static str] = &[
        "tiny",
        "smollm2-135m",
        "smollm2-360m",
        "tinyllama-1.1b",
        "llama-3.2-1b",
        "llama-3-8b",
        "mistral-7b",
        "qwen2-0.5b",
    ];

    /// A named preset: `tiny` (a few hundred thousand parameters, for tests) or the shape of a
    /// well-known checkpoint.
    pub fn preset(name: &str) -> Result<Self> {
        let base = Config {
            family: Family::Llama,
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: 0,
            head_dim: 0,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            attention_bias: false,
            mlp_bias: false,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        };
        let cfg = match name {
            "tiny" => Config {
                vocab_size: 256,
                hidden_size: 64,
                intermediate_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 16,
                max_position_embeddings: 128,
                tie_word_embeddings: true,
                ..base
            },
            "smollm2-135m" => Config {
                vocab_size: 49152,
                hidden_size: 576,
                intermediate_size: 1536,
                num_hidden_layers: 30,
                num_attention_heads: 9,
                num_key_value_heads: 3,
                head_dim: 64,
                rope_theta: 100_000.0,
                max_position_embeddings: 8192,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
                ..base
            },
            "smollm2-360m" => Config {
                vocab_size: 49152,
                hidden_size: 960,
                intermediate_size: 2560,
                num_hidden_layers: 32,
                num_attention_heads: 15,
                num_key_value_heads: 5,
                head_dim: 64,
                rope_theta: 100_000.0,
                max_position_embeddings: 8192,
                tie_word_embeddings: true,
                ..base
            },
            "tinyllama-1.1b" => Config {
                vocab_size: 32000,
                hidden_size: 2048,
                intermediate_size: 5632,
                num_hidden_layers: 22,
                num_attention_heads: 32,
                num_key_value_heads: 4,
                head_dim: 64,
                ..base
            },
            "llama-3.2-1b" => Config {
                vocab_size: 128256,
                hidden_size: 2048,
                intermediate_size: 8192,
                num_hidden_layers: 16,
                num_attention_heads: 32,
                num_key_value_heads: 8,
                head_dim: 64,
                rope_theta: 500_000.0,
                rope_scaling: Some(Llama3RopeScaling {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
                max_position_embeddings: 131072,
                tie_word_embeddings: true,
                bos_token_id: Some(128000),
                eos_token_ids: vec![128001, 128008, 128009],
                ..base
            },
            "llama-3-8b" => Config {
                vocab_size: 128256,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                num_key_value_heads: 8,
                head_dim: 128,
                rope_theta: 500_000.0,
                max_position_embeddings: 8192,
                bos_token_id: Some(128000),
                eos_token_ids: vec![128001],
                ..base
            },
            "mistral-7b" => Config {
                family: Family::Mistral,
                vocab_size: 32000,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                num_key_value_heads: 8,
                head_dim: 128,
                max_position_embeddings: 32768,
                sliding_window: Some(4096),
                ..base
            },
            "qwen2-0.5b" => Config {
                family: Family::Qwen2,
                vocab_size: 151936,
                hidden_size: 896,
                intermediate_size: 4864,
                num_hidden_layers: 24,
                num_attention_heads: 14,
                num_key_value_heads: 2,
                head_dim: 64,
                rms_norm_eps: 1e-6,
                rope_theta: 1_000_000.0,
                max_position_embeddings: 32768,
                tie_word_embeddings: true,
                attention_bias: true,
                bos_token_id: None,
                eos_token_ids: vec![151643],
                ..base
            },
            other => {
                return Err(Error::config(
                    "preset",
                    format!(
                        "unknown preset `{other}`; known: {}",
                        Self::PRESETS.join(", ")
                    ),
                ))
            }
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_valid_and_an_unknown_one_lists_them() {
        for name in Config::PRESETS {
            Config::preset(name).unwrap().validate().unwrap();
        }
        let msg = Config::preset("nope").unwrap_err().to_string();
        assert!(
            msg.contains("nope") && msg.contains("tiny") && msg.contains("qwen2-0.5b"),
            "{msg}"
        );
    }
}
