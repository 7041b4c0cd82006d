//! [`PeftMethod`] for [`PeftModel`] (LoRA, DoRA, QLoRA): the adapters live inside the model's
//! linear layers, so the forward is the model's own, and gradient checkpointing works as for
//! the plain model. Saved and loaded in PEFT's LoRA format (`io.rs`).

use std::path::Path;

use candle_core::{Tensor, Var};

use super::dropout::DropoutRng;
use super::io::{load_adapter, save_adapter};
use super::method::PeftMethod;
use super::model::{PeftModel, TrainableParameters};
use crate::model::llama::{CheckpointedForward, ForwardOptions, KvCache, Llama};
use crate::Result;

impl PeftModel {
    /// `PeftModel.from_pretrained(base, dir)`: wraps `base` as the adapter's
    /// `adapter_config.json` says and loads its tensors (see [`load_adapter`]).
    pub fn from_pretrained(base: Llama, dir: impl AsRef<Path>) -> Result<Self> {
        load_adapter(base, dir)
    }

    /// `model.save_pretrained(dir)`: the active adapter in PEFT's format.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_adapter(self, dir, &self.active)
    }
}

impl PeftMethod for PeftModel {
    fn peft_type(&self) -> &'static str {
        "LORA"
    }
    fn base_model(&self) -> &Llama {
        &self.model
    }
    fn active_adapter(&self) -> &str {
        &self.active
    }
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        self.active_named_vars()
    }
    fn trainable_parameters(&self) -> TrainableParameters {
        PeftModel::trainable_parameters(self)
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
    fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        PeftModel::set_dropout_rng(self, rng)
    }
    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        PeftModel::save_pretrained(self, dir)
    }
}
