//! A model's summary: its config, parameter counts by module kind, dtype and bytes — what
//! `tunelab info` prints and what the notebooks display.

use serde::Serialize;

use crate::model::config::Config;
use crate::model::llama::Llama;

/// One row of the parameter table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModuleRow {
    /// Module kind: `embed_tokens`, `q_proj`, ..., `norm`, `lm_head`.
    pub kind: String,
    /// How many modules of this kind.
    pub count: usize,
    /// Their parameters.
    pub parameters: usize,
    /// Their bytes in memory.
    pub bytes: usize,
    /// Layer implementations seen (e.g. `dense`, `nf4`).
    pub layer_kinds: Vec<String>,
}

/// What `tunelab info` shows.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    /// The model's config.
    pub config: Config,
    /// dtype of the base weights.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// Rows by module kind.
    pub modules: Vec<ModuleRow>,
    /// All parameters (a tied lm_head counted once).
    pub total_parameters: usize,
    /// All bytes (a tied lm_head counted once).
    pub total_bytes: usize,
}

fn bytes_of(t: &candle_core::Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

impl ModelSummary {
    /// Summarises `model`.
    pub fn of(model: &Llama) -> Self {
        let mut rows: Vec<ModuleRow> = Vec::new();
        let mut add = |kind: &str, params: usize, bytes: usize, layer_kind: Option<String>| {
            let row = match rows.iter_mut().find(|r| r.kind == kind) {
                Some(r) => r,
                None => {
                    rows.push(ModuleRow {
                        kind: kind.into(),
                        count: 0,
                        parameters: 0,
                        bytes: 0,
                        layer_kinds: vec![],
                    });
                    rows.last_mut().expect("just pushed")
                }
            };
            row.count += 1;
            row.parameters += params;
            row.bytes += bytes;
            if let Some(k) = layer_kind {
                if !row.layer_kinds.contains(&k) {
                    row.layer_kinds.push(k);
                }
            }
        };
        add(
            "embed_tokens",
            model.embed_tokens.elem_count(),
            bytes_of(&model.embed_tokens),
            None,
        );
        let tied = model.config().tie_word_embeddings;
        for (path, lin) in model.linears() {
            let kind = path.rsplit('.').next().unwrap_or(&path).to_string();
            let l = lin.layer();
            if path == "lm_head" && tied {
                add(
                    "lm_head (tied to embed_tokens)",
                    0,
                    0,
                    Some(lin.kind().into_owned()),
                );
            } else {
                add(
                    &kind,
                    l.num_parameters(),
                    l.storage_bytes(),
                    Some(lin.kind().into_owned()),
                );
            }
        }
        for b in &model.layers {
            add(
                "input_layernorm",
                b.input_layernorm.weight.elem_count(),
                bytes_of(&b.input_layernorm.weight),
                None,
            );
            add(
                "post_attention_layernorm",
                b.post_attention_layernorm.weight.elem_count(),
                bytes_of(&b.post_attention_layernorm.weight),
                None,
            );
        }
        add(
            "norm",
            model.norm.weight.elem_count(),
            bytes_of(&model.norm.weight),
            None,
        );
        let total_parameters = rows.iter().map(|r| r.parameters).sum();
        let total_bytes = rows.iter().map(|r| r.bytes).sum();
        Self {
            config: model.config().clone(),
            dtype: format!("{:?}", model.dtype()).to_lowercase(),
            device: crate::device::device_name(model.device()),
            modules: rows,
            total_parameters,
            total_bytes,
        }
    }

    /// A plain-text table.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "family: {:?}  layers: {}  hidden: {}  intermediate: {}  heads: {} (kv {})  head_dim: {}\n\
             vocab: {}  context: {}  rope_theta: {}  tied embeddings: {}\n\
             dtype: {}  device: {}\n\n",
            c.family,
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.vocab_size,
            c.max_position_embeddings,
            c.rope_theta,
            c.tie_word_embeddings,
            self.dtype,
            self.device
        );
        s.push_str(&format!(
            "{:<32} {:>6} {:>14} {:>14}  {}\n",
            "module", "count", "parameters", "bytes", "layers"
        ));
        for r in &self.modules {
            s.push_str(&format!(
                "{:<32} {:>6} {:>14} {:>14}  {}\n",
                r.kind,
                r.count,
                group(r.parameters),
                group(r.bytes),
                r.layer_kinds.join(",")
            ));
        }
        s.push_str(&format!(
            "{:<32} {:>6} {:>14} {:>14}\n",
            "total",
            "",
            group(self.total_parameters),
            group(self.total_bytes)
        ));
        s
    }
}

/// `1234567` -> `1,234,567`.
pub fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn tiny_summary_counts_match_config() {
        let cfg = Config::preset("tiny").unwrap();
        let m = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 0).unwrap();
        let s = ModelSummary::of(&m);
        assert_eq!(s.total_parameters, cfg.num_parameters());
        assert_eq!(s.total_parameters, m.num_parameters());
        assert_eq!(s.total_bytes, 4 * cfg.num_parameters());
        let q = s.modules.iter().find(|r| r.kind == "q_proj").unwrap();
        assert_eq!((q.count, q.parameters), (2, 2 * 64 * 64));
        assert_eq!(group(1234567), "1,234,567");
        assert!(s.to_text().contains("q_proj"));
    }
}
