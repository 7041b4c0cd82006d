//! [`Trainable`]: what the trainer needs from a model — its forward, its trainable parameters,
//! its mode and how to save what was trained. Every PEFT method is trainable through
//! [`PeftMethod`] (LoRA, DoRA, QLoRA, prompt and prefix tuning, bottleneck adapters: the
//! adapter is trained and saved in PEFT's format), and so is
//! [`FullFineTune`](super::full::FullFineTune) (every weight trained, saved as a HF model
//! directory): one trainer for all.

use std::path::Path;

use candle_core::{Tensor, Var};

use crate::model::linear::Linear;
use crate::model::llama::{CheckpointedForward, ForwardOptions, Llama};
use crate::peft::dropout::DropoutRng;
use crate::peft::PeftMethod;
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

    /// Training mode (`true`: dropout on, trainable tensors read directly) or evaluation mode.
    fn set_training(&mut self, training: bool);

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

    /// What is trained, for logs: "LORA adapter `default`", "full model".
    fn describe(&self) -> String;
}

impl<M: PeftMethod> Trainable for M {
    fn llama(&self) -> &Llama {
        self.base_model()
    }
    fn hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        PeftMethod::hidden_states(self, input_ids, opts)
    }
    fn hidden_states_checkpointed(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, CheckpointedForward)> {
        PeftMethod::hidden_states_checkpointed(self, input_ids, opts)
    }
    fn lm_head(&self) -> &Linear {
        PeftMethod::lm_head(self)
    }
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        PeftMethod::named_trainable_vars(self)
    }
    fn set_training(&mut self, training: bool) {
        PeftMethod::set_training(self, training)
    }
    fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        PeftMethod::set_dropout_rng(self, rng)
    }
    fn aux_loss(&self) -> Result<Option<Tensor>> {
        PeftMethod::aux_loss(self)
    }
    fn save_trained(&self, dir: &Path) -> Result<()> {
        self.save_pretrained(dir)
    }
    fn describe(&self) -> String {
        format!("{} adapter `{}`", self.peft_type(), self.active_adapter())
    }
}
