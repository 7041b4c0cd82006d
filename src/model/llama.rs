//! The Llama-family decoder (Llama 2/3, Mistral, SmolLM2, TinyLlama, Qwen2), in Hugging Face
//! layout, so that every tensor has the name and shape it has in a transformers checkpoint.
//!
//! ```text
//! h₀ = Embed(ids)                                            // (B, T, C)
//! for each block:  h = h + o_proj(Attn(RoPE(q_proj(n)), RoPE(k_proj(n)), v_proj(n)))
//!                           with n = RMSNorm(h)   (input_layernorm)
//!                  h = h + down_proj(SiLU(gate_proj(n)) ⊙ up_proj(n))
//!                           with n = RMSNorm(h)   (post_attention_layernorm)
//! logits = lm_head(RMSNorm(h))                               // (B, T, V)
//! ```
//! RMSNorm(x) = x / sqrt(mean(x²) + ε) · g (Zhang & Sennrich 2019), computed in f32 as
//! transformers does. RoPE (Su et al. 2021) rotates the two halves of each head ("rotate_half",
//! HF layout), θᵢ = base^(−2i/d), optionally with Llama 3's frequency-dependent scaling.
//! Attention is grouped-query (Ainslie et al. 2023): each k/v head serves
//! `num_attention_heads / num_key_value_heads` query heads; softmax in f32.
//!
//! Every projection is a [`Linear`] addressed by its HF module path
//! (`model.layers.0.self_attn.q_proj`, ..., `lm_head`): [`Llama::linears`] enumerates them and
//! [`Llama::replace_linear`] swaps one. That is the seam quantization and PEFT use.
//!
//! Kernels: RMSNorm, RoPE and the attention core (scores → softmax → values) run through
//! `model::fused`: candle's fused kernels for the forward (which have no backward), and, when
//! an input needs a gradient (training), a hand-written backward that keeps one tensor each
//! instead of every intermediate — gradients reach every adapter at a fraction of candle's
//! autograd memory, and training, evaluation and generation compute the same forward. Plain
//! differentiable ops remain for a device without custom ops (`model::fused`'s tests compare
//! every value and gradient with them).
//!
//! Hooks for the PEFT methods that act outside a projection: [`Llama::forward_hidden_embeds`]
//! takes input embeddings instead of ids (prompt tuning) and per-layer key/value prefixes
//! (prefix tuning, transformers' `past_key_values`); [`Llama::set_block_adapter`] installs a
//! [`BlockAdapter`] that sees each block's attention and MLP outputs (bottleneck adapters).
//! Without them every forward is exactly what it was.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{Config, Llama3RopeScaling};
use crate::model::linear::{Dense, Linear};

mod block;
mod checkpoint;
mod kv_cache;
mod mask;
mod paths;
mod random;

pub use block::{rope_inv_freq, Attention, Block, Mlp, RmsNorm};
use block::{Step, StepTensors};
pub use checkpoint::CheckpointedForward;
pub use kv_cache::KvCache;
use random::RandomWeights;

/// Optional inputs of a forward pass beyond the token ids.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// `(B, T)` u32 positions (default `offset..offset+T`); packing restarts them per document.
    pub position_ids: Option<Tensor>,
    /// `(B, S)` with 1 for real tokens and 0 for padding, over all `S` = cached + new positions.
    pub attention_mask: Option<Tensor>,
    /// `(B, T)` u32 document ids: attention never crosses documents (sequence packing).
    pub segment_ids: Option<Tensor>,
}

/// A hook into every decoder block, for adapters that sit between a block's sublayers rather
/// than inside a projection (Houlsby et al. 2019 bottleneck adapters). Each method gets a
/// sublayer's output `(B, T, C)` in the model's dtype and returns what is added to the residual
/// stream instead:
///
/// ```text
/// h = h + after_attention(l, o_proj(Attn(RMSNorm(h))))
/// h = h + after_mlp(l, down_proj(SwiGLU(RMSNorm(h))))
/// ```
/// The defaults return `h` unchanged. Installed with [`Llama::set_block_adapter`]; every forward
/// (with or without a cache) calls it.
pub trait BlockAdapter: Send + Sync + std::fmt::Debug {
    /// Maps the attention output of block `layer` (after `o_proj`, before the residual add).
    fn after_attention(&self, layer: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        let _ = layer;
        Ok(h.clone())
    }
    /// Maps the MLP output of block `layer` (after `down_proj`, before the residual add).
    fn after_mlp(&self, layer: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        let _ = layer;
        Ok(h.clone())
    }
}

/// What a forward pass starts from.
#[derive(Clone, Copy)]
enum Input<'a> {
    Ids(&'a Tensor),
    Embeds(&'a Tensor),
}

/// The decoder: embeddings, blocks, final norm and `lm_head`.
///
/// `Clone` is cheap: tensors are reference-counted, so a clone shares every weight (nothing is
/// copied) and is how edits of the model are made all-or-nothing ([`Llama::edit`]).
#[derive(Debug, Clone)]
pub struct Llama {
    config: Config,
    /// `model.embed_tokens.weight`, `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    /// `model.layers.*`.
    pub layers: Vec<Block>,
    /// `model.norm`.
    pub norm: RmsNorm,
    /// `lm_head` (shares `embed_tokens` when `tie_word_embeddings`).
    pub lm_head: Linear,
    inv_freq: Tensor,
    dtype: DType,
    device: Device,
    block_adapter: Option<Arc<dyn BlockAdapter>>,
    training: bool,
}

/// The projection names inside a block, in checkpoint order.
pub const BLOCK_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Where the model's tensors come from: a name and the expected shape, giving a tensor or an
/// error that names the tensor. Implemented by the loaders (safetensors, GGUF) and by
/// [`Llama::init_random`].
pub trait WeightSource {
    /// Tensor `name` (HF name) of shape `shape`, in `dtype` on `device`.
    fn get(&mut self, name: &str, shape: &[usize], dtype: DType, device: &Device)
        -> Result<Tensor>;
    /// Whether `name` is present.
    fn contains(&self, name: &str) -> bool;
}

impl Llama {
    /// Builds the model from `weights`, checking every tensor's shape against `config`.
    pub fn load(
        config: &Config,
        weights: &mut dyn WeightSource,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let c = config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let q_out = c.num_attention_heads * hd;
        let kv_out = c.num_key_value_heads * hd;
        let mut dense = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
            let w = weights.get(&format!("{name}.weight"), &[out, inp], dtype, device)?;
            let b = if bias {
                Some(weights.get(&format!("{name}.bias"), &[out], dtype, device)?)
            } else {
                None
            };
            Ok(Linear::new(Dense::new(w, b)?))
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = Attention {
                q_proj: dense(&format!("{p}.self_attn.q_proj"), q_out, h, c.attention_bias)?,
                k_proj: dense(
                    &format!("{p}.self_attn.k_proj"),
                    kv_out,
                    h,
                    c.attention_bias,
                )?,
                v_proj: dense(
                    &format!("{p}.self_attn.v_proj"),
                    kv_out,
                    h,
                    c.attention_bias,
                )?,
                o_proj: dense(&format!("{p}.self_attn.o_proj"), h, q_out, c.o_proj_bias())?,
                num_heads: c.num_attention_heads,
                num_kv_heads: c.num_key_value_heads,
                head_dim: hd,
            };
            let mlp = Mlp {
                gate_proj: dense(
                    &format!("{p}.mlp.gate_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
                up_proj: dense(
                    &format!("{p}.mlp.up_proj"),
                    c.intermediate_size,
                    h,
                    c.mlp_bias,
                )?,
                down_proj: dense(
                    &format!("{p}.mlp.down_proj"),
                    h,
                    c.intermediate_size,
                    c.mlp_bias,
                )?,
            };
            layers.push((p, self_attn, mlp));
        }
        let mut norm = |name: &str| -> Result<RmsNorm> {
            Ok(RmsNorm {
                weight: weights.get(name, &[h], dtype, device)?,
                eps: c.rms_norm_eps,
            })
        };
        let layers = layers
            .into_iter()
            .map(|(p, self_attn, mlp)| {
                Ok(Block {
                    input_layernorm: norm(&format!("{p}.input_layernorm.weight"))?,
                    self_attn,
                    post_attention_layernorm: norm(&format!(
                        "{p}.post_attention_layernorm.weight"
                    ))?,
                    mlp,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = norm("model.norm.weight")?;
        let embed_tokens = weights.get(
            "model.embed_tokens.weight",
            &[c.vocab_size, h],
            dtype,
            device,
        )?;
        let lm_head = if c.tie_word_embeddings {
            Linear::new(Dense::new(embed_tokens.clone(), None)?)
        } else {
            let w = weights.get("lm_head.weight", &[c.vocab_size, h], dtype, device)?;
            Linear::new(Dense::new(w, None)?)
        };
        let inv = rope_inv_freq(hd, c.rope_theta, c.rope_scaling.as_ref());
        let inv_freq = Tensor::new(inv.as_slice(), device)?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            inv_freq,
            dtype,
            device: device.clone(),
            block_adapter: None,
            training: false,
        })
    }

    /// A randomly initialised model (normal, std 0.02, as transformers' `initializer_range`;
    /// norms at 1), seeded, for tests and experiments with presets such as `tiny`.
    pub fn init_random(config: &Config, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        let mut src = RandomWeights::new(seed);
        Self::load(config, &mut src, dtype, device)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The dtype of the base weights.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Training mode, as PyTorch's `model.train()`: dropout in the adapters is on and they read
    /// their trainable tensors directly. The [`Trainer`](crate::train::Trainer) calls it.
    pub fn train(&mut self) {
        self.set_training(true);
    }

    /// Evaluation mode, as PyTorch's `model.eval()`: no dropout; LoRA layers multiply by
    /// contiguous copies of their factors (faster; made here). Call it again after changing
    /// adapter weights by hand.
    pub fn eval(&mut self) {
        self.set_training(false);
    }

    /// [`Llama::train`] (`true`) or [`Llama::eval`] (`false`).
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
        for (_, l) in self.linears_mut() {
            l.set_training(training);
        }
    }

    /// Whether the model is in training mode (see [`Llama::train`]); a loaded model is in
    /// evaluation mode, as transformers' `from_pretrained` leaves it.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Number of parameters: embeddings, norms and every projection as its layer counts them
    /// (a tied `lm_head` is counted once, as transformers does).
    pub fn num_parameters(&self) -> usize {
        let norms: usize = self
            .layers
            .iter()
            .map(|b| {
                b.input_layernorm.weight.elem_count()
                    + b.post_attention_layernorm.weight.elem_count()
            })
            .sum::<usize>()
            + self.norm.weight.elem_count();
        let linears: usize = self
            .linears()
            .iter()
            .filter(|(p, _)| !(p == "lm_head" && self.config.tie_word_embeddings))
            .map(|(_, l)| l.layer().num_parameters())
            .sum();
        self.embed_tokens.elem_count() + norms + linears
    }

    /// Token embeddings for `input_ids: (B, T)` → `(B, T, C)`.
    pub fn embed(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let flat = input_ids.flatten_all()?;
        self.embed_tokens
            .index_select(&flat, 0)?
            .reshape((b, t, self.config.hidden_size))
    }

    /// Logits `(B, T, V)` in f32 for `input_ids: (B, T)` (u32). With a `cache`, positions start
    /// after the cached ones and the new keys/values are appended (and fused kernels are used).
    pub fn forward(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.forward_with(input_ids, &ForwardOptions::default(), cache)
    }

    /// [`Llama::forward`] with positions, padding mask or packing segments.
    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, opts, cache)?;
        Ok(self
            .lm_head
            .forward(&h)
            .map_err(|e| e.context("in `lm_head`"))?
            .to_dtype(DType::F32)?)
    }

    /// Logits `(B, V)` of the last position only: what generation needs, without the
    /// `(T, V)` matmul for the prompt's other positions.
    pub fn forward_last(&self, input_ids: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, &ForwardOptions::default(), cache)?;
        let t = h.dim(1)?;
        let last = h.narrow(1, t - 1, 1)?;
        Ok(self
            .lm_head
            .forward(&last)?
            .squeeze(1)?
            .to_dtype(DType::F32)?)
    }

    /// The final hidden states `(B, T, C)` after the last norm.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.decode(Input::Ids(input_ids), opts, None, cache)
    }

    /// Logits `(B, T, V)` in f32 for input embeddings `(B, T, C)` given instead of token ids
    /// (transformers' `inputs_embeds`): what prompt tuning runs, with its virtual tokens'
    /// embeddings before the real ones. Otherwise as [`Llama::forward_with`].
    pub fn forward_embeds(
        &self,
        inputs_embeds: &Tensor,
        opts: &ForwardOptions,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let h = self.forward_hidden_embeds(inputs_embeds, opts, None, cache)?;
        Ok(self
            .lm_head
            .forward(&h)
            .map_err(|e| e.context("in `lm_head`"))?
            .to_dtype(DType::F32)?)
    }

    /// The final hidden states `(B, T, C)` for input embeddings `inputs_embeds: (B, T, C)`
    /// (cast to the model's dtype), optionally after per-layer key/value prefixes.
    ///
    /// `past_key_values[l] = (keys, values)`, each `(B|1, KV, P, D)`, is prepended to layer
    /// `l`'s keys and values as transformers treats a `past_key_values` cache that prefix tuning
    /// passes in: the keys are used as they are (no RoPE is applied to them), the tokens get
    /// positions `P..P+T` (unless `opts.position_ids` says otherwise), every token attends to
    /// all `P` prefix positions, and `opts.attention_mask`, if given, covers `P + T` columns.
    /// The prefix tensors may be trainable (`Var`s): this path is differentiable. A prefix and
    /// a `cache` exclude each other; for generation seed the cache with
    /// [`KvCache::from_prefix`].
    ///
    /// # Shapes
    /// `inputs_embeds: (B, T, C)`, prefix `(B|1, KV, P, D)` per layer → `(B, T, C)`.
    pub fn forward_hidden_embeds(
        &self,
        inputs_embeds: &Tensor,
        opts: &ForwardOptions,
        past_key_values: Option<&[(Tensor, Tensor)]>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.decode(Input::Embeds(inputs_embeds), opts, past_key_values, cache)
    }

    /// Installs `adapter` (or removes it with `None`) in every block and returns the one that
    /// was installed. See [`BlockAdapter`].
    pub fn set_block_adapter(
        &mut self,
        adapter: Option<Arc<dyn BlockAdapter>>,
    ) -> Option<Arc<dyn BlockAdapter>> {
        std::mem::replace(&mut self.block_adapter, adapter)
    }

    /// The installed [`BlockAdapter`], if any.
    pub fn block_adapter(&self) -> Option<&Arc<dyn BlockAdapter>> {
        self.block_adapter.as_ref()
    }

    /// Checks a key/value prefix against the model and the batch; returns its length `P`.
    fn check_prefix(&self, prefix: &[(Tensor, Tensor)], b: usize, cached: usize) -> Result<usize> {
        let c = &self.config;
        if cached > 0 {
            return Err(Error::Input(format!(
                "past_key_values cannot be combined with a KvCache that holds {cached} positions; \
                 for generation seed the cache with KvCache::from_prefix"
            )));
        }
        if prefix.len() != c.num_hidden_layers {
            return Err(Error::Input(format!(
                "past_key_values has {} layers but the model has {} (num_hidden_layers)",
                prefix.len(),
                c.num_hidden_layers
            )));
        }
        let p = prefix[0].0.dims().get(2).copied().unwrap_or(0);
        for (i, (k, v)) in prefix.iter().enumerate() {
            for (what, t) in [("keys", k), ("values", v)] {
                let d = t.dims();
                let ok = d.len() == 4
                    && (d[0] == 1 || d[0] == b)
                    && d[1] == c.num_key_value_heads
                    && d[2] == p
                    && d[3] == c.head_dim
                    && p > 0;
                if !ok {
                    return Err(Error::Shape {
                        name: format!("past_key_values[{i}] {what}"),
                        expected: vec![b, c.num_key_value_heads, p.max(1), c.head_dim],
                        found: d.to_vec(),
                    });
                }
            }
        }
        Ok(p)
    }

    /// Checks the input and computes what every layer shares: the input embeddings, RoPE's
    /// cos/sin and the attention mask.
    fn prepare(
        &self,
        input: Input,
        opts: &ForwardOptions,
        prefix: Option<&[(Tensor, Tensor)]>,
        cache: Option<&KvCache>,
    ) -> Result<(Tensor, StepTensors)> {
        let hidden = self.config.hidden_size;
        let (b, t) = match input {
            Input::Ids(ids) => ids.dims2().map_err(|_| {
                Error::Input(format!(
                    "input_ids must have shape (batch, seq_len), found {:?}",
                    ids.dims()
                ))
            })?,
            Input::Embeds(e) => match e.dims3() {
                Ok((b, t, c)) if c == hidden => (b, t),
                _ => {
                    return Err(Error::Input(format!(
                        "inputs_embeds must have shape (batch, seq_len, hidden_size = {hidden}), found {:?}",
                        e.dims()
                    )))
                }
            },
        };
        if t == 0 {
            let what = match input {
                Input::Ids(_) => "input_ids",
                Input::Embeds(_) => "inputs_embeds",
            };
            return Err(Error::Input(format!("{what} is empty (seq_len 0)")));
        }
        let cached = cache.map_or(0, |c| c.seq_len());
        let prefix_len = match prefix {
            Some(p) => self.check_prefix(p, b, cached)?,
            None => 0,
        };
        let offset = cached + prefix_len; // at most one of the two is non-zero
        let total = offset + t;
        if total > self.config.max_position_embeddings {
            let before = if prefix_len > 0 {
                format!("{prefix_len} prefix")
            } else {
                format!("{cached} cached")
            };
            return Err(Error::Input(format!(
                "sequence of {total} positions ({before} + {t} new) exceeds the model's context of {} (max_position_embeddings)",
                self.config.max_position_embeddings
            )));
        }
        let x = match input {
            Input::Ids(input_ids) => {
                let vocab = self.config.vocab_size as u32;
                let ids = input_ids.to_dtype(DType::U32)?;
                let max_id = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
                if max_id >= vocab {
                    return Err(Error::Input(format!(
                        "token id {max_id} is out of the vocabulary (size {vocab})"
                    )));
                }
                self.embed(&ids)?
            }
            Input::Embeds(e) => e.to_dtype(self.dtype)?,
        };
        let positions = match &opts.position_ids {
            Some(p) => p.to_dtype(DType::F32)?,
            None => Tensor::arange(offset as u32, total as u32, &self.device)?
                .to_dtype(DType::F32)?
                .unsqueeze(0)?
                .broadcast_as((b, t))?
                .contiguous()?,
        };
        // freqs = positions ⊗ inv_freq, (B, T, D/2), in f32 as transformers computes it.
        let freqs = positions
            .unsqueeze(2)?
            .broadcast_mul(&self.inv_freq.reshape((1, 1, ()))?)?;
        let cos = freqs.cos()?.to_dtype(self.dtype)?.contiguous()?;
        let sin = freqs.sin()?.to_dtype(self.dtype)?.contiguous()?;
        let mask = self.attention_mask(b, t, offset, cached, opts)?;
        Ok((x, StepTensors { cos, sin, mask }))
    }

    fn decode(
        &self,
        input: Input,
        opts: &ForwardOptions,
        prefix: Option<&[(Tensor, Tensor)]>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (mut x, tensors) = self.prepare(input, opts, prefix, cache.as_deref())?;
        let step = tensors.step();
        for i in 0..self.layers.len() {
            let c = cache.as_deref_mut().map(|c| (c, i));
            x = self.block_forward(i, &x, &step, prefix.map(|p| &p[i]), c)?;
        }
        Ok(self.norm.forward(&x)?)
    }

    /// Decoder layer `i`: `x + attn(norm(x))`, then `+ mlp(norm(·))`, with the block adapter's
    /// hooks.
    fn block_forward(
        &self,
        i: usize,
        x: &Tensor,
        step: &Step,
        prefix: Option<&(Tensor, Tensor)>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<Tensor> {
        let block = &self.layers[i];
        let adapter = self.block_adapter.as_deref();
        let n = block.input_layernorm.forward(x)?;
        let mut a = block.self_attn.forward(i, &n, step, prefix, cache)?;
        if let Some(ad) = adapter {
            a = ad.after_attention(i, &a)?;
        }
        let x1 = (x + a)?;
        let n = block.post_attention_layernorm.forward(&x1)?;
        let mut m = block.mlp.forward(i, &n)?;
        if let Some(ad) = adapter {
            m = ad.after_mlp(i, &m)?;
        }
        x1 + m
    }
}
