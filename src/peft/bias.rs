//! `bias = "all" | "lora_only"`: training the base layers' biases beside the adapters, as peft
//! does (`mark_only_lora_as_trainable`):
//!
//! | `bias` | trains | saved as (peft's keys, adapter name removed) |
//! |---|---|---|
//! | `"none"` | no bias | — |
//! | `"all"` | every bias of the model | `base_model.model.{path}.base_layer.bias` for an adapted layer, `base_model.model.{path}.bias` for the others |
//! | `"lora_only"` | the biases of the adapted layers | `base_model.model.{path}.base_layer.bias` |
//!
//! A bias is a property of the base layer, not of an adapter: it is shared by every adapter,
//! stays trained when the adapters are disabled or unloaded (peft warns the same: with
//! `bias != "none"` the disabled model is not the base model), and is listed among the
//! trainable `Var`s of the adapters whose config asked for it. The `Var` replaces the layer's
//! bias tensor, in the layer's dtype: a dense layer gets a new [`Dense`] around it, a quantized
//! one a [`QuantWithBias`] (the quantized weight with a trainable bias).

use std::any::Any;

use candle_core::{DType, Device, Tensor, Var};

use super::config::LoraBias;
use super::lora::LoraLayer;
use super::model::PeftModel;
use crate::model::linear::{Dense, Linear, LinearLayer};
use crate::quant::QLinear;
use crate::{Error, Result};

/// A trainable bias of a base layer.
#[derive(Debug, Clone)]
pub struct TrainedBias {
    /// The bias, `[out]`, in the layer's dtype.
    pub var: Var,
    /// Its `VarMap` key (peft's parameter name).
    pub key: String,
    /// Adapters whose config trains it.
    pub adapters: Vec<String>,
}

/// A quantized layer whose bias trains: [`QLinear`]'s forward with the `Var` as the bias.
#[derive(Debug)]
pub struct QuantWithBias {
    q: QLinear,
    bias: Tensor,
}

impl QuantWithBias {
    /// The quantized layer (its own bias is the frozen original).
    pub fn quantized(&self) -> &QLinear {
        &self.q
    }
}

impl LinearLayer for QuantWithBias {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let in_dtype = x.dtype();
        let y = self
            .q
            .weight()
            .forward(&x.to_dtype(self.q.compute_dtype())?)?;
        y.broadcast_add(&self.bias)?.to_dtype(in_dtype)
    }
    fn in_features(&self) -> usize {
        self.q.in_features()
    }
    fn out_features(&self) -> usize {
        self.q.out_features()
    }
    fn kind(&self) -> String {
        self.q.kind()
    }
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.q.dense_weight()
    }
    fn bias(&self) -> Option<&Tensor> {
        Some(&self.bias)
    }
    fn num_parameters(&self) -> usize {
        self.q.num_parameters()
    }
    fn storage_bytes(&self) -> usize {
        self.q.storage_bytes()
    }
    fn dtype(&self) -> DType {
        self.q.dtype()
    }
    fn device(&self) -> Device {
        LinearLayer::device(&self.q)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// `layer` with its bias replaced by a new `Var` (a copy of it), or `None` when the layer has
/// no bias. Errors on a layer kind whose bias cannot be swapped, naming `path`.
fn with_trainable_bias(layer: Linear, path: &str) -> Result<(Linear, Option<Var>)> {
    let Some(b) = layer.bias().cloned() else {
        return Ok((layer, None));
    };
    let var = Var::from_tensor(&b)?;
    let layer = match layer.downcast::<Dense>() {
        Ok(d) => Linear::new(Dense::new(
            d.weight().clone(),
            Some(var.as_tensor().clone()),
        )?),
        Err(layer) => match layer.downcast::<QLinear>() {
            Ok(q) => Linear::new(QuantWithBias {
                q,
                bias: var.as_tensor().clone(),
            }),
            Err(layer) => match layer.downcast::<QuantWithBias>() {
                Ok(mut q) => {
                    q.bias = var.as_tensor().clone();
                    Linear::new(q)
                }
                Err(layer) => {
                    return Err(Error::config(
                        "bias",
                        format!(
                            "the bias of `{path}` (a {} layer) cannot be trained",
                            layer.kind()
                        ),
                    ))
                }
            },
        },
    };
    Ok((layer, Some(var)))
}

/// peft's key of the bias of the layer at `path`.
pub fn bias_key(path: &str, adapted: bool) -> String {
    if adapted {
        format!("base_model.model.{path}.base_layer.bias")
    } else {
        format!("base_model.model.{path}.bias")
    }
}

impl PeftModel {
    /// Makes the biases that `bias` selects trainable for the adapter `name` (after its LoRA
    /// layers were added): registers each in the `VarMap` under peft's key.
    pub(super) fn train_biases(&mut self, name: &str, bias: LoraBias) -> Result<()> {
        if bias == LoraBias::None {
            return Ok(());
        }
        let saved = self.modules_to_save_paths();
        for path in self.model.linear_paths() {
            if saved.contains(&path) {
                continue; // the copy's own bias trains
            }
            let layer = self.model.linear(&path)?;
            let adapted = layer
                .downcast_ref::<LoraLayer>()
                .is_some_and(|l| l.adapters().contains_key(name));
            let wanted = match bias {
                LoraBias::All => true,
                LoraBias::LoraOnly => adapted,
                LoraBias::None => false,
            };
            if !wanted || layer.bias().is_none() {
                continue;
            }
            if let Some(t) = self.biases.get_mut(&path) {
                if !t.adapters.iter().any(|a| a == name) {
                    t.adapters.push(name.to_string());
                }
                continue;
            }
            let mut var = None;
            self.model
                .map_linear(&path, |old| match old.downcast::<LoraLayer>() {
                    Ok(mut lora) => {
                        let base = std::mem::replace(&mut lora.base, placeholder(&path)?);
                        let (base, v) = with_trainable_bias(base, &path)?;
                        lora.base = base;
                        var = v;
                        Ok(Linear::new(lora))
                    }
                    Err(old) => {
                        let (l, v) = with_trainable_bias(old, &path)?;
                        var = v;
                        Ok(l)
                    }
                })?;
            let Some(var) = var else { continue };
            let is_lora = self
                .model
                .linear(&path)?
                .downcast_ref::<LoraLayer>()
                .is_some();
            let key = bias_key(&path, is_lora);
            self.register_var(key.clone(), &var, None);
            self.biases.insert(
                path,
                TrainedBias {
                    var,
                    key,
                    adapters: vec![name.to_string()],
                },
            );
        }
        Ok(())
    }

    /// The trained biases by module path.
    pub fn trained_biases(&self) -> &std::collections::BTreeMap<String, TrainedBias> {
        &self.biases
    }
}

/// A throw-away layer of the right kind for `mem::replace` (never used for compute).
fn placeholder(path: &str) -> Result<Linear> {
    let _ = path;
    Ok(Linear::new(Dense::new(
        Tensor::zeros((1, 1), DType::F32, &Device::Cpu)?,
        None,
    )?))
}
