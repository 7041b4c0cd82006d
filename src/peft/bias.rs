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
//! trainable `Var`s of the adapters whose config asked for it. The `Var` replaces the base
//! layer's bias tensor, in the layer's dtype, through the seam's `set_bias` — the same call for
//! a dense and a quantized base.

use candle_core::Var;

use super::config::LoraBias;
use super::lora::LoraLayer;
use super::model::PeftModel;
use crate::Result;

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
                .get::<LoraLayer>()
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
            let Some(bias) = layer.bias() else { continue };
            let var = Var::from_tensor(bias)?;
            let is_lora = layer.is::<LoraLayer>();
            // A LoRA layer passes the bias on to its base (dense or quantized).
            self.model
                .linear_mut(&path)?
                .set_bias(Some(var.as_tensor().clone()))?;
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
