//! Full fine-tuning: every weight of the model is a trainable `Var` — embeddings, norms and
//! every dense projection — trained by the same [`Trainer`](super::Trainer) as LoRA.
//!
//! Memory (slide 5): weights, gradients and AdamW's two moments in f32 make 16 bytes per
//! parameter, 2.2 GB for SmolLM2-135M before activations; see `memory::full_finetune`.
//! The weights are the master copy, so the model must be f32 (mixed precision with f32 master
//! weights is not built for full fine-tuning); quantized layers cannot be fully fine-tuned
//! (slide 25: train an adapter on them instead).

use std::path::Path;

use candle_core::{DType, Var};

use super::trainable::Trainable;
use crate::model::linear::{Dense, Linear};
use crate::model::llama::Llama;
use crate::model::load::save_pretrained;
use crate::{Error, Result};

/// A model whose every weight trains.
#[derive(Debug)]
pub struct FullFineTune {
    /// The model; its tensors are the `Var`s below.
    pub model: Llama,
    vars: Vec<(String, Var)>,
}

impl FullFineTune {
    /// Makes every weight of `model` a `Var` (a copy: the model then owns fresh storage).
    /// Errors on a non-f32 model or a layer that is not dense, naming it.
    pub fn new(mut model: Llama) -> Result<Self> {
        if model.dtype() != DType::F32 {
            return Err(Error::Config {
                field: "dtype".into(),
                msg: format!(
                    "full fine-tuning keeps the master weights in the model, so it needs an f32 \
                     model; this one is {:?} (load it with dtype f32, or train a LoRA adapter)",
                    model.dtype()
                ),
            });
        }
        let mut vars = Vec::new();
        let embed = Var::from_tensor(&model.embed_tokens)?;
        model.embed_tokens = embed.as_tensor().clone();
        vars.push(("model.embed_tokens.weight".to_string(), embed.clone()));
        let tied = model.config().tie_word_embeddings;
        for (i, block) in model.layers.iter_mut().enumerate() {
            for (name, norm) in [
                ("input_layernorm", &mut block.input_layernorm),
                (
                    "post_attention_layernorm",
                    &mut block.post_attention_layernorm,
                ),
            ] {
                let v = Var::from_tensor(&norm.weight)?;
                norm.weight = v.as_tensor().clone();
                vars.push((format!("model.layers.{i}.{name}.weight"), v));
            }
        }
        let v = Var::from_tensor(&model.norm.weight)?;
        model.norm.weight = v.as_tensor().clone();
        vars.push(("model.norm.weight".to_string(), v));
        for path in model.linear_paths() {
            if path == "lm_head" && tied {
                let head = Dense::new(embed.as_tensor().clone(), None)?;
                model.replace_linear(&path, Linear::new(head))?;
                continue;
            }
            let layer = model.linear(&path)?;
            if layer.base().is_some() || layer.is_quantized() {
                return Err(Error::Config {
                    field: path.clone(),
                    msg: format!(
                        "is a {} layer; full fine-tuning needs dense layers (a quantized base \
                         trains through an adapter: QLoRA, slide 25)",
                        layer.kind()
                    ),
                });
            }
            let w = Var::from_tensor(&layer.dense_weight()?)?;
            let b = match layer.bias() {
                Some(b) => Some(Var::from_tensor(b)?),
                None => None,
            };
            let new = Dense::new(
                w.as_tensor().clone(),
                b.as_ref().map(|b| b.as_tensor().clone()),
            )?;
            model.replace_linear(&path, Linear::new(new))?;
            vars.push((format!("{path}.weight"), w));
            if let Some(b) = b {
                vars.push((format!("{path}.bias"), b));
            }
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { model, vars })
    }

    /// Parameters that train (every one; a tied `lm_head` counts once).
    pub fn num_trainable(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The model, for generation or saving.
    pub fn into_model(self) -> Llama {
        self.model
    }
}

impl Trainable for FullFineTune {
    fn llama(&self) -> &Llama {
        &self.model
    }

    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    fn set_training(&mut self, training: bool) {
        self.model.set_training(training)
    }

    fn save_trained(&self, dir: &Path) -> Result<()> {
        save_pretrained(&self.model, None, dir)
    }

    fn describe(&self) -> String {
        format!("full model ({} parameters)", self.num_trainable())
    }
}
