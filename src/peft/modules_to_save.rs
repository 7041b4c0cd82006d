//! `modules_to_save`: whole modules trained beside the adapters — typically `lm_head` or
//! `embed_tokens` when new tokens were added, or the norms — as peft's `ModulesToSaveWrapper`
//! does it: each adapter gets a trainable copy of the module, the original is kept, and the
//! active adapter's copy runs (the original when the adapter has none or adapters are off).
//!
//! ```text
//! in memory (VarMap)   base_model.model.lm_head.modules_to_save.default.weight
//! in the adapter file  base_model.model.lm_head.weight
//! ```
//!
//! A name matches every module whose path ends with it (peft's `str.endswith`, so `"norm"` is
//! every RMSNorm and the final norm). Modules tunelab can copy: `model.embed_tokens`, the
//! norms, and dense linear layers that no LoRA adapter targets (a quantized layer cannot be
//! trained in full, slide 25).
//!
//! Tied embeddings (`tie_word_embeddings`, e.g. SmolLM2, Qwen2): peft 0.21 copies only the named
//! module, so the trained copy unties `lm_head` from `embed_tokens` (it warns; after
//! `merge_and_unload` the config says `tie_word_embeddings = false`). With
//! `ensure_weight_tying = true` one copy serves both and they stay tied (peft rewrites the list
//! to `model.embed_tokens` and saves the copy under both names). tunelab does the same.

//!
//! This file: the layer and a copy's tensors; `saved_modules.rs` wires them into `PeftModel`.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};

use crate::model::linear::{Linear, LinearLayer};

/// A linear module of `modules_to_save`: the original and a trainable copy per adapter.
#[derive(Debug, Clone)]
pub struct ModulesToSaveLayer {
    pub(super) original: Linear,
    pub(super) copies: BTreeMap<String, Linear>,
    pub(super) active: Option<String>,
}

impl ModulesToSaveLayer {
    /// The original module.
    pub fn original(&self) -> &Linear {
        &self.original
    }

    /// The copies by adapter name (dense layers around the trainable `Var`s).
    pub fn copies(&self) -> &BTreeMap<String, Linear> {
        &self.copies
    }

    fn current(&self) -> &Linear {
        self.active
            .as_ref()
            .and_then(|a| self.copies.get(a))
            .unwrap_or(&self.original)
    }
}

/// The original is the base; forward, the weight and the bias are the active copy's.
impl LinearLayer for ModulesToSaveLayer {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.current().forward(x)
    }
    fn kind(&self) -> &str {
        "modules_to_save"
    }
    fn base(&self) -> Option<&Linear> {
        Some(&self.original)
    }
    fn base_mut(&mut self) -> Option<&mut Linear> {
        Some(&mut self.original)
    }
    fn dense_weight(&self) -> candle_core::Result<Tensor> {
        self.current().dense_weight()
    }
    fn bias(&self) -> Option<&Tensor> {
        self.current().bias()
    }
    /// The original and every copy, as peft counts them.
    fn num_parameters(&self) -> usize {
        self.original.num_parameters()
            + self
                .copies
                .values()
                .map(Linear::num_parameters)
                .sum::<usize>()
    }
    fn storage_bytes(&self) -> usize {
        self.original.storage_bytes()
            + self
                .copies
                .values()
                .map(Linear::storage_bytes)
                .sum::<usize>()
    }
}

/// One adapter's trainable copy of one module.
#[derive(Debug, Clone)]
pub struct ModuleCopy {
    /// Module path (`lm_head`, `model.embed_tokens`, `model.layers.0.input_layernorm`).
    pub path: String,
    /// The copy's weight.
    pub weight: Var,
    /// The copy's bias (linear layers with a bias).
    pub bias: Option<Var>,
}
