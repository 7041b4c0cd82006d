//! Prompt tuning (Lester et al. 2021): n trainable virtual tokens before the input,
//! `x = [P ; Embed(ids)]`, `P: [n, C]`; see the folder's module docs for what peft does.

use super::*;

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

/// A model with trainable virtual tokens before its input (peft's `PeftModelForCausalLM` with
/// a `PromptTuningConfig`).
pub struct PromptTuningModel {
    /// The frozen base model.
    model: Llama,
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

    /// peft's `get_nb_trainable_parameters`: n·C, and the base plus n·C.
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = count(&self.varmap);
        TrainableParameters {
            trainable,
            all: self.model.num_parameters() + trainable,
        }
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

    /// The final hidden states `(B, T, C)` of the real tokens: peft's `hidden[:, n:]`. `opts`
    /// may carry an `attention_mask (B, T)` (extended with n ones); `position_ids` and
    /// `segment_ids` are errors (peft ignores position ids for prompt tuning). The logits
    /// ([`PeftMethod::forward`]) are peft's `logits[:, n:]`: the same numbers, aligned with
    /// `input_ids` and `labels`.
    ///
    /// # Shapes
    /// `input_ids: (B, T)` → `(B, T, C)`.
    fn real_hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
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
        Ok(h.narrow(1, n, t)?)
    }

    /// For generation: runs `[P ; Embed(ids)]` into an empty `cache` and returns the last
    /// position's logits `(B, V)`; the next tokens continue on the base model's cached path
    /// ([`PeftMethod::next_logits`] does both).
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

    /// `model.save_pretrained(dir)` in peft's format: `adapter_config.json` and
    /// `adapter_model.safetensors` with `prompt_embeddings [n, C]` (f32).
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

impl PeftMethod for PromptTuningModel {
    fn peft_type(&self) -> &'static str {
        "PROMPT_TUNING"
    }
    fn base_model(&self) -> &Llama {
        &self.model
    }
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        named_vars(&self.varmap)
    }
    fn trainable_parameters(&self) -> TrainableParameters {
        PromptTuningModel::trainable_parameters(self)
    }
    fn hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        self.real_hidden_states(input_ids, opts)
    }
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.seq_len() == 0 {
            self.prefill(input_ids, cache)
        } else {
            self.model.forward_last(input_ids, Some(cache))
        }
    }
    fn set_training(&mut self, training: bool) {
        self.model.set_training(training)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        PromptTuningModel::save_pretrained(self, dir)
    }
}
