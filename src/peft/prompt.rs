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

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use super::model::TrainableParameters;
use crate::model::config::Config;
use crate::model::linear::linear_forward;
use crate::model::llama::{ForwardOptions, KvCache, Llama};
use crate::model::load::{save_safetensors, write_atomic};
use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

const ADAPTER_CONFIG: &str = "adapter_config.json";
const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The one tensor of a prompt-learning adapter file.
pub const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";

/// How the virtual tokens start (peft's `PromptTuningInit`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PromptTuningInit {
    /// `RANDOM`: N(0, 1) entries (`nn.Embedding`'s default), far from the embedding manifold.
    #[default]
    Random,
    /// `TEXT`: the embeddings of the tokenized text (`prompt_tuning_init_text`), repeated or
    /// truncated to `num_virtual_tokens`.
    Text(String),
    /// `SAMPLE_VOCAB`: the embeddings of `num_virtual_tokens` token ids drawn uniformly from
    /// the vocabulary.
    SampleVocab,
}

impl PromptTuningInit {
    fn peft_name(&self) -> &'static str {
        match self {
            PromptTuningInit::Random => "RANDOM",
            PromptTuningInit::Text(_) => "TEXT",
            PromptTuningInit::SampleVocab => "SAMPLE_VOCAB",
        }
    }
}

/// peft's `PromptTuningConfig` for a causal LM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTuningConfig {
    /// Number of virtual tokens n.
    pub num_virtual_tokens: usize,
    /// How they start.
    pub prompt_tuning_init: PromptTuningInit,
    /// Width of a virtual token; `None` takes the model's `hidden_size` (as peft fills it in).
    pub token_dim: Option<usize>,
}

impl PromptTuningConfig {
    /// `n` virtual tokens started as `init`.
    pub fn new(num_virtual_tokens: usize, prompt_tuning_init: PromptTuningInit) -> Self {
        Self {
            num_virtual_tokens,
            prompt_tuning_init,
            token_dim: None,
        }
    }

    /// Checks the fields against the model, naming the bad one.
    pub fn validate(&self, model: &Config) -> Result<()> {
        check_virtual_tokens(self.num_virtual_tokens)?;
        if let Some(d) = self.token_dim {
            if d != model.hidden_size {
                return Err(Error::config(
                    "token_dim",
                    format!(
                        "must be the model's hidden_size {}, got {d}",
                        model.hidden_size
                    ),
                ));
            }
        }
        if let PromptTuningInit::Text(t) = &self.prompt_tuning_init {
            if t.is_empty() {
                return Err(Error::config(
                    "prompt_tuning_init_text",
                    "is empty; TEXT initialisation needs a text",
                ));
            }
        }
        Ok(())
    }

    /// Trainable parameters for `model`: n·hidden.
    pub fn num_trainable_parameters(&self, model: &Config) -> usize {
        self.num_virtual_tokens * model.hidden_size
    }
}

/// peft's `PrefixTuningConfig` for a causal LM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixTuningConfig {
    /// Number of virtual tokens n (prefix positions per layer).
    pub num_virtual_tokens: usize,
    /// Reparametrize the prefix through a two-layer tanh MLP (Li & Liang §4.3).
    pub prefix_projection: bool,
    /// Hidden width of that MLP; `None` takes `token_dim` = kv_heads·head_dim, as peft does.
    /// Ignored without `prefix_projection` (peft fills it in and ignores it too).
    pub encoder_hidden_size: Option<usize>,
}

impl PrefixTuningConfig {
    /// `n` prefix positions, no projection.
    pub fn new(num_virtual_tokens: usize) -> Self {
        Self {
            num_virtual_tokens,
            prefix_projection: false,
            encoder_hidden_size: None,
        }
    }

    /// With the reparametrization MLP of hidden width `encoder_hidden_size` (`None`: kv_dim).
    pub fn with_projection(mut self, encoder_hidden_size: Option<usize>) -> Self {
        self.prefix_projection = true;
        self.encoder_hidden_size = encoder_hidden_size;
        self
    }

    /// Checks the fields, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        check_virtual_tokens(self.num_virtual_tokens)?;
        if self.prefix_projection && self.encoder_hidden_size == Some(0) {
            return Err(Error::config(
                "encoder_hidden_size",
                "must be at least 1, got 0",
            ));
        }
        Ok(())
    }

    /// peft's `token_dim` for prefix tuning: kv_heads·head_dim.
    pub fn token_dim(model: &Config) -> usize {
        model.num_key_value_heads * model.head_dim
    }

    /// The MLP's hidden width.
    pub fn encoder_hidden(&self, model: &Config) -> usize {
        self.encoder_hidden_size
            .unwrap_or_else(|| Self::token_dim(model))
    }

    /// Trainable parameters for `model`: n·L·2·kv_dim without projection; with it
    /// n·kv_dim + (kv_dim·enc + enc) + (enc·L·2·kv_dim + L·2·kv_dim).
    pub fn num_trainable_parameters(&self, model: &Config) -> usize {
        let d = Self::token_dim(model);
        let out = model.num_hidden_layers * 2 * d;
        if self.prefix_projection {
            let enc = self.encoder_hidden(model);
            self.num_virtual_tokens * d + (d * enc + enc) + (enc * out + out)
        } else {
            self.num_virtual_tokens * out
        }
    }
}

fn check_virtual_tokens(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::config(
            "num_virtual_tokens",
            "must be at least 1, got 0",
        ));
    }
    Ok(())
}

/// N(0, 1) as `[rows, cols]`, f32 (Box–Muller).
fn normal(rows: usize, cols: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    Ok(Tensor::from_vec(data, (rows, cols), device)?)
}

/// U(−1/√fan_in, 1/√fan_in) of `shape`: torch's `nn.Linear` default for weight and bias.
fn uniform(shape: &[usize], fan_in: usize, rng: &mut StdRng, device: &Device) -> Result<Tensor> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// Rows `ids` of the frozen embedding matrix, as f32 `[len, C]`.
fn embedding_rows(model: &Llama, ids: &[u32]) -> Result<Tensor> {
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
fn extend_mask(mask: Option<&Tensor>, b: usize, t: usize, n: usize) -> Result<Option<Tensor>> {
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

fn ids_dims(input_ids: &Tensor) -> Result<(usize, usize)> {
    input_ids.dims2().map_err(|_| {
        Error::Input(format!(
            "input_ids must have shape (batch, seq_len), found {:?}",
            input_ids.dims()
        ))
    })
}

fn insert(varmap: &VarMap, name: &str, var: &Var) {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .insert(name.to_string(), var.clone());
}

fn count(varmap: &VarMap) -> usize {
    varmap.all_vars().iter().map(|v| v.elem_count()).sum()
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (`prompt_embeddings`, f32).
fn save_prompt_adapter(dir: &Path, config: Value, prompt_embeddings: &Tensor) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = BTreeMap::from([(
        PROMPT_EMBEDDINGS.to_string(),
        prompt_embeddings.to_dtype(DType::F32)?,
    )]);
    save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
    let path = dir.join(ADAPTER_CONFIG);
    write_atomic(&path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e))
    })
}

/// Reads the config (checking `peft_type`, `num_virtual_tokens`, `token_dim`, `num_layers`) and
/// `prompt_embeddings` (checking its shape `[n, width]`).
fn load_prompt_adapter(
    dir: &Path,
    peft_type: &str,
    token_dim: usize,
    num_layers: usize,
    width: impl Fn(usize) -> usize,
    device: &Device,
) -> Result<(Map<String, Value>, usize, Tensor)> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let obj: Map<String, Value> = match serde_json::from_str(&text) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(Error::format(&path, "expected a JSON object")),
        Err(e) => return Err(Error::format(&path, format!("not valid JSON: {e}"))),
    };
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let found = field("peft_type").cloned().unwrap_or(Value::Null);
    if found != json!(peft_type) {
        return Err(Error::format(
            &path,
            format!("field `peft_type`: expected \"{peft_type}\", found {found}"),
        ));
    }
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
fn prompt_learning_json(
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

// ---------------------------------------------------------------------------------------------
// Prompt tuning

/// A model with trainable virtual tokens before its input (peft's `PeftModelForCausalLM` with
/// a `PromptTuningConfig`).
pub struct PromptTuningModel {
    /// The frozen base model.
    pub model: Llama,
    config: PromptTuningConfig,
    prompt: Var, // [n, C], f32
    varmap: VarMap,
    tokenizer_name_or_path: Option<String>,
}

/// Adds `config.num_virtual_tokens` trainable virtual tokens to `model`. `tokenizer` is needed
/// for [`PromptTuningInit::Text`] (peft tokenizes with special tokens, as
/// `tokenizer(text)["input_ids"]`); `seed` drives `Random` and `SampleVocab`.
pub fn get_prompt_tuning_model(
    model: Llama,
    config: &PromptTuningConfig,
    tokenizer: Option<&Tokenizer>,
    seed: u64,
) -> Result<PromptTuningModel> {
    config.validate(model.config())?;
    let n = config.num_virtual_tokens;
    let c = model.config().hidden_size;
    let device = model.device().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut source = None;
    let init = match &config.prompt_tuning_init {
        PromptTuningInit::Random => normal(n, c, &mut rng, &device)?,
        PromptTuningInit::SampleVocab => {
            let vocab = model.config().vocab_size as u32;
            let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab)).collect();
            embedding_rows(&model, &ids)?
        }
        PromptTuningInit::Text(text) => {
            let tok = tokenizer.ok_or_else(|| {
                Error::config(
                    "prompt_tuning_init",
                    "TEXT initialisation needs the tokenizer; pass Some(&tokenizer)",
                )
            })?;
            let ids = tok.encode(text, true)?;
            if ids.is_empty() {
                return Err(Error::config(
                    "prompt_tuning_init_text",
                    format!("`{text}` tokenizes to no tokens"),
                ));
            }
            source = Some(tok.source().display().to_string());
            // Repeat, then truncate to n (peft's `init_token_ids * ceil(n / len)` then `[:n]`).
            let ids: Vec<u32> = ids.iter().copied().cycle().take(n).collect();
            embedding_rows(&model, &ids)?
        }
    };
    let prompt = Var::from_tensor(&init)?;
    let varmap = VarMap::new();
    insert(&varmap, "prompt_encoder.default.embedding.weight", &prompt);
    Ok(PromptTuningModel {
        model,
        config: config.clone(),
        prompt,
        varmap,
        tokenizer_name_or_path: source,
    })
}

impl PromptTuningModel {
    /// The config.
    pub fn peft_config(&self) -> &PromptTuningConfig {
        &self.config
    }

    /// n.
    pub fn num_virtual_tokens(&self) -> usize {
        self.config.num_virtual_tokens
    }

    /// The virtual tokens' embeddings `[n, C]` (f32), the trainable tensor.
    pub fn prompt_embeddings(&self) -> &Var {
        &self.prompt
    }

    /// Overwrites the virtual tokens' embeddings with `t: [n, C]`.
    pub fn set_prompt_embeddings(&self, t: &Tensor) -> Result<()> {
        if t.dims() != self.prompt.dims() {
            return Err(Error::Shape {
                name: PROMPT_EMBEDDINGS.into(),
                expected: self.prompt.dims().to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(self.prompt.set(&t.to_dtype(DType::F32)?)?)
    }

    /// The trainable tensors by peft's parameter names.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable `Var`s (for an optimizer).
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.varmap.all_vars()
    }

    /// peft's `get_nb_trainable_parameters`: n·C, and the base plus n·C.
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = count(&self.varmap);
        TrainableParameters {
            trainable,
            all: self.model.num_parameters() + trainable,
        }
    }

    /// peft's `print_trainable_parameters` line (returned, not printed).
    pub fn print_trainable_parameters(&self) -> String {
        self.trainable_parameters().to_string()
    }

    /// `[P ; Embed(ids)]`, `(B, n+T, C)` in the model's dtype.
    pub fn inputs_embeds(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, _) = ids_dims(input_ids)?;
        let vocab = self.model.config().vocab_size as u32;
        let ids = input_ids.to_dtype(DType::U32)?;
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id >= vocab {
            return Err(Error::Input(format!(
                "token id {max_id} is out of the vocabulary (size {vocab})"
            )));
        }
        let x = self.model.embed(&ids)?; // (B, T, C)
        let (n, c) = self.prompt.dims2()?;
        let p = self
            .prompt
            .as_tensor()
            .to_dtype(x.dtype())?
            .unsqueeze(0)?
            .broadcast_as((b, n, c))?;
        Ok(Tensor::cat(&[&p, &x], 1)?) // (B, n+T, C)
    }

    /// Logits `(B, T, V)` (f32) of the real tokens: peft's `logits[:, n:]`. `opts` may carry an
    /// `attention_mask (B, T)` (extended with n ones); `position_ids` and `segment_ids` are
    /// errors (peft ignores position ids for prompt tuning).
    ///
    /// # Shapes
    /// `input_ids: (B, T)` → `(B, T, V)`.
    pub fn forward(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let (b, t) = ids_dims(input_ids)?;
        if opts.position_ids.is_some() || opts.segment_ids.is_some() {
            return Err(Error::Input(
                "prompt tuning takes no position_ids or segment_ids: the virtual tokens hold positions 0..n (peft ignores position_ids here)".into(),
            ));
        }
        let n = self.num_virtual_tokens();
        let x = self.inputs_embeds(input_ids)?;
        let o = ForwardOptions {
            attention_mask: extend_mask(opts.attention_mask.as_ref(), b, t, n)?,
            ..Default::default()
        };
        let h = self.model.forward_hidden_embeds(&x, &o, None, None)?; // (B, n+T, C)
        let h = h.narrow(1, n, t)?;
        Ok(self.model.lm_head.forward(&h)?.to_dtype(DType::F32)?)
    }

    /// For generation: runs `[P ; Embed(ids)]` into an empty `cache` and returns the last
    /// position's logits `(B, V)`; continue with `self.model.forward_last(next, Some(cache))`.
    pub fn prefill(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.seq_len() != 0 {
            return Err(Error::Input(format!(
                "prefill needs an empty cache (the virtual tokens take positions 0..n), this one holds {}",
                cache.seq_len()
            )));
        }
        let x = self.inputs_embeds(input_ids)?;
        let h =
            self.model
                .forward_hidden_embeds(&x, &ForwardOptions::default(), None, Some(cache))?;
        let s = h.dim(1)?;
        Ok(self
            .model
            .lm_head
            .forward(&h.narrow(1, s - 1, 1)?)?
            .squeeze(1)?
            .to_dtype(DType::F32)?)
    }

    /// peft's `adapter_config.json` for this adapter.
    pub fn adapter_config_json(&self) -> Value {
        let m = self.model.config();
        let mut o = prompt_learning_json(
            "PROMPT_TUNING",
            self.num_virtual_tokens(),
            m.hidden_size,
            m.num_attention_heads,
            m.num_hidden_layers,
        );
        let init = &self.config.prompt_tuning_init;
        o.insert("prompt_tuning_init".into(), json!(init.peft_name()));
        let text = match init {
            PromptTuningInit::Text(t) => json!(t),
            _ => Value::Null,
        };
        o.insert("prompt_tuning_init_text".into(), text);
        o.insert(
            "tokenizer_name_or_path".into(),
            json!(self.tokenizer_name_or_path),
        );
        o.insert("tokenizer_kwargs".into(), Value::Null);
        Value::Object(o)
    }

    /// Saves in peft's format: `adapter_config.json` and `adapter_model.safetensors` with
    /// `prompt_embeddings [n, C]` (f32).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_prompt_adapter(
            dir.as_ref(),
            self.adapter_config_json(),
            self.prompt.as_tensor(),
        )
    }

    /// Loads a peft prompt-tuning adapter directory onto `model`.
    pub fn from_pretrained(model: Llama, dir: impl AsRef<Path>) -> Result<Self> {
        let m = model.config().clone();
        let (obj, n, t) = load_prompt_adapter(
            dir.as_ref(),
            "PROMPT_TUNING",
            m.hidden_size,
            m.num_hidden_layers,
            |_| m.hidden_size,
            model.device(),
        )?;
        let text = obj
            .get("prompt_tuning_init_text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let init = match obj.get("prompt_tuning_init").and_then(Value::as_str) {
            Some("TEXT") => PromptTuningInit::Text(text.to_string()),
            Some("SAMPLE_VOCAB") => PromptTuningInit::SampleVocab,
            _ => PromptTuningInit::Random,
        };
        let prompt = Var::from_tensor(&t)?;
        let varmap = VarMap::new();
        insert(&varmap, "prompt_encoder.default.embedding.weight", &prompt);
        Ok(Self {
            model,
            config: PromptTuningConfig::new(n, init),
            prompt,
            varmap,
            tokenizer_name_or_path: obj
                .get("tokenizer_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// The base model, without the virtual tokens.
    pub fn unload(self) -> Llama {
        self.model
    }
}

// ---------------------------------------------------------------------------------------------
// Prefix tuning

/// peft's `PrefixEncoder`: the trainable tensors that produce the prefix.
#[derive(Debug)]
enum PrefixEncoder {
    /// `embedding: [n, L·2·kv_dim]` is the prefix.
    Direct { embedding: Var },
    /// `W₂·tanh(W₁·E + b₁) + b₂` with `E: [n, kv_dim]`.
    Projected {
        embedding: Var,
        w1: Var,
        b1: Var,
        w2: Var,
        b2: Var,
    },
}

/// A model with trainable per-layer key/value prefixes (peft's `PeftModelForCausalLM` with a
/// `PrefixTuningConfig`).
pub struct PrefixTuningModel {
    /// The frozen base model.
    pub model: Llama,
    config: PrefixTuningConfig,
    encoder: PrefixEncoder,
    varmap: VarMap,
}

/// Adds per-layer key/value prefixes of `config.num_virtual_tokens` positions to `model`,
/// initialised as peft does (N(0, 1) embeddings, torch's uniform `nn.Linear` init), seeded.
pub fn get_prefix_tuning_model(
    model: Llama,
    config: &PrefixTuningConfig,
    seed: u64,
) -> Result<PrefixTuningModel> {
    config.validate()?;
    let m = model.config();
    let n = config.num_virtual_tokens;
    let d = PrefixTuningConfig::token_dim(m);
    let out = m.num_hidden_layers * 2 * d;
    let device = model.device().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let varmap = VarMap::new();
    let p = "prompt_encoder.default";
    let encoder = if config.prefix_projection {
        let enc = config.encoder_hidden(m);
        let embedding = Var::from_tensor(&normal(n, d, &mut rng, &device)?)?;
        let w1 = Var::from_tensor(&uniform(&[enc, d], d, &mut rng, &device)?)?;
        let b1 = Var::from_tensor(&uniform(&[enc], d, &mut rng, &device)?)?;
        let w2 = Var::from_tensor(&uniform(&[out, enc], enc, &mut rng, &device)?)?;
        let b2 = Var::from_tensor(&uniform(&[out], enc, &mut rng, &device)?)?;
        insert(&varmap, &format!("{p}.embedding.weight"), &embedding);
        insert(&varmap, &format!("{p}.transform.0.weight"), &w1);
        insert(&varmap, &format!("{p}.transform.0.bias"), &b1);
        insert(&varmap, &format!("{p}.transform.2.weight"), &w2);
        insert(&varmap, &format!("{p}.transform.2.bias"), &b2);
        PrefixEncoder::Projected {
            embedding,
            w1,
            b1,
            w2,
            b2,
        }
    } else {
        let embedding = Var::from_tensor(&normal(n, out, &mut rng, &device)?)?;
        insert(&varmap, &format!("{p}.embedding.weight"), &embedding);
        PrefixEncoder::Direct { embedding }
    };
    Ok(PrefixTuningModel {
        model,
        config: config.clone(),
        encoder,
        varmap,
    })
}

impl PrefixTuningModel {
    /// The config.
    pub fn peft_config(&self) -> &PrefixTuningConfig {
        &self.config
    }

    /// n.
    pub fn num_virtual_tokens(&self) -> usize {
        self.config.num_virtual_tokens
    }

    /// The trainable tensors by peft's parameter names.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable `Var`s (for an optimizer).
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.varmap.all_vars()
    }

    /// peft's `get_nb_trainable_parameters`.
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = count(&self.varmap);
        TrainableParameters {
            trainable,
            all: self.model.num_parameters() + trainable,
        }
    }

    /// peft's `print_trainable_parameters` line (returned, not printed).
    pub fn print_trainable_parameters(&self) -> String {
        self.trainable_parameters().to_string()
    }

    /// The encoder's output `[n, L·2·kv_dim]` (f32): row t holds, for each layer l, the key
    /// `[kv_heads, head_dim]` then the value of virtual position t — what peft saves as
    /// `prompt_embeddings`.
    pub fn prompt_embeddings(&self) -> Result<Tensor> {
        Ok(match &self.encoder {
            PrefixEncoder::Direct { embedding } => embedding.as_tensor().clone(),
            PrefixEncoder::Projected {
                embedding,
                w1,
                b1,
                w2,
                b2,
            } => {
                let h = linear_forward(embedding.as_tensor(), w1, Some(b1))?.tanh()?; // (n, enc)
                linear_forward(&h, w2, Some(b2))? // (n, L·2·kv_dim)
            }
        })
    }

    /// The prefix as `past_key_values`: per layer `(keys, values)`, each `(1, KV, n, D)` in the
    /// model's dtype (peft's `get_prompt`: view `(n, 2L, KV, D)`, permute to `(2L, KV, n, D)`).
    pub fn past_key_values(&self) -> Result<Vec<(Tensor, Tensor)>> {
        let m = self.model.config();
        let (l, kv, hd) = (m.num_hidden_layers, m.num_key_value_heads, m.head_dim);
        let n = self.num_virtual_tokens();
        let p = self
            .prompt_embeddings()?
            .to_dtype(self.model.dtype())?
            .reshape((n, 2 * l, kv, hd))?
            .permute((1, 2, 0, 3))?; // (2L, KV, n, D)
        (0..l)
            .map(|i| Ok((p.narrow(0, 2 * i, 1)?, p.narrow(0, 2 * i + 1, 1)?)))
            .collect()
    }

    /// Sets the prefix to the first n positions of `cache` (batch 1), e.g. the base model's
    /// cache after a text: peft's `initialize_prefix_tuning_from_past_key_values`. Only without
    /// `prefix_projection` (the MLP cannot be inverted).
    pub fn set_prefix_from_cache(&self, cache: &KvCache) -> Result<()> {
        let PrefixEncoder::Direct { embedding } = &self.encoder else {
            return Err(Error::config(
                "prefix_projection",
                "a prefix cannot be set from a KV cache with prefix_projection = true",
            ));
        };
        let m = self.model.config();
        let (kv, hd) = (m.num_key_value_heads, m.head_dim);
        let n = self.num_virtual_tokens();
        let mut parts = Vec::with_capacity(2 * m.num_hidden_layers);
        for i in 0..m.num_hidden_layers {
            let (k, v) = cache.layer(i).ok_or_else(|| {
                Error::Input(format!(
                    "the cache has no entry for layer {i} ({} layers cached)",
                    cache.num_layers()
                ))
            })?;
            for t in [k, v] {
                let d = t.dims();
                if d.len() != 4 || d[0] != 1 || d[1] != kv || d[2] < n || d[3] != hd {
                    return Err(Error::Shape {
                        name: format!("cache layer {i}"),
                        expected: vec![1, kv, n, hd],
                        found: d.to_vec(),
                    });
                }
                // (1, KV, S, D) -> (n, KV·D)
                parts.push(
                    t.narrow(2, 0, n)?
                        .squeeze(0)?
                        .transpose(0, 1)?
                        .reshape((n, kv * hd))?,
                );
            }
        }
        let flat = Tensor::cat(&parts, 1)?.to_dtype(DType::F32)?; // (n, L·2·kv_dim)
        Ok(embedding.set(&flat)?)
    }

    /// Logits `(B, T, V)` (f32) for `input_ids: (B, T)` after the prefix. `opts` may carry an
    /// `attention_mask (B, T)` (extended with n ones), `position_ids` (shifted by n, as peft
    /// does) and `segment_ids` (every document sees the prefix).
    pub fn forward(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let (b, t) = ids_dims(input_ids)?;
        let n = self.num_virtual_tokens();
        let position_ids = match &opts.position_ids {
            Some(p) => Some((p.to_dtype(DType::F32)? + n as f64)?),
            None => None,
        };
        let o = ForwardOptions {
            position_ids,
            attention_mask: extend_mask(opts.attention_mask.as_ref(), b, t, n)?,
            segment_ids: opts.segment_ids.clone(),
        };
        let ids = input_ids.to_dtype(DType::U32)?;
        let vocab = self.model.config().vocab_size as u32;
        let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id >= vocab {
            return Err(Error::Input(format!(
                "token id {max_id} is out of the vocabulary (size {vocab})"
            )));
        }
        let x = self.model.embed(&ids)?;
        let pkv = self.past_key_values()?;
        let h = self.model.forward_hidden_embeds(&x, &o, Some(&pkv), None)?;
        Ok(self.model.lm_head.forward(&h)?.to_dtype(DType::F32)?)
    }

    /// A [`KvCache`] that holds the prefix for a batch of `batch`: generation then runs the base
    /// model's cached path (`self.model.forward_last(ids, Some(&mut cache))`), as transformers
    /// serves peft's prefix.
    pub fn new_cache(&self, batch: usize) -> Result<KvCache> {
        let layers = self
            .past_key_values()?
            .into_iter()
            .map(|(k, v)| {
                let grow = |x: Tensor| -> Result<Tensor> {
                    let (_, kv, n, d) = x.dims4()?;
                    Ok(x.detach().broadcast_as((batch, kv, n, d))?.contiguous()?)
                };
                Ok((grow(k)?, grow(v)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache::from_prefix(layers))
    }

    /// peft's `adapter_config.json` for this adapter (`token_dim` = kv_dim,
    /// `num_attention_heads` = kv_heads, as peft rewrites them for grouped-query attention).
    pub fn adapter_config_json(&self) -> Value {
        let m = self.model.config();
        let d = PrefixTuningConfig::token_dim(m);
        let mut o = prompt_learning_json(
            "PREFIX_TUNING",
            self.num_virtual_tokens(),
            d,
            m.num_key_value_heads,
            m.num_hidden_layers,
        );
        o.insert(
            "encoder_hidden_size".into(),
            json!(self.config.encoder_hidden(m)),
        );
        o.insert(
            "prefix_projection".into(),
            json!(self.config.prefix_projection),
        );
        o.insert("init_weights".into(), Value::Null);
        Value::Object(o)
    }

    /// Saves in peft's format: `adapter_config.json` and `adapter_model.safetensors` with
    /// `prompt_embeddings [n, L·2·kv_dim]` (f32; with a projection, its output).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_prompt_adapter(
            dir.as_ref(),
            self.adapter_config_json(),
            &self.prompt_embeddings()?,
        )
    }

    /// Loads a peft prefix-tuning adapter directory onto `model`. The prefix is the saved
    /// tensor itself (peft's `inference_mode`), also when the config says `prefix_projection`.
    pub fn from_pretrained(model: Llama, dir: impl AsRef<Path>) -> Result<Self> {
        let m = model.config().clone();
        let d = PrefixTuningConfig::token_dim(&m);
        let (obj, n, t) = load_prompt_adapter(
            dir.as_ref(),
            "PREFIX_TUNING",
            d,
            m.num_hidden_layers,
            |_| m.num_hidden_layers * 2 * d,
            model.device(),
        )?;
        let embedding = Var::from_tensor(&t)?;
        let varmap = VarMap::new();
        insert(
            &varmap,
            "prompt_encoder.default.embedding.weight",
            &embedding,
        );
        let config = PrefixTuningConfig {
            num_virtual_tokens: n,
            prefix_projection: obj
                .get("prefix_projection")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            encoder_hidden_size: obj
                .get("encoder_hidden_size")
                .and_then(Value::as_u64)
                .map(|x| x as usize),
        };
        Ok(Self {
            model,
            config,
            encoder: PrefixEncoder::Direct { embedding },
            varmap,
        })
    }

    /// The base model, without the prefix.
    pub fn unload(self) -> Llama {
        self.model
    }
}
