//! `modules_to_save` inside [`PeftModel`]: making each adapter's copies (embeddings and norms
//! are tensors of the model, swapped in place; linear modules become a
//! [`ModulesToSaveLayer`]), switching them with the active adapter, counting them as peft
//! does, and unloading them (see `modules_to_save.rs` for the rules, tied embeddings included).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor, Var};

use super::config::{suffix_match, LoraConfig};
use super::lora::LoraLayer;
use super::model::PeftModel;
use super::modules_to_save::{ModuleCopy, ModulesToSaveLayer};
use crate::model::linear::{Dense, Linear};
use crate::model::llama::{Llama, WeightSource};
use crate::{Error, Result};

/// The copies of every adapter and the originals of the tensor modules (embeddings, norms).
#[derive(Debug, Default, Clone)]
pub(super) struct SavedModules {
    originals: BTreeMap<String, Tensor>,
    pub(super) copies: BTreeMap<String, Vec<ModuleCopy>>,
}

/// The modules held as plain tensors by the model: embeddings and norms, with their paths.
fn tensor_modules(model: &mut Llama) -> Vec<(String, &mut Tensor)> {
    let mut out = vec![("model.embed_tokens".to_string(), &mut model.embed_tokens)];
    for (i, b) in model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        out.push((
            format!("{p}.input_layernorm"),
            &mut b.input_layernorm.weight,
        ));
        out.push((
            format!("{p}.post_attention_layernorm"),
            &mut b.post_attention_layernorm.weight,
        ));
    }
    out.push(("model.norm".to_string(), &mut model.norm.weight));
    out
}

fn tensor_module<'a>(model: &'a mut Llama, path: &str) -> Option<&'a mut Tensor> {
    tensor_modules(model)
        .into_iter()
        .find(|(p, _)| p == path)
        .map(|(_, t)| t)
}

const EMBED: &str = "model.embed_tokens";

impl PeftModel {
    /// Paths that have a `modules_to_save` copy for some adapter.
    pub(super) fn modules_to_save_paths(&self) -> BTreeSet<String> {
        let s = &self.saved;
        s.copies
            .values()
            .flatten()
            .map(|c| c.path.clone())
            .collect()
    }

    /// The copies of the adapter `name`.
    pub fn modules_to_save(&self, name: &str) -> &[ModuleCopy] {
        self.saved.copies.get(name).map_or(&[], Vec::as_slice)
    }

    /// Makes the copies `config.modules_to_save` asks for, for the adapter `name`; rewrites the
    /// list as peft does under `ensure_weight_tying`.
    pub(super) fn add_modules_to_save(
        &mut self,
        name: &str,
        config: &mut LoraConfig,
    ) -> Result<()> {
        let Some(keys) = config.modules_to_save.clone().filter(|k| !k.is_empty()) else {
            return Ok(());
        };
        let tensor_paths: Vec<String> = tensor_modules(&mut self.model)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let candidates: Vec<String> = tensor_paths
            .iter()
            .cloned()
            .chain(self.model.linear_paths())
            .collect();
        let mut paths = BTreeSet::new();
        for key in &keys {
            let found: Vec<&String> = candidates
                .iter()
                .filter(|p| p.ends_with(key.as_str()))
                .collect();
            if found.is_empty() {
                return Err(Error::config(
                    "modules_to_save",
                    format!(
                        "`{key}` matches no module tunelab can train in full (embed_tokens, \
                         the norms, lm_head and the other linear layers)"
                    ),
                ));
            }
            paths.extend(found.into_iter().cloned());
        }
        let tied = self.model.config().tie_word_embeddings;
        let touches_tie = paths.contains("lm_head") || paths.contains(EMBED);
        let share = tied && touches_tie && config.ensure_weight_tying;
        if config.ensure_weight_tying && !(tied && touches_tie) {
            self.warnings.push(format!(
                "adapter `{name}`: ensure_weight_tying is set but {}",
                if tied {
                    "neither lm_head nor embed_tokens is in modules_to_save"
                } else {
                    "the model has no tied embeddings"
                }
            ));
        } else if tied && touches_tie && !share {
            self.warnings.push(format!(
                "adapter `{name}`: the model has tie_word_embeddings = true and {} is in \
                 modules_to_save: its trained copy unties lm_head from embed_tokens (peft \
                 warns the same); set ensure_weight_tying = true to train one shared copy",
                if paths.contains("lm_head") {
                    "lm_head"
                } else {
                    "embed_tokens"
                }
            ));
        }
        if share {
            // peft: the copy lives on embed_tokens, lm_head uses it too.
            paths.insert(EMBED.to_string());
            paths.insert("lm_head".to_string());
            let mut list: Vec<String> = keys
                .into_iter()
                .filter(|k| !suffix_match("lm_head", k))
                .collect();
            if !list.iter().any(|k| k == EMBED) {
                list.push(EMBED.to_string());
            }
            config.modules_to_save = Some(list);
        }
        // Check every linear before changing anything.
        for path in paths.iter().filter(|p| !tensor_paths.contains(p)) {
            let layer = self.model.linear(path)?;
            if config.targets(path)? || layer.get::<LoraLayer>().is_some() {
                return Err(Error::config(
                    "modules_to_save",
                    format!("`{path}` has a LoRA adapter; a module is either adapted or trained in full"),
                ));
            }
            let inner = match layer.get::<ModulesToSaveLayer>() {
                Some(m) => m.original(),
                None => layer,
            };
            if inner.is_quantized() || inner.base().is_some() {
                return Err(Error::config(
                    "modules_to_save",
                    format!(
                        "`{path}` is a {} layer, which cannot be trained in full (a quantized \
                         weight is integer codes, slide 25); leave it out or keep it dense \
                         (llm_int8_skip_modules)",
                        inner.kind()
                    ),
                ));
            }
        }
        let mut copies = Vec::new();
        let mut shared: Option<Var> = None;
        for path in &paths {
            if let Some(slot) = tensor_module(&mut self.model, path) {
                let original = self
                    .saved
                    .originals
                    .entry(path.clone())
                    .or_insert_with(|| slot.clone());
                let var = Var::from_tensor(original)?;
                if share && path == EMBED {
                    shared = Some(var.clone());
                }
                self.register_var(
                    format!("base_model.model.{path}.modules_to_save.{name}.weight"),
                    &var,
                    Some(name),
                );
                copies.push(ModuleCopy {
                    path: path.clone(),
                    weight: var,
                    bias: None,
                });
            }
        }
        for path in paths.iter().filter(|p| !tensor_paths.contains(p)) {
            let mut copy = None;
            self.model.map_linear(path, |old| {
                let mut m = match old.into_layer::<ModulesToSaveLayer>() {
                    Ok(m) => m,
                    Err(old) => ModulesToSaveLayer {
                        original: old,
                        copies: BTreeMap::new(),
                        active: None,
                    },
                };
                let weight = match (&shared, path.as_str()) {
                    (Some(v), "lm_head") => v.clone(),
                    _ => Var::from_tensor(&m.original.dense_weight()?)?,
                };
                let bias = m.original.bias().map(Var::from_tensor).transpose()?;
                let dense = Dense::new(
                    weight.as_tensor().clone(),
                    bias.as_ref().map(|b| b.as_tensor().clone()),
                )?;
                m.copies.insert(name.to_string(), Linear::new(dense));
                copy = Some(ModuleCopy {
                    path: path.clone(),
                    weight,
                    bias,
                });
                Ok(Linear::new(m))
            })?;
            let copy = copy.expect("map_linear ran the closure");
            if !(share && path == "lm_head") {
                let p = format!("base_model.model.{path}.modules_to_save.{name}");
                self.register_var(format!("{p}.weight"), &copy.weight, Some(name));
                if let Some(b) = &copy.bias {
                    self.register_var(format!("{p}.bias"), b, Some(name));
                }
            }
            copies.push(copy);
        }
        self.saved.copies.insert(name.to_string(), copies);
        Ok(())
    }

    /// Puts the copies of `active` in place (the originals where it has none, or for `None`).
    pub(super) fn apply_modules_to_save(&mut self, active: Option<&str>) {
        let chosen: HashMap<String, Tensor> = active
            .and_then(|a| self.saved.copies.get(a))
            .into_iter()
            .flatten()
            .map(|c| (c.path.clone(), c.weight.as_tensor().clone()))
            .collect();
        let originals = self.saved.originals.clone();
        for (path, slot) in tensor_modules(&mut self.model) {
            if let Some(orig) = originals.get(&path) {
                *slot = chosen.get(&path).unwrap_or(orig).clone();
            }
        }
        for (_, l) in self.model.linears_mut() {
            if let Some(m) = l.get_mut::<ModulesToSaveLayer>() {
                m.active = active
                    .filter(|a| m.copies.contains_key(*a))
                    .map(str::to_string);
            }
        }
    }

    /// Removes the copies of the adapter `name`; modules left without copies get their original.
    pub(super) fn delete_modules_to_save(&mut self, name: &str) -> Result<()> {
        self.saved.copies.remove(name);
        let still = self.modules_to_save_paths();
        self.saved.originals.retain(|p, _| still.contains(p));
        for path in self.model.linear_paths() {
            self.model
                .map_linear(&path, |l| match l.into_layer::<ModulesToSaveLayer>() {
                    Ok(mut m) => {
                        m.copies.remove(name);
                        Ok(if m.copies.is_empty() {
                            m.original
                        } else {
                            Linear::new(m)
                        })
                    }
                    Err(l) => Ok(l),
                })?;
        }
        Ok(())
    }

    /// Parameters of the copies the model does not count itself: those of the tensor
    /// modules, and of `lm_head` when it counts as tied (shared copies once).
    pub(super) fn modules_to_save_extra_params(&self) -> usize {
        let tied = self.model.config().tie_word_embeddings;
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        for c in self.saved.copies.values().flatten() {
            let tensor_module = self.saved.originals.contains_key(&c.path);
            if (tensor_module || (tied && c.path == "lm_head"))
                && seen.insert(c.weight.as_tensor().id())
            {
                n += c.weight.elem_count() + c.bias.as_ref().map_or(0, |b| b.elem_count());
            }
        }
        n
    }

    /// The active adapter's copies in place of the modules, as plain tensors (unload). Returns
    /// whether a tied model's lm_head and embed_tokens now differ (then [`untie`] it, as peft's
    /// `merge_and_unload` sets `tie_word_embeddings = false`).
    pub(super) fn unload_modules_to_save(&mut self) -> Result<bool> {
        let active = self.active.clone();
        let copy_id = |path: &str| -> Option<candle_core::TensorId> {
            self.saved
                .copies
                .get(&active)?
                .iter()
                .find(|c| c.path == path)
                .map(|c| c.weight.as_tensor().id())
        };
        let diverged =
            self.model.config().tie_word_embeddings && copy_id("lm_head") != copy_id(EMBED);
        self.apply_modules_to_save(Some(&active));
        for (_, slot) in tensor_modules(&mut self.model) {
            *slot = slot.detach();
        }
        let embed = self.model.embed_tokens.clone();
        for path in self.model.linear_paths() {
            let tied_head =
                path == "lm_head" && !diverged && self.model.config().tie_word_embeddings;
            self.model
                .map_linear(&path, |l| match l.into_layer::<ModulesToSaveLayer>() {
                    Ok(_) if tied_head => Ok(Linear::new(Dense::new(embed.clone(), None)?)),
                    Ok(mut m) => {
                        let current = match m.active.as_ref().and_then(|a| m.copies.remove(a)) {
                            Some(c) => c,
                            None => return Ok(m.original),
                        };
                        let w = current.dense_weight()?.detach();
                        Ok(Linear::new(Dense::new(
                            w,
                            current.bias().map(Tensor::detach),
                        )?))
                    }
                    Err(l) => Ok(l),
                })?;
        }
        Ok(diverged)
    }
}

/// Names → tensors, zeros for any other name (the linears are swapped in afterwards).
struct Rebuild(HashMap<String, Tensor>);

impl WeightSource for Rebuild {
    fn get(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        match self.0.remove(name) {
            Some(t) => Ok(t),
            None => Ok(Tensor::zeros(shape, dtype, device)?),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// The same model with `tie_word_embeddings = false` (its own lm_head kept).
pub(super) fn untie(mut model: Llama) -> Result<Llama> {
    let mut cfg = model.config().clone();
    cfg.tie_word_embeddings = false;
    let mut map = HashMap::new();
    for (path, t) in tensor_modules(&mut model) {
        map.insert(format!("{path}.weight"), t.clone());
    }
    let mut new = Llama::load(&cfg, &mut Rebuild(map), model.dtype(), model.device())?;
    for path in model.linear_paths() {
        let (out, inp) = {
            let l = model.linear(&path)?;
            (l.out_features(), l.in_features())
        };
        let hole = Linear::new(Dense::new(
            Tensor::zeros((out, inp), DType::F32, &Device::Cpu)?,
            None,
        )?);
        let layer = std::mem::replace(model.linear_mut(&path)?, hole);
        new.replace_linear(&path, layer)?;
    }
    new.set_block_adapter(model.block_adapter().cloned());
    Ok(new)
}
