//! Prompt tuning (Lester et al. 2021, *The Power of Scale for Parameter-Efficient Prompt
//! Tuning*) and prefix tuning (Li & Liang 2021, *Prefix-Tuning: Optimizing Continuous Prompts
//! for Generation*), as peft implements them for causal language models
//! (`tuners/prompt_tuning`, `tuners/prefix_tuning`, `PeftModelForCausalLM.forward`,
//! `PeftModel.get_prompt`, `_prepare_prompt_learning_config`; read in peft 0.21.2).
//!
//! ```text
//! prompt tuning:  x = [P ; Embed(ids)]                      P: [n, C] trainable   (B, n+T, C)
//!                 positions 0..n+T, attention_mask [1ⁿ ; mask]
//! prefix tuning:  K_l = [Pᴷ_l ; RoPE(k_proj(h))],  V_l = [Pⱽ_l ; v_proj(h)]        (B, KV, n+T, D)
//!                 P = E                           E: [n, L·2·kv_dim]           (no projection)
//!                 P = W₂·tanh(W₁·E + b₁) + b₂      E: [n, kv_dim], W₁: [enc, kv_dim],
//!                                                 W₂: [L·2·kv_dim, enc]       (prefix_projection)
//! ```
//!
//! What peft does, and what is done here:
//! - Prompt tuning: peft's forward returns logits for all `n + T` positions and pads `labels`
//!   with `n` × −100. [`PromptTuningModel::forward`] returns the `(B, T, V)` logits of the real
//!   tokens, which are peft's `logits[:, n:]`: the same numbers, aligned with `input_ids` and
//!   `labels`. `position_ids` are not supported (peft drops them with a warning; here an error).
//! - Prefix tuning: peft passes the prefix as `past_key_values`. transformers then uses the
//!   prefix keys as they are — no RoPE is applied to them — and gives the real tokens the
//!   positions `n..n+T` (`cache_position` starts at the cache length). So a prefix taken from
//!   the base model's own KV cache of an n-token text makes the model behave exactly as the
//!   base on `[text ; input]` ([`PrefixTuningModel::set_prefix_from_cache`], peft's
//!   `initialize_prefix_tuning_from_past_key_values`). Given `position_ids` are shifted by `n`,
//!   as peft 0.21 does.
//! - Grouped-query attention: peft sets `token_dim = kv_heads·head_dim` and
//!   `num_attention_heads = kv_heads` for prefix tuning (peft #1901), so the prefix per layer is
//!   `[n, kv_dim]` for keys and values, and with `prefix_projection` the embedding is
//!   `[n, kv_dim]` (not `[n, hidden]`) and `encoder_hidden_size` defaults to `kv_dim`.
//! - Initialisation as torch's defaults: `nn.Embedding` ~ N(0, 1); `nn.Linear` weight and bias
//!   ~ U(−1/√in, 1/√in). Prompt tuning's `TEXT` / `SAMPLE_VOCAB` copy rows of the frozen
//!   embedding matrix (in f32).
//! - Saved as peft saves them: `adapter_model.safetensors` holds one f32 tensor,
//!   `prompt_embeddings` — `[n, C]` for prompt tuning, the encoder's output `[n, L·2·kv_dim]`
//!   for prefix tuning (the projection MLP is not saved; a loaded prefix is that tensor, as
//!   peft's `inference_mode`).
//!
//! The trainable tensors are f32 `Var`s in a `VarMap` under peft's parameter names
//! (`prompt_encoder.default.embedding.weight`, `...transform.0.weight`, ...); the base model is
//! untouched and never sees a `Var`.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | what both share: initialisers, masks, the adapter file (`prompt_embeddings`) |
//! | `tuning.rs` | [`PromptTuningConfig`], [`PromptTuningModel`] |
//! | `prefix.rs` | [`PrefixTuningConfig`], [`PrefixTuningModel`] |

mod prefix;
mod tuning;

pub use prefix::{get_prefix_tuning_model, PrefixTuningConfig, PrefixTuningModel};
pub use tuning::{
    get_prompt_tuning_model, PromptTuningConfig, PromptTuningInit, PromptTuningModel,
};

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use super::method::{named_vars, PeftMethod};
use super::model::TrainableParameters;
use crate::fs::write_bytes_atomic;
use crate::model::config::Config;
use crate::model::linear::linear_forward;
use crate::model::llama::{ForwardOptions, KvCache, Llama};
use crate::model::load::save_safetensors;
use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

pub(super) const ADAPTER_CONFIG: &str = "adapter_config.json";
pub(super) const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The one tensor of a prompt-learning adapter file.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

pub(super) fn check_virtual_tokens(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::config(
            "num_virtual_tokens",
            "must be at least 1, got 0",
        ));
    }
    Ok(())
}

/// N(0, 1) as `[rows, cols]`, f32: `nn.Embedding`'s default.
pub(super) fn normal(
    rows: usize,
    cols: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    crate::model::init::normal(rows, cols, 1.0, rng, device)
}

/// U(−1/√fan_in, 1/√fan_in) of `shape`: torch's `nn.Linear` default for weight and bias.
pub(super) fn uniform(
    shape: &[usize],
    fan_in: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// Rows `ids` of the frozen embedding matrix, as f32 `[len, C]`.
pub(super) fn embedding_rows(model: &Llama, ids: &[u32]) -> Result<Tensor> {
    let vocab = model.config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::Input(format!(
            "token id {bad} is out of the vocabulary (size {vocab})"
        )));
    }
    let idx = Tensor::new(ids, model.device())?;
    Ok(model
        .embed_tokens
        .index_select(&idx, 0)?
        .to_dtype(DType::F32)?)
}

/// `[1ⁿ ; mask]`: the virtual positions are always attended to.
pub(super) fn extend_mask(
    mask: Option<&Tensor>,
    b: usize,
    t: usize,
    n: usize,
) -> Result<Option<Tensor>> {
    let Some(m) = mask else { return Ok(None) };
    if m.dims() != [b, t] {
        return Err(Error::Input(format!(
            "attention_mask must have shape (batch, seq_len) = ({b}, {t}), found {:?}",
            m.dims()
        )));
    }
    let ones = Tensor::ones((b, n), m.dtype(), m.device())?;
    Ok(Some(Tensor::cat(&[&ones, m], 1)?))
}

pub(super) fn ids_dims(input_ids: &Tensor) -> Result<(usize, usize)> {
    input_ids.dims2().map_err(|_| {
        Error::Input(format!(
            "input_ids must have shape (batch, seq_len), found {:?}",
            input_ids.dims()
        ))
    })
}

pub(super) fn insert(varmap: &VarMap, name: &str, var: &Var) {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .insert(name.to_string(), var.clone());
}

pub(super) fn count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (`prompt_embeddings`, f32).
pub(super) fn save_prompt_adapter(
    dir: &Path,
    config: Value,
    prompt_embeddings: &Tensor,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = BTreeMap::from([(
        PROMPT_EMBEDDINGS.to_string(),
        prompt_embeddings.to_dtype(DType::F32)?,
    )]);
    save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
    let path = dir.join(ADAPTER_CONFIG);
    write_bytes_atomic(&path, text)
}

/// Reads the config (checking `peft_type`, `num_virtual_tokens`, `token_dim`, `num_layers`) and
/// `prompt_embeddings` (checking its shape `[n, width]`).
pub(super) fn load_prompt_adapter(
    dir: &Path,
    peft_type: &str,
    token_dim: usize,
    num_layers: usize,
    width: impl Fn(usize) -> usize,
    device: &Device,
) -> Result<(Map<String, Value>, usize, Tensor)> {
    let (path, obj) = super::adapter_config::read_peft_config(dir, peft_type)?;
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let uint = |k: &str| -> Result<Option<usize>> {
        match field(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                Error::format(
                    &path,
                    format!("field `{k}`: expected an integer, found {v}"),
                )
            }),
        }
    };
    let n = uint("num_virtual_tokens")?
        .ok_or_else(|| Error::format(&path, "field `num_virtual_tokens` is missing"))?;
    check_virtual_tokens(n).map_err(|e| Error::format(&path, e.to_string()))?;
    for (k, want) in [("token_dim", token_dim), ("num_layers", num_layers)] {
        if let Some(got) = uint(k)? {
            if got != want {
                return Err(Error::format(
                    &path,
                    format!("field `{k}`: the adapter was made for {got}, this model needs {want}"),
                ));
            }
        }
    }
    let file = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&file, device)
        .map_err(|e| Error::format(&file, format!("cannot read safetensors: {e}")))?;
    let t = tensors
        .remove(PROMPT_EMBEDDINGS)
        .ok_or_else(|| Error::format(&file, format!("tensor `{PROMPT_EMBEDDINGS}` is missing")))?;
    if t.dims() != [n, width(n)] {
        return Err(Error::format(
            &file,
            format!(
                "tensor `{PROMPT_EMBEDDINGS}` has shape {:?}, expected [{n}, {}]",
                t.dims(),
                width(n)
            ),
        ));
    }
    Ok((obj, n, t.to_dtype(DType::F32)?))
}

/// The fields every peft prompt-learning config has.
pub(super) fn prompt_learning_json(
    peft_type: &str,
    n: usize,
    token_dim: usize,
    heads: usize,
    layers: usize,
) -> Map<String, Value> {
    [
        ("peft_type", json!(peft_type)),
        ("task_type", json!("CAUSAL_LM")),
        ("inference_mode", json!(true)),
        ("num_virtual_tokens", json!(n)),
        ("token_dim", json!(token_dim)),
        ("num_transformer_submodules", json!(1)),
        ("num_attention_heads", json!(heads)),
        ("num_layers", json!(layers)),
        ("base_model_name_or_path", Value::Null),
        ("revision", Value::Null),
        ("modules_to_save", Value::Null),
        ("auto_mapping", Value::Null),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}
