//! `config.json` as transformers reads and writes it: [`HfConfig`] (every field optional, with
//! transformers' defaults), its conversion to [`Config`], and back ([`Config::to_hf_json`]).

use std::path::Path;

use serde::Deserialize;

use super::{Config, Family, Llama3RopeScaling};
use crate::error::{Error, Result};

/// Raw `config.json` as transformers writes it. Unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `model_type` (llama, mistral, qwen2).
    #[serde(default)]
    pub model_type: Option<String>,
    /// `architectures`.
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// `vocab_size`.
    pub vocab_size: usize,
    /// `hidden_size`.
    pub hidden_size: usize,
    /// `intermediate_size`.
    pub intermediate_size: usize,
    /// `num_hidden_layers`.
    pub num_hidden_layers: usize,
    /// `num_attention_heads`.
    pub num_attention_heads: usize,
    /// `num_key_value_heads` (defaults to `num_attention_heads`).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `head_dim` (defaults to hidden/heads).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// `rms_norm_eps` (default 1e-6).
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    /// `rope_theta` (default 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// `rope_scaling` object.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// `rope_parameters` (transformers ≥ 5 writes this instead of `rope_theta` and
    /// `rope_scaling`): `{"rope_type": "default" | "llama3", "rope_theta": .., ...}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    /// `max_position_embeddings` (default 2048).
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// `tie_word_embeddings` (default false).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// `attention_bias` (Llama; default false).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// `mlp_bias` (Llama; default false).
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// `sliding_window` (Mistral, Qwen2).
    #[serde(default)]
    pub sliding_window: Option<serde_json::Value>,
    /// `hidden_act` (must be silu).
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// `bos_token_id`.
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// `eos_token_id` (an integer or a list).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// `torch_dtype` as saved.
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn ids_of(v: &Option<serde_json::Value>, field: &str) -> Result<Vec<u32>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(vec![]),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(|x| vec![x as u32])
            .ok_or_else(|| Error::config(field, format!("expected a token id, found {n}"))),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as u32)
                    .ok_or_else(|| Error::config(field, format!("expected token ids, found {x}")))
            })
            .collect(),
        Some(other) => Err(Error::config(
            field,
            format!("expected a token id or a list, found {other}"),
        )),
    }
}

impl HfConfig {
    /// Parses `config.json` text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::format(
                path,
                format!(
                    "not a valid HF config.json (line {}, column {}): {e}",
                    e.line(),
                    e.column()
                ),
            )
        })
    }

    /// The family from `model_type` / `architectures`.
    pub fn family(&self) -> Result<Family> {
        let mt = self.model_type.as_deref().unwrap_or("");
        let arch = self
            .architectures
            .as_ref()
            .and_then(|a| a.first())
            .map(|s| s.as_str())
            .unwrap_or("");
        match (mt, arch) {
            ("llama", _) | (_, "LlamaForCausalLM") => Ok(Family::Llama),
            ("mistral", _) | (_, "MistralForCausalLM") => Ok(Family::Mistral),
            ("qwen2", _) | (_, "Qwen2ForCausalLM") => Ok(Family::Qwen2),
            _ => Err(Error::config(
                "model_type",
                format!(
                    "unsupported architecture (model_type `{mt}`, architectures `{arch}`); expected llama, mistral or qwen2"
                ),
            )),
        }
    }

    /// Converts to the model's [`Config`], validating it.
    pub fn into_config(self) -> Result<Config> {
        let family = self.family()?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::config(
                    "hidden_act",
                    format!("only `silu` (SwiGLU) is supported, found `{act}`"),
                ));
            }
        }
        // transformers 5 keeps θ and the scaling together in `rope_parameters`; the legacy
        // top-level fields are read first when a file has them.
        let params = self.rope_parameters.as_ref().filter(|v| v.is_object());
        let rope_theta = self
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")?.as_f64()));
        let rope_scaling = match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => params
                .filter(|p| {
                    let kind = p.get("rope_type").or_else(|| p.get("type"));
                    kind.and_then(|t| t.as_str()).unwrap_or("default") != "default"
                })
                .cloned(),
            other => other.clone(),
        };
        let rope_scaling = match &rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                if kind != "llama3" {
                    return Err(Error::config(
                        "rope_scaling",
                        format!("only rope_type `llama3` is supported, found `{kind}`"),
                    ));
                }
                Some(serde_json::from_value::<Llama3RopeScaling>(v.clone()).map_err(|e| {
                    Error::config("rope_scaling", format!("llama3 scaling needs factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: {e}"))
                })?)
            }
        };
        let sliding_window = match &self.sliding_window {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as usize),
            _ => None,
        };
        let heads = self.num_attention_heads;
        let cfg = Config {
            family,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size.checked_div(heads).unwrap_or(0)),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: family == Family::Qwen2 || self.attention_bias.unwrap_or(false),
            mlp_bias: self.mlp_bias.unwrap_or(false),
            sliding_window,
            bos_token_id: ids_of(&self.bos_token_id, "bos_token_id")?.first().copied(),
            eos_token_ids: ids_of(&self.eos_token_id, "eos_token_id")?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl Config {
    /// Reads and converts a HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        HfConfig::from_json(&text, path)?
            .into_config()
            .map_err(|e| match e {
                Error::Config { field, msg } => {
                    Error::format(path, format!("field `{field}`: {msg}"))
                }
                e => e,
            })
    }

    /// The HF `config.json` that transformers loads for this config.
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.as_ref().map(|s| serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
            "use_cache": true,
        });
        let obj = v.as_object_mut().expect("json! object");
        match self.family {
            Family::Llama => {
                obj.insert("attention_bias".into(), self.attention_bias.into());
                obj.insert("mlp_bias".into(), self.mlp_bias.into());
            }
            Family::Mistral | Family::Qwen2 => {
                obj.insert("sliding_window".into(), self.sliding_window.into());
            }
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                obj.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                obj.insert("eos_token_id".into(), many.to_vec().into());
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm2_config_json() {
        // The config.json of HuggingFaceTB/SmolLM2-135M-Instruct (fields that matter).
        let text = r#"{"architectures":["LlamaForCausalLM"],"bos_token_id":1,"eos_token_id":2,
            "hidden_act":"silu","hidden_size":576,"initializer_range":0.041666666666666664,
            "intermediate_size":1536,"max_position_embeddings":8192,"model_type":"llama",
            "num_attention_heads":9,"num_hidden_layers":30,"num_key_value_heads":3,
            "pretraining_tp":1,"rms_norm_eps":1e-05,"rope_scaling":null,"rope_theta":100000,
            "tie_word_embeddings":true,"torch_dtype":"bfloat16","use_cache":true,"vocab_size":49152}"#;
        let cfg = HfConfig::from_json(text, Path::new("config.json"))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg, Config::preset("smollm2-135m").unwrap());
        // 134,515,008 parameters as transformers reports for SmolLM2-135M.
        assert_eq!(cfg.num_parameters(), 134_515_008);
    }

    #[test]
    fn llama3_rope_scaling_and_eos_list() {
        let text = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,"intermediate_size":8192,
            "num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,"rope_theta":500000.0,
            "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"},"max_position_embeddings":131072,
            "tie_word_embeddings":true,"bos_token_id":128000,"eos_token_id":[128001,128008,128009],"rms_norm_eps":1e-05}"#;
        let cfg = HfConfig::from_json(text, Path::new("c.json"))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(cfg, Config::preset("llama-3.2-1b").unwrap());
        // Llama 3.2 1B: 1,235,814,400 parameters.
        assert_eq!(cfg.num_parameters(), 1_235_814_400);
    }

    #[test]
    fn qwen2_has_qkv_bias() {
        let text = r#"{"model_type":"qwen2","vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
            "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,"rope_theta":1000000.0,
            "max_position_embeddings":32768,"tie_word_embeddings":true,"sliding_window":32768,"eos_token_id":151643}"#;
        let cfg = HfConfig::from_json(text, Path::new("c.json"))
            .unwrap()
            .into_config()
            .unwrap();
        assert!(cfg.attention_bias);
        // Qwen2-0.5B: 494,032,768 parameters.
        assert_eq!(cfg.num_parameters(), 494_032_768);
    }

    #[test]
    fn bad_values_are_named() {
        let text = r#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3}"#;
        let err = HfConfig::from_json(text, Path::new("c.json"))
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("num_key_value_heads"), "{err}");
        let err = HfConfig::from_json(r#"{"model_type":"gpt2"}"#, Path::new("x/config.json"))
            .unwrap_err();
        assert!(err.to_string().contains("x/config.json"), "{err}");
        let text = r#"{"model_type":"bert","vocab_size":10,"hidden_size":64,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":4}"#;
        let err = HfConfig::from_json(text, Path::new("c.json"))
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("bert"), "{err}");
    }

    #[test]
    fn hf_json_round_trip() {
        for name in Config::PRESETS {
            let cfg = Config::preset(name).unwrap();
            let text = serde_json::to_string(&cfg.to_hf_json("float32")).unwrap();
            let back = HfConfig::from_json(&text, Path::new("c.json"))
                .unwrap()
                .into_config()
                .unwrap();
            assert_eq!(back, cfg, "{name}");
        }
    }
}
