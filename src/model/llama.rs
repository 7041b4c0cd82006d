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
//! [`super::fused`]: candle's fused kernels for the forward (which have no backward), and, when
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

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::{Config, Llama3RopeScaling};
use crate::model::linear::{Dense, Linear};

mod checkpoint;
pub use checkpoint::CheckpointedForward;

/// Per-layer keys and values of the tokens seen so far, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions cached.
    pub fn seq_len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.clear();
    }

    /// A cache that starts with `layers[i] = (keys, values)`, each `(B, KV, P, D)`, as if `P`
    /// tokens had been run: new tokens get positions `P..` and attend to all `P`. This is how
    /// transformers serves prefix tuning's `past_key_values` during generation (the keys are
    /// used as they are, no RoPE is applied to them).
    pub fn from_prefix(layers: Vec<(Tensor, Tensor)>) -> Self {
        Self {
            layers: layers.into_iter().map(Some).collect(),
        }
    }

    /// Number of layers with an entry.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s cached `(keys, values)`, each `(B, KV, S, D)`, keys already rotated.
    pub fn layer(&self, i: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(i)?.as_ref().map(|(k, v)| (k, v))
    }

    fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

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

/// RMSNorm with a learned gain `g`: `x / sqrt(mean(x²) + ε) · g`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// The gain `g`, `[hidden]`.
    pub weight: Tensor,
    /// ε.
    pub eps: f64,
}

impl RmsNorm {
    /// Applies the norm (candle's kernel when the gain has `x`'s dtype; with a hand-written
    /// backward when `x` or the gain needs a gradient: [`super::fused::rms_norm`]). A gain in
    /// another dtype than `x` (f32 norms in a bf16 model, after
    /// `prepare_model_for_kbit_training`) multiplies in its dtype, as transformers'
    /// `weight * hidden.to(input_dtype)` promotes, and the result is cast back to `x`'s dtype,
    /// the residual stream's.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        super::fused::rms_norm(x, &self.weight, self.eps)
    }
}

/// Rotary embedding frequencies `θᵢ = base^(−2i/d)`, `i < d/2`, with Llama 3 scaling applied.
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&Llama3RopeScaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            // As transformers: computed in f32.
            let f = 1f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            match scaling {
                None => f,
                Some(s) => {
                    let old = s.original_max_position_embeddings as f32;
                    let low_wavelen = old / s.low_freq_factor as f32;
                    let high_wavelen = old / s.high_freq_factor as f32;
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let factor = s.factor as f32;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - s.low_freq_factor as f32)
                            / (s.high_freq_factor as f32 - s.low_freq_factor as f32);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                }
            }
        })
        .collect()
}

fn rotate_half(x: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

/// Applies RoPE to `x: (B, H, T, D)` with `cos, sin: (B, T, D/2)`: candle's kernel (with its
/// backward, [`super::fused::rope`]), or the plain ops where a gradient is needed on a device
/// without custom ops.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    if let Some(y) = super::fused::rope(x, cos, sin)? {
        return Ok(y);
    }
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?; // (B, 1, T, D)
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

/// Repeats each k/v head `n_rep` times: `(B, KV, S, D) -> (B, KV·n_rep, S, D)`.
fn repeat_kv(x: Tensor, n_rep: usize) -> candle_core::Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, n_rep, s, d))?
        .reshape((b, kv * n_rep, s, d))
}

/// Self-attention with its four projections.
#[derive(Debug)]
pub struct Attention {
    /// `q_proj`: `[heads·head_dim, hidden]`.
    pub q_proj: Linear,
    /// `k_proj`: `[kv_heads·head_dim, hidden]`.
    pub k_proj: Linear,
    /// `v_proj`: `[kv_heads·head_dim, hidden]`.
    pub v_proj: Linear,
    /// `o_proj`: `[hidden, heads·head_dim]`.
    pub o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

/// The SwiGLU MLP (Shazeer 2020): `down(SiLU(gate(x)) ⊙ up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// `gate_proj`: `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// `up_proj`: `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// `down_proj`: `[hidden, intermediate]`.
    pub down_proj: Linear,
}

/// One decoder block.
#[derive(Debug)]
pub struct Block {
    /// Norm before attention.
    pub input_layernorm: RmsNorm,
    /// Attention.
    pub self_attn: Attention,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm,
    /// MLP.
    pub mlp: Mlp,
}

struct Step<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: Option<&'a Tensor>,
}

/// The tensors of a [`Step`], owned.
struct StepTensors {
    cos: Tensor,
    sin: Tensor,
    mask: Option<Tensor>,
}

impl StepTensors {
    fn step(&self) -> Step<'_> {
        Step {
            cos: &self.cos,
            sin: &self.sin,
            mask: self.mask.as_ref(),
        }
    }
}

impl Attention {
    /// `prefix`: this layer's `(keys, values)`, `(B|1, KV, P, D)`, placed before the keys and
    /// values of the tokens (prefix tuning; never rotated here).
    fn forward(
        &self,
        x: &Tensor,
        step: &Step,
        prefix: Option<&(Tensor, Tensor)>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let q = self
            .q_proj
            .forward(x)?
            .reshape((b, t, h, hd))?
            .transpose(1, 2)?; // (B, H, T, D)
        let k = self
            .k_proj
            .forward(x)?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?; // (B, KV, T, D)
        let v = self
            .v_proj
            .forward(x)?
            .reshape((b, t, kv, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = apply_rope(&q, step.cos, step.sin)?;
        let k = apply_rope(&k, step.cos, step.sin)?.contiguous()?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v) = match prefix {
            Some((pk, pv)) => {
                let p = pk.dim(2)?;
                let fit = |x: &Tensor| -> candle_core::Result<Tensor> {
                    x.to_dtype(k.dtype())?
                        .broadcast_as((b, kv, p, hd))?
                        .contiguous()
                };
                (
                    Tensor::cat(&[&fit(pk)?, &k], 2)?, // (B, KV, P + T, D)
                    Tensor::cat(&[&fit(pv)?, &v], 2)?,
                )
            }
            None => (k, v),
        };
        let k = repeat_kv(k, h / kv)?; // (B, H, S, D)
        let v = repeat_kv(v, h / kv)?;
        let dtype = q.dtype();
        let scale = 1.0 / (hd as f64).sqrt();
        if let Some(y) = super::fused::attention(&q, &k, &v, step.mask, scale)? {
            let y = y.transpose(1, 2)?.reshape((b, t, h * hd))?;
            return self.o_proj.forward(&y);
        }
        // Plain ops: a gradient is needed on a device without custom ops.
        let scores =
            (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?.to_dtype(DType::F32)?; // (B, H, T, S)
        let scores = match step.mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let y = probs.to_dtype(dtype)?.matmul(&v.contiguous()?)?; // (B, H, T, D)
        let y = y.transpose(1, 2)?.reshape((b, t, h * hd))?;
        self.o_proj.forward(&y)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

/// The decoder: embeddings, blocks, final norm and `lm_head`.
#[derive(Debug)]
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

    /// All projections with their HF module paths, in checkpoint order, `lm_head` last.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &b.self_attn.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &b.self_attn.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &b.self_attn.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &b.self_attn.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &b.mlp.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &b.mlp.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &b.mlp.down_proj));
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// All projections, mutably, with their paths (the order of [`Llama::linears`]).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, m) = (&mut b.self_attn, &mut b.mlp);
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }

    /// HF module paths of all projections (see [`Llama::linears`]).
    pub fn linear_paths(&self) -> Vec<String> {
        self.linears().into_iter().map(|(p, _)| p).collect()
    }

    fn slot_mut(&mut self, path: &str) -> Option<&mut Linear> {
        if path == "lm_head" {
            return Some(&mut self.lm_head);
        }
        let rest = path.strip_prefix("model.layers.")?;
        let (idx, name) = rest.split_once('.')?;
        let block = self.layers.get_mut(idx.parse::<usize>().ok()?)?;
        Some(match name {
            "self_attn.q_proj" => &mut block.self_attn.q_proj,
            "self_attn.k_proj" => &mut block.self_attn.k_proj,
            "self_attn.v_proj" => &mut block.self_attn.v_proj,
            "self_attn.o_proj" => &mut block.self_attn.o_proj,
            "mlp.gate_proj" => &mut block.mlp.gate_proj,
            "mlp.up_proj" => &mut block.mlp.up_proj,
            "mlp.down_proj" => &mut block.mlp.down_proj,
            _ => return None,
        })
    }

    fn unknown_path(&self, path: &str) -> Error {
        Error::UnknownLayer {
            path: path.into(),
            layers: self.layers.len(),
        }
    }

    /// The projection at `path`.
    pub fn linear(&self, path: &str) -> Result<&Linear> {
        self.linears()
            .into_iter()
            .find(|(p, _)| p == path)
            .map(|(_, l)| l)
            .ok_or_else(|| self.unknown_path(path))
    }

    /// The projection at `path`, mutably.
    pub fn linear_mut(&mut self, path: &str) -> Result<&mut Linear> {
        let err = self.unknown_path(path);
        self.slot_mut(path).ok_or(err)
    }

    /// Puts `new` at `path` and returns the layer that was there. The replacement must keep the
    /// layer's input and output widths.
    pub fn replace_linear(&mut self, path: &str, new: Linear) -> Result<Linear> {
        let slot = self.linear_mut(path)?;
        if (slot.in_features(), slot.out_features()) != (new.in_features(), new.out_features()) {
            return Err(Error::Shape {
                name: path.to_string(),
                expected: vec![slot.out_features(), slot.in_features()],
                found: vec![new.out_features(), new.in_features()],
            });
        }
        Ok(std::mem::replace(slot, new))
    }

    /// Replaces the layer at `path` by `f(old)`, e.g. to wrap it in an adapter. If `f` fails the
    /// error is returned and the layer it was given is lost, so `f` should hand it back inside
    /// its error path only when it cannot fail after taking it; prefer validating first.
    pub fn map_linear(
        &mut self,
        path: &str,
        f: impl FnOnce(Linear) -> Result<Linear>,
    ) -> Result<()> {
        let device = self.device.clone();
        let slot = self.linear_mut(path)?;
        let (out, inp, dtype) = (
            slot.out_features(),
            slot.in_features(),
            slot.layer().dtype(),
        );
        let placeholder = Linear::new(Dense::new(
            Tensor::zeros((out, inp), dtype, &device)?,
            None,
        )?);
        let old = std::mem::replace(slot, placeholder);
        let new = f(old)?;
        self.replace_linear(path, new)?;
        Ok(())
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
        Ok(self.lm_head.forward(&h)?.to_dtype(DType::F32)?)
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
        Ok(self.lm_head.forward(&h)?.to_dtype(DType::F32)?)
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
        let mut a = block.self_attn.forward(&n, step, prefix, cache)?;
        if let Some(ad) = adapter {
            a = ad.after_attention(i, &a)?;
        }
        let x1 = (x + a)?;
        let n = block.post_attention_layernorm.forward(&x1)?;
        let mut m = block.mlp.forward(&n)?;
        if let Some(ad) = adapter {
            m = ad.after_mlp(i, &m)?;
        }
        x1 + m
    }

    /// Additive mask `(B|1, 1, T, S)`: 0 where query `i` may attend key `j`, the lowest f32
    /// elsewhere. Not −∞, as in transformers: a padding query that may attend nothing then gets
    /// a uniform (finite, ignored) row instead of NaNs that would leak into real rows through
    /// `0 · NaN` in the value product.
    ///
    /// `offset` positions come before the `t` new ones (`cached` of them in a KvCache, the rest
    /// a key/value prefix); every new token may attend to all of them.
    fn attention_mask(
        &self,
        b: usize,
        t: usize,
        offset: usize,
        cached: usize,
        opts: &ForwardOptions,
    ) -> Result<Option<Tensor>> {
        let s = offset + t;
        if t == 1 && opts.attention_mask.is_none() {
            return Ok(None);
        }
        let dev = &self.device;
        let qi = Tensor::arange(offset as u32, s as u32, dev)?.reshape((t, 1))?;
        let kj = Tensor::arange(0u32, s as u32, dev)?.reshape((1, s))?;
        let mut keep = kj
            .broadcast_le(&qi)?
            .unsqueeze(0)?
            .unsqueeze(0)?
            .to_dtype(DType::U8)?; // (1, 1, T, S)
        if let Some(am) = &opts.attention_mask {
            if am.dims() != [b, s] {
                return Err(Error::Input(format!(
                    "attention_mask must have shape (batch, cached + new) = ({b}, {s}), found {:?}",
                    am.dims()
                )));
            }
            let pad = am.ne(0u32)?.reshape((b, 1, 1, s))?;
            keep = keep.broadcast_mul(&pad)?;
        }
        if let Some(seg) = &opts.segment_ids {
            if cached != 0 || seg.dims() != [b, t] {
                return Err(Error::Input(format!(
                    "segment_ids must have shape (batch, seq_len) = ({b}, {t}) and no cache, found {:?}",
                    seg.dims()
                )));
            }
            let seg = seg.to_dtype(DType::U32)?;
            let same = seg
                .unsqueeze(2)?
                .broadcast_eq(&seg.unsqueeze(1)?)?
                .unsqueeze(1)?; // (B, 1, T, T)
            let same = if offset > 0 {
                // A key/value prefix is seen by every document.
                let prefix = Tensor::ones((b, 1, t, offset), DType::U8, dev)?;
                Tensor::cat(&[&prefix, &same], 3)? // (B, 1, T, S)
            } else {
                same
            };
            keep = keep.broadcast_mul(&same)?;
        }
        let zeros = Tensor::zeros(keep.shape(), DType::F32, dev)?;
        let neg = Tensor::full(f32::MIN, keep.shape(), dev)?;
        Ok(Some(keep.where_cond(&zeros, &neg)?))
    }
}

/// Seeded random weights in the shapes the model asks for.
struct RandomWeights {
    seed: u64,
    count: u64,
}

impl RandomWeights {
    fn new(seed: u64) -> Self {
        Self { seed, count: 0 }
    }
}

impl WeightSource for RandomWeights {
    fn get(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        self.count += 1;
        if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            return Ok(Tensor::ones(shape, dtype, device)?);
        }
        let n: usize = shape.iter().product();
        let mut rng =
            StdRng::seed_from_u64(self.seed.wrapping_mul(1_000_003).wrapping_add(self.count));
        let data: Vec<f32> = (0..n)
            .map(|_| {
                // Box–Muller: N(0, 0.02²).
                let u1: f32 = rng.random::<f32>().max(1e-12);
                let u2: f32 = rng.random();
                0.02 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }
}
