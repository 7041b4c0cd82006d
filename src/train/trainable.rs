//! [`Trainable`]: what the trainer needs from a model — its forward, its trainable parameters
//! and how to save what was trained. Implemented by [`PeftModel`] (LoRA, DoRA, QLoRA: the
//! adapter is trained, saved in PEFT's format) and by [`FullFineTune`](super::full::FullFineTune)
//! (every weight trained, saved as a HF model directory): one trainer for both.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::model::linear::Linear;
use crate::model::llama::{CheckpointedForward, ForwardOptions, Llama};
use crate::peft::dropout::DropoutRng;
use crate::peft::io::save_adapter;
use crate::peft::PeftModel;
use crate::Result;

/// A model the [`Trainer`](super::Trainer) can train.
pub trait Trainable {
    /// The decoder.
    fn llama(&self) -> &Llama;

    /// The final hidden states `(B, T, C)` of a batch; the trainer applies [`Trainable::lm_head`]
    /// to the rows that have a target.
    fn hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        self.llama().forward_hidden(input_ids, opts, None)
    }

    /// [`Trainable::hidden_states`] with gradient checkpointing per decoder layer: the states
    /// and what [`Llama::backward_checkpointed`] needs to carry their gradient back through the
    /// layers. A model that overrides `hidden_states` must override this too.
    fn hidden_states_checkpointed(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, CheckpointedForward)> {
        self.llama().forward_hidden_checkpointed(input_ids, opts)
    }

    /// The output projection.
    fn lm_head(&self) -> &Linear {
        &self.llama().lm_head
    }

    /// The parameters the optimizer updates, with stable names (they key the checkpoint).
    fn named_trainable_vars(&self) -> Vec<(String, Var)>;

    /// Training mode on or off (dropout).
    fn set_training(&mut self, training: bool) -> Result<()>;

    /// Where dropout masks come from while training (reproducible runs); default: ignored.
    fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        let _ = rng;
    }

    /// An auxiliary loss that modules add to the objective after a forward (an MoE router's
    /// load-balancing loss), or `None`. The trainer adds it to each micro-batch's loss.
    fn aux_loss(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Saves what was trained where users expect it (a PEFT adapter directory, a HF model
    /// directory) into `dir`.
    fn save_trained(&self, dir: &Path) -> Result<()>;

    /// What is trained, for logs: "LoRA adapter `default`", "full model".
    fn describe(&self) -> String;
}

impl Trainable for PeftModel {
    fn llama(&self) -> &Llama {
        &self.model
    }

    /// The active adapter's `Var`s under their `VarMap` names
    /// (`base_model.model.{path}.lora_A.{adapter}.weight`), sorted.
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        let ids: HashSet<_> = self
            .trainable_vars()
            .iter()
            .map(|v| v.as_tensor().id())
            .collect();
        let data = self.varmap().data().lock().expect("varmap lock");
        let mut named: Vec<(String, Var)> = data
            .iter()
            .filter(|(_, v)| ids.contains(&v.as_tensor().id()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    fn set_training(&mut self, training: bool) -> Result<()> {
        PeftModel::set_training(self, training)
    }

    fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        PeftModel::set_dropout_rng(self, rng)
    }

    fn save_trained(&self, dir: &Path) -> Result<()> {
        save_adapter(self, dir, self.active_adapter())
    }

    fn describe(&self) -> String {
        format!("LoRA adapter `{}`", self.active_adapter())
    }
}
