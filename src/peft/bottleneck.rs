//! Bottleneck adapters (Houlsby et al. 2019, *Parameter-Efficient Transfer Learning for NLP*):
//! a small down-/up-projection with a skip connection after the attention and after the MLP of
//! every block, before the residual add.
//!
//! ```text
//! adapter(h) = h + W_up · f(W_down · h + b_down) + b_up     W_down: [C/rf, C], W_up: [C, C/rf]
//! block:       h = h + adapter_attn(o_proj(Attn(RMSNorm(h))))
//!              h = h + adapter_mlp(down_proj(SwiGLU(RMSNorm(h))))
//! ```
//!
//! peft has no bottleneck adapters; the names follow AdapterHub's `adapters` library, where
//! they are `BnConfig(mh_adapter, output_adapter, reduction_factor, non_linearity)` and the
//! Houlsby preset `DoubleSeqBnConfig` puts one in both places with reduction 16 and "swish".
//! Parameter paths are those of its Llama integration, `model.layers.{i}.attention_adapters`
//! (after attention) and `model.layers.{i}.output_adapters` (after the MLP), each
//! `.adapters.default.adapter_down.0.{weight,bias}` and `.adapter_up.{weight,bias}`.
//!
//! Init: `W_down` ~ U(−1/√C, 1/√C) (kaiming-uniform with a = √5), `W_up` and both biases zero
//! (AdapterHub's `init_weights="mam_adapter"`): Houlsby's near-identity start made exact, the
//! adapted model equals the base until the first step (and, as with LoRA's B = 0, only `W_up`
//! and `b_up` get a gradient on that step). The adapter computes in f32, the `Var`s' dtype,
//! and hands back the model's dtype. Adapters hook into the model through
//! [`BlockAdapter`], so every forward — cached generation included — goes through them.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::model::TrainableParameters;
use crate::model::config::Config;
use crate::model::linear::linear_forward;
use crate::model::llama::{BlockAdapter, CheckpointedForward, ForwardOptions, KvCache, Llama};
use std::path::Path;

use super::method::PeftMethod;
use crate::{Error, Result};

/// The activation between the projections (AdapterHub's `non_linearity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonLinearity {
    /// max(0, x).
    Relu,
    /// x·Φ(x), the exact (erf) GELU of `nn.GELU()`.
    Gelu,
    /// x·σ(x) ("swish", Houlsby's preset in AdapterHub).
    #[default]
    #[serde(rename = "swish", alias = "silu")]
    Silu,
    /// tanh(x).
    Tanh,
}

impl NonLinearity {
    /// Applies the activation elementwise.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            NonLinearity::Relu => x.relu(),
            NonLinearity::Gelu => x.gelu_erf(),
            NonLinearity::Silu => candle_nn::ops::silu(x),
            NonLinearity::Tanh => x.tanh(),
        }
    }
}

/// Where and how large the adapters are (AdapterHub's `BnConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BottleneckConfig {
    /// hidden / bottleneck width (16): the adapter's inner width is `hidden_size / rf`.
    pub reduction_factor: usize,
    /// The activation (`swish`).
    pub non_linearity: NonLinearity,
    /// An adapter after each attention output (AdapterHub's `mh_adapter`).
    pub after_attention: bool,
    /// An adapter after each MLP output (AdapterHub's `output_adapter`).
    pub after_mlp: bool,
}

impl Default for BottleneckConfig {
    /// Houlsby's placement: both places, reduction 16, swish.
    fn default() -> Self {
        Self {
            reduction_factor: 16,
            non_linearity: NonLinearity::Silu,
            after_attention: true,
            after_mlp: true,
        }
    }
}

impl BottleneckConfig {
    /// Both places, with `reduction_factor` and `non_linearity`.
    pub fn new(reduction_factor: usize, non_linearity: NonLinearity) -> Self {
        Self {
            reduction_factor,
            non_linearity,
            ..Self::default()
        }
    }

    /// Checks the fields against the model, naming the bad one.
    pub fn validate(&self, model: &Config) -> Result<()> {
        let (rf, h) = (self.reduction_factor, model.hidden_size);
        if rf == 0 || h % rf != 0 {
            return Err(Error::config(
                "reduction_factor",
                format!("must divide the model's hidden_size {h}, got {rf}"),
            ));
        }
        if !self.after_attention && !self.after_mlp {
            return Err(Error::config(
                "after_attention",
                "and `after_mlp` are both false: the adapters would go nowhere",
            ));
        }
        Ok(())
    }

    /// The bottleneck width `hidden_size / reduction_factor`.
    pub fn bottleneck_size(&self, model: &Config) -> usize {
        model.hidden_size / self.reduction_factor.max(1)
    }

    /// Trainable parameters: per adapter `C·m + m + m·C + C` (m = C/rf), times the places
    /// per block, times the layers.
    pub fn num_trainable_parameters(&self, model: &Config) -> usize {
        let (c, m) = (model.hidden_size, self.bottleneck_size(model));
        let places = self.after_attention as usize + self.after_mlp as usize;
        model.num_hidden_layers * places * (c * m + m + m * c + c)
    }
}

/// One adapter: `h + W_up · f(W_down · h + b_down) + b_up`.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    /// `W_down`: `[m, C]`, f32.
    pub down_weight: Var,
    /// `b_down`: `[m]`, f32.
    pub down_bias: Var,
    /// `W_up`: `[C, m]`, f32.
    pub up_weight: Var,
    /// `b_up`: `[C]`, f32.
    pub up_bias: Var,
    /// f.
    pub non_linearity: NonLinearity,
}

impl Bottleneck {
    /// The adapter's output, same shape and dtype as `h: (.., C)`.
    pub fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let x = h.to_dtype(DType::F32)?;
        let z = linear_forward(&x, self.down_weight.as_tensor(), Some(&self.down_bias))?; // (.., m)
        let z = self.non_linearity.apply(&z)?;
        let up = linear_forward(&z, self.up_weight.as_tensor(), Some(&self.up_bias))?; // (.., C)
        (x + up)?.to_dtype(h.dtype())
    }

    /// `2·C·m + m + C`.
    pub fn num_parameters(&self) -> usize {
        [
            &self.down_weight,
            &self.down_bias,
            &self.up_weight,
            &self.up_bias,
        ]
        .iter()
        .map(|v| v.elem_count())
        .sum()
    }

    fn init(c: usize, m: usize, f: NonLinearity, rng: &mut StdRng, dev: &Device) -> Result<Self> {
        let bound = 1.0 / (c as f64).sqrt();
        let down: Vec<f32> = (0..m * c)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let zeros = |shape: &[usize]| -> Result<Var> {
            Ok(Var::from_tensor(&Tensor::zeros(shape, DType::F32, dev)?)?)
        };
        Ok(Self {
            down_weight: Var::from_tensor(&Tensor::from_vec(down, (m, c), dev)?)?,
            down_bias: zeros(&[m])?,
            up_weight: zeros(&[c, m])?,
            up_bias: zeros(&[c])?,
            non_linearity: f,
        })
    }
}

/// The adapters of every block, `(after attention, after MLP)` per layer; the model's
/// [`BlockAdapter`].
#[derive(Debug)]
pub struct BottleneckAdapters {
    layers: Vec<(Option<Bottleneck>, Option<Bottleneck>)>,
}

impl BottleneckAdapters {
    /// The adapters of layer `layer`: `(after attention, after MLP)`.
    pub fn layer(&self, layer: usize) -> Option<(Option<&Bottleneck>, Option<&Bottleneck>)> {
        self.layers
            .get(layer)
            .map(|(a, m)| (a.as_ref(), m.as_ref()))
    }
}

impl BlockAdapter for BottleneckAdapters {
    fn after_attention(&self, layer: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        match self.layers.get(layer).and_then(|(a, _)| a.as_ref()) {
            Some(a) => a.forward(h),
            None => Ok(h.clone()),
        }
    }
    fn after_mlp(&self, layer: usize, h: &Tensor) -> candle_core::Result<Tensor> {
        match self.layers.get(layer).and_then(|(_, m)| m.as_ref()) {
            Some(a) => a.forward(h),
            None => Ok(h.clone()),
        }
    }
}

/// A model with bottleneck adapters in every block.
pub struct BottleneckModel {
    /// The model, with the adapters installed as its block adapter.
    model: Llama,
    config: BottleneckConfig,
    adapters: Arc<BottleneckAdapters>,
    varmap: VarMap,
}

/// Inserts bottleneck adapters into every block of `model` (seeded `W_down`, zero `W_up`).
/// Errors: a bad config (naming the field) or a model that already has a block adapter.
pub fn get_bottleneck_model(
    mut model: Llama,
    config: &BottleneckConfig,
    seed: u64,
) -> Result<BottleneckModel> {
    config.validate(model.config())?;
    if model.block_adapter().is_some() {
        return Err(Error::Input(
            "the model already has a block adapter; unload it first".into(),
        ));
    }
    let c = model.config().hidden_size;
    let m = config.bottleneck_size(model.config());
    let f = config.non_linearity;
    let device = model.device().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let varmap = VarMap::new();
    let mut layers = Vec::with_capacity(model.config().num_hidden_layers);
    for i in 0..model.config().num_hidden_layers {
        let mut make = |on: bool, place: &str| -> Result<Option<Bottleneck>> {
            if !on {
                return Ok(None);
            }
            let a = Bottleneck::init(c, m, f, &mut rng, &device)?;
            let p = format!("model.layers.{i}.{place}.adapters.default");
            let mut data = varmap.data().lock().expect("varmap lock");
            data.insert(format!("{p}.adapter_down.0.weight"), a.down_weight.clone());
            data.insert(format!("{p}.adapter_down.0.bias"), a.down_bias.clone());
            data.insert(format!("{p}.adapter_up.weight"), a.up_weight.clone());
            data.insert(format!("{p}.adapter_up.bias"), a.up_bias.clone());
            Ok(Some(a))
        };
        let attn = make(config.after_attention, "attention_adapters")?;
        let mlp = make(config.after_mlp, "output_adapters")?;
        layers.push((attn, mlp));
    }
    let adapters = Arc::new(BottleneckAdapters { layers });
    model.set_block_adapter(Some(adapters.clone()));
    Ok(BottleneckModel {
        model,
        config: config.clone(),
        adapters,
        varmap,
    })
}

impl BottleneckModel {
    /// The config.
    pub fn peft_config(&self) -> &BottleneckConfig {
        &self.config
    }

    /// The adapters.
    pub fn adapters(&self) -> &BottleneckAdapters {
        &self.adapters
    }

    /// The trainable tensors by AdapterHub's parameter paths.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The `Var`s by AdapterHub's parameter paths, sorted.
    pub(super) fn named_vars(&self) -> Vec<(String, Var)> {
        super::method::named_vars(&self.varmap)
    }

    pub(super) fn base_device(&self) -> &Device {
        self.model.device()
    }

    /// Trainable (the adapters) and all parameters (base plus adapters), as peft counts.
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = self
            .adapters
            .layers
            .iter()
            .flat_map(|(a, m)| [a, m])
            .flatten()
            .map(Bottleneck::num_parameters)
            .sum();
        TrainableParameters {
            trainable,
            all: self.model.num_parameters() + trainable,
        }
    }

    /// Runs `f` on the model without its adapters, then puts them back.
    pub fn with_adapters_disabled<T>(&mut self, f: impl FnOnce(&Llama) -> T) -> T {
        let hook = self.model.set_block_adapter(None);
        let out = f(&self.model);
        self.model.set_block_adapter(hook);
        out
    }

    /// The base model without the adapters.
    pub fn unload(mut self) -> Llama {
        self.model.set_block_adapter(None);
        self.model
    }
}

/// The adapters sit in the model's own forward (its block adapter): every path of the model —
/// cached generation, gradient checkpointing — goes through them.
impl PeftMethod for BottleneckModel {
    fn peft_type(&self) -> &'static str {
        super::bottleneck_io::BOTTLENECK
    }
    fn base_model(&self) -> &Llama {
        &self.model
    }
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars()
    }
    fn trainable_parameters(&self) -> TrainableParameters {
        BottleneckModel::trainable_parameters(self)
    }
    fn hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        self.model.forward_hidden(input_ids, opts, None)
    }
    fn hidden_states_checkpointed(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, CheckpointedForward)> {
        self.model.forward_hidden_checkpointed(input_ids, opts)
    }
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.model.forward_last(input_ids, Some(cache))
    }
    fn set_training(&mut self, training: bool) {
        self.model.set_training(training)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        BottleneckModel::save_pretrained(self, dir)
    }
}
