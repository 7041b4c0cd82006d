//! Merging the active adapter into the whole model, and unloading (peft's `merge_adapter`,
//! `unmerge_adapter`, `merge_and_unload`, `unload`), plus merging a QLoRA model into a
//! quantized model again ([`PeftModel::merge_and_requantize`], see `merge.rs`).
//!
//! Unloading puts the active adapter's `modules_to_save` copies in place of the modules (peft
//! does the same) and keeps trained biases. A model with tied embeddings whose `lm_head` and
//! `embed_tokens` no longer agree comes back with `tie_word_embeddings = false`, as peft sets it.

use super::lora::LoraLayer;
use super::merge::RequantizeReport;
use super::model::PeftModel;
use super::saved_modules::untie;
use crate::model::llama::Llama;
use crate::Result;

impl PeftModel {
    /// Merges the active adapter into every base weight (`merge_adapter`).
    pub fn merge(&mut self, safe_merge: bool) -> Result<()> {
        for l in self.lora_layers_mut()? {
            l.merge(safe_merge)?;
        }
        Ok(())
    }

    /// Takes merged adapters out again (`unmerge_adapter`).
    pub fn unmerge(&mut self) -> Result<()> {
        for l in self.lora_layers_mut()? {
            l.unmerge()?;
        }
        Ok(())
    }

    /// Merges the active adapter and returns the plain model (`merge_and_unload`). A quantized
    /// base becomes dense in its compute dtype; [`PeftModel::merge_and_requantize`] keeps it
    /// quantized.
    pub fn merge_and_unload(mut self, safe_merge: bool) -> Result<Llama> {
        self.merge(safe_merge)?;
        self.unload()
    }

    /// Like [`PeftModel::merge_and_unload`], but every quantized base is quantized again with
    /// its own scheme after the merge (what peft does for bitsandbytes 4-bit layers), with the
    /// rounding of each layer measured: see [`RequantizeReport::warning`].
    pub fn merge_and_requantize(mut self, safe_merge: bool) -> Result<(Llama, RequantizeReport)> {
        let mut report = RequantizeReport { layers: Vec::new() };
        let paths: Vec<String> = self.lora_layers().into_iter().map(|(p, _)| p).collect();
        for path in paths {
            self.model
                .map_linear(&path, |l| match l.into_layer::<LoraLayer>() {
                    Ok(lora) => {
                        let (layer, rounding) = lora.merge_and_requantize(safe_merge, &path)?;
                        report.layers.extend(rounding);
                        Ok(layer)
                    }
                    Err(l) => Ok(l),
                })?;
        }
        Ok((self.unload()?, report))
    }

    /// The plain model without merging (`unload`): every LoRA layer gives back its base, and
    /// `modules_to_save` modules the active adapter's copy.
    pub fn unload(mut self) -> Result<Llama> {
        let paths: Vec<String> = self.lora_layers().into_iter().map(|(p, _)| p).collect();
        for path in paths {
            self.model
                .map_linear(&path, |l| match l.into_layer::<LoraLayer>() {
                    Ok(lora) => Ok(lora.unload()),
                    Err(l) => Ok(l),
                })?;
        }
        let diverged = self.unload_modules_to_save()?;
        if diverged {
            untie(self.model)
        } else {
            Ok(self.model)
        }
    }
}
