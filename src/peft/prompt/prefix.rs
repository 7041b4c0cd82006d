//! Prefix tuning (Li & Liang 2021): trainable keys and values before every layer's own,
//! `K_l = [Pᴷ_l ; RoPE(k_proj(h))]`; see the folder's module docs for what peft does.

use super::*;

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
    model: Llama,
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

    /// peft's `get_nb_trainable_parameters`.
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = count(&self.varmap);
        TrainableParameters {
            trainable,
            all: self.model.num_parameters() + trainable,
        }
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

    /// The final hidden states `(B, T, C)` for `input_ids: (B, T)` after the prefix. `opts` may
    /// carry an `attention_mask (B, T)` (extended with n ones), `position_ids` (shifted by n,
    /// as peft does) and `segment_ids` (every document sees the prefix).
    fn prefixed_hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
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
        self.model.forward_hidden_embeds(&x, &o, Some(&pkv), None)
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

    /// `model.save_pretrained(dir)` in peft's format: `adapter_config.json` and `adapter_model.safetensors` with
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

impl PeftMethod for PrefixTuningModel {
    fn peft_type(&self) -> &'static str {
        "PREFIX_TUNING"
    }
    fn base_model(&self) -> &Llama {
        &self.model
    }
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        named_vars(&self.varmap)
    }
    fn trainable_parameters(&self) -> TrainableParameters {
        PrefixTuningModel::trainable_parameters(self)
    }
    fn hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        self.prefixed_hidden_states(input_ids, opts)
    }
    /// The first call starts the cache from the prefix (as transformers serves peft's
    /// `past_key_values`); every call then runs the base model's cached path.
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if cache.num_layers() == 0 {
            *cache = self.new_cache(ids_dims(input_ids)?.0)?;
        }
        self.model.forward_last(input_ids, Some(cache))
    }
    fn set_training(&mut self, training: bool) {
        self.model.set_training(training)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        PrefixTuningModel::save_pretrained(self, dir)
    }
}
