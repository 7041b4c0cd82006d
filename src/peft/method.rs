//! [`PeftMethod`]: the one interface every parameter-efficient method implements — LoRA and
//! DoRA ([`PeftModel`](super::PeftModel)), prompt tuning, prefix tuning, bottleneck adapters,
//! and the methods to come (the MoE adapter). It is what a peft user reaches for on a
//! `PeftModel` whatever its `peft_type`:
//!
//! | peft | here |
//! |---|---|
//! | `model.get_base_model()` | [`PeftMethod::base_model`] |
//! | `model.print_trainable_parameters()` | [`PeftMethod::print_trainable_parameters`] (prints) |
//! | `model.get_nb_trainable_parameters()` | [`PeftMethod::trainable_parameters`] |
//! | `model(input_ids).logits` | [`PeftMethod::forward`] |
//! | `model.generate(...)` | [`PeftMethod::generate`], [`PeftMethod::chat`] |
//! | `model.train()` / `model.eval()` | [`PeftMethod::train`] / [`PeftMethod::eval`] |
//! | `model.save_pretrained(dir)` | [`PeftMethod::save_pretrained`] |
//! | `PeftModel.from_pretrained(base, dir)` | each type's `from_pretrained(base, dir)` |
//!
//! The [`Trainer`](crate::train::Trainer) trains any `PeftMethod` (every one is
//! [`Trainable`](crate::train::Trainable)): it asks for the hidden states of a batch, the
//! trainable `Var`s by name, the mode, and where to save.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use super::dropout::DropoutRng;
use super::model::TrainableParameters;
use crate::model::chat_template::Message;
use crate::model::config::Config;
use crate::model::generate::{self, CausalLm, Generation, GenerationConfig};
use crate::model::linear::Linear;
use crate::model::llama::{CheckpointedForward, ForwardOptions, KvCache, Llama};
use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A frozen model with a parameter-efficient method on top (peft's `PeftModel`).
pub trait PeftMethod {
    /// peft's `peft_type`: `"LORA"`, `"PROMPT_TUNING"`, `"PREFIX_TUNING"`, `"BOTTLENECK"`.
    fn peft_type(&self) -> &'static str;

    /// The model under the method (peft's `get_base_model()`), read-only: changing its layers
    /// behind the method's back would break what the method keeps about them.
    fn base_model(&self) -> &Llama;

    /// The name of the active adapter (`"default"`).
    fn active_adapter(&self) -> &str {
        "default"
    }

    /// The trainable `Var`s of the active adapter under peft's parameter names, sorted by name
    /// (they key the optimizer state in a checkpoint).
    fn named_trainable_vars(&self) -> Vec<(String, Var)>;

    /// The trainable `Var`s (for an optimizer of your own).
    fn trainable_vars(&self) -> Vec<Var> {
        self.named_trainable_vars()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// peft's `get_nb_trainable_parameters`: the active adapter's parameters and all of them.
    fn trainable_parameters(&self) -> TrainableParameters;

    /// peft's `print_trainable_parameters()`: prints
    /// `trainable params: … || all params: … || trainable%: …`.
    fn print_trainable_parameters(&self) {
        println!("{}", self.trainable_parameters());
    }

    /// The final hidden states `(B, T, C)` of the real tokens (after the last norm), aligned
    /// with `input_ids: (B, T)`.
    fn hidden_states(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor>;

    /// [`PeftMethod::hidden_states`] with gradient checkpointing per decoder layer (see
    /// `model::llama::checkpoint`). Methods whose forward is the base model's with hooks
    /// inside (LoRA, bottleneck adapters) have it; the default is an error naming the method.
    fn hidden_states_checkpointed(
        &self,
        input_ids: &Tensor,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, CheckpointedForward)> {
        let _ = (input_ids, opts);
        Err(Error::config(
            "gradient_checkpointing",
            format!(
                "is not available for {}: its forward does not run the base model's layers one \
                 by one; train without it",
                self.peft_type()
            ),
        ))
    }

    /// The output projection applied to the hidden states.
    fn lm_head(&self) -> &Linear {
        &self.base_model().lm_head
    }

    /// Logits `(B, T, V)` (f32) for `input_ids: (B, T)`.
    fn forward(&self, input_ids: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let h = self.hidden_states(input_ids, opts)?;
        Ok(self.lm_head().forward(&h)?.to_dtype(DType::F32)?)
    }

    /// For generation: logits `(1, V)` of the last position of `input_ids: (1, T)`, appending
    /// to `cache` (empty on the first call). See [`CausalLm::next_logits`].
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor>;

    /// Training (`true`) or evaluation mode of everything the method holds.
    fn set_training(&mut self, training: bool);

    /// Training mode (PyTorch's `model.train()`): dropout on; the trainer calls it.
    fn train(&mut self) {
        self.set_training(true)
    }

    /// Evaluation mode (PyTorch's `model.eval()`): dropout off, the faster inference path.
    fn eval(&mut self) {
        self.set_training(false)
    }

    /// Where dropout masks come from while training (reproducible runs); default: ignored.
    fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        let _ = rng;
    }

    /// An auxiliary loss that the method adds to the objective after a forward (an MoE
    /// router's load-balancing loss), or `None`.
    fn aux_loss(&self) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Saves the adapter in PEFT's directory layout: `adapter_config.json` and
    /// `adapter_model.safetensors` in `dir` (created if needed; written atomically).
    fn save_pretrained(&self, dir: &Path) -> Result<()>;

    /// Generates a continuation of `prompt` (see [`generate::generate`]).
    fn generate(
        &self,
        tokenizer: &Tokenizer,
        prompt: &str,
        cfg: &GenerationConfig,
    ) -> Result<Generation> {
        generate::generate(&AsCausalLm(self), tokenizer, prompt, cfg, None)
    }

    /// Answers `messages` through the model's chat template (see [`generate::chat`]).
    fn chat(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        cfg: &GenerationConfig,
    ) -> Result<Generation> {
        generate::chat(&AsCausalLm(self), tokenizer, messages, cfg, None)
    }
}

/// The `Var`s of `varmap` under their names, sorted by name (what
/// [`PeftMethod::named_trainable_vars`] hands the trainer).
pub(crate) fn named_vars(varmap: &candle_nn::VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut named: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// A [`PeftMethod`] seen by the generation loop.
pub struct AsCausalLm<'a, M: ?Sized>(pub &'a M);

impl<M: PeftMethod + ?Sized> CausalLm for AsCausalLm<'_, M> {
    fn config(&self) -> &Config {
        self.0.base_model().config()
    }
    fn device(&self) -> &Device {
        self.0.base_model().device()
    }
    fn next_logits(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        self.0.next_logits(input_ids, cache)
    }
}
