//! `get_peft_model`: wrap a model's targeted linear layers in LoRA and keep the trainable
//! tensors in one `VarMap`: the adapters, and with `bias` / `modules_to_save` the biases and
//! module copies peft would train (`bias.rs`, `modules_to_save.rs`). Merging and unloading
//! the whole model: `unload.rs`; the [`PeftMethod`](super::PeftMethod) interface: `lora_method.rs`.
//!
//! Adding an adapter is all-or-nothing: if any layer fails (a PiSSA base that is not dense, a
//! bias that cannot train, ...), the model and every bookkeeping map are put back as they were
//! before the call.

use std::collections::BTreeMap;

use candle_core::Var;
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::bias::TrainedBias;
use super::config::LoraConfig;
use super::init::{check_layers, init_layer};
use super::lora::{LoraAdapter, LoraLayer};
use super::modules_to_save::ModulesToSaveLayer;
use super::saved_modules::SavedModules;
use crate::model::linear::Linear;
use crate::model::llama::Llama;
use crate::peft::dropout::DropoutRng;
use crate::{Error, Result};

/// A model with LoRA adapters (peft's `PeftModel`).
///
/// The model is not a public field: its LoRA layers, trained biases and module copies are
/// tied to this struct's `VarMap` and maps, and replacing a layer behind its back would break
/// them. Read it with [`PeftMethod::base_model`]; change it through the methods here
/// ([`PeftModel::quantize_base`] quantizes it under the adapters).
///
/// [`PeftMethod::base_model`]: super::PeftMethod::base_model
pub struct PeftModel {
    /// The model; targeted projections are [`LoraLayer`]s.
    pub(super) model: Llama,
    varmap: VarMap,
    configs: BTreeMap<String, LoraConfig>,
    pub(super) active: String,
    /// `VarMap` keys of each adapter's own `Var`s (A, B, m, module copies).
    owned: BTreeMap<String, Vec<String>>,
    /// Trained base biases by module path (shared by the adapters that ask for them).
    pub(super) biases: BTreeMap<String, TrainedBias>,
    pub(super) saved: SavedModules,
    pub(super) warnings: Vec<String>,
}

/// Everything a [`PeftModel`] holds, for putting it back when adding an adapter fails.
struct Snapshot {
    model: Llama,
    vars: std::collections::HashMap<String, Var>,
    configs: BTreeMap<String, LoraConfig>,
    active: String,
    owned: BTreeMap<String, Vec<String>>,
    biases: BTreeMap<String, TrainedBias>,
    saved: SavedModules,
    warnings: Vec<String>,
}

/// peft's `get_nb_trainable_parameters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TrainableParameters {
    /// Parameters of the active adapter(s).
    pub trainable: usize,
    /// Every parameter: the base (a 4-bit weight counted as its logical out·in, as peft
    /// does) and all adapters.
    pub all: usize,
}

impl TrainableParameters {
    /// 100 · trainable / all.
    pub fn percent(&self) -> f64 {
        100.0 * self.trainable as f64 / self.all.max(1) as f64
    }
}

impl std::fmt::Display for TrainableParameters {
    /// `trainable params: 1,234 || all params: 5,678 || trainable%: 21.7324`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::memory::trainable_line(
            self.trainable as u64,
            self.all as u64,
        ))
    }
}

/// Wraps every linear layer of `model` that `config` targets in a LoRA layer with the adapter
/// `"default"`. Errors: an invalid config (naming the field), or a target that matches no
/// layer (naming the pattern and the layers there are).
pub fn get_peft_model(model: Llama, config: &LoraConfig) -> Result<PeftModel> {
    get_peft_model_seeded(model, config, rand::rng().random())
}

/// [`get_peft_model`] with a seed for the adapters' initialisation.
pub fn get_peft_model_seeded(model: Llama, config: &LoraConfig, seed: u64) -> Result<PeftModel> {
    let mut peft = PeftModel {
        model,
        varmap: VarMap::new(),
        configs: BTreeMap::new(),
        active: "default".into(),
        owned: BTreeMap::new(),
        biases: BTreeMap::new(),
        saved: SavedModules::default(),
        warnings: Vec::new(),
    };
    peft.add_adapter_seeded("default", config, seed)?;
    Ok(peft)
}

impl PeftModel {
    /// Adds the adapter `name` for `config` (peft's `add_adapter`) and makes it active.
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig) -> Result<()> {
        self.add_adapter_seeded(name, config, rand::rng().random())
    }

    /// [`PeftModel::add_adapter`] with a seed. All-or-nothing: on an error the model is as it
    /// was before the call.
    pub fn add_adapter_seeded(&mut self, name: &str, config: &LoraConfig, seed: u64) -> Result<()> {
        let before = self.snapshot();
        let out = self.add_adapter_unchecked(name, config, seed);
        if out.is_err() {
            self.restore(before);
        }
        out
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            model: self.model.clone(),
            vars: self.varmap.data().lock().expect("varmap lock").clone(),
            configs: self.configs.clone(),
            active: self.active.clone(),
            owned: self.owned.clone(),
            biases: self.biases.clone(),
            saved: self.saved.clone(),
            warnings: self.warnings.clone(),
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.model = s.model;
        *self.varmap.data().lock().expect("varmap lock") = s.vars;
        self.configs = s.configs;
        self.active = s.active;
        self.owned = s.owned;
        self.biases = s.biases;
        self.saved = s.saved;
        self.warnings = s.warnings;
    }

    fn add_adapter_unchecked(&mut self, name: &str, config: &LoraConfig, seed: u64) -> Result<()> {
        config.validate()?;
        if self.configs.contains_key(name) {
            return Err(Error::Input(format!(
                "an adapter named `{name}` already exists"
            )));
        }
        let paths: Vec<String> = self
            .model
            .linear_paths()
            .into_iter()
            .map(|p| config.targets(&p).map(|t| (p, t)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|(p, t)| t.then_some(p))
            .collect();
        if paths.is_empty() {
            return Err(Error::config(
                "target_modules",
                format!(
                    "{:?} matched no linear layer{}; the layers are like \
                     `model.layers.0.self_attn.q_proj`, `...mlp.down_proj` and `lm_head`",
                    config.target_modules,
                    match &config.layers_to_transform {
                        Some(l) => format!(" in layers {l:?}"),
                        None => String::new(),
                    }
                ),
            ));
        }
        if let Some(p) = paths.iter().find(|p| {
            self.model
                .linear(p)
                .is_ok_and(|l| l.get::<ModulesToSaveLayer>().is_some())
        }) {
            return Err(Error::config(
                "target_modules",
                format!("`{p}` is in modules_to_save of another adapter; it cannot get LoRA too"),
            ));
        }
        check_layers(&self.model, config, &paths)?;
        let mut config = config.clone();
        self.add_modules_to_save(name, &mut config)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for path in &paths {
            let adapter = init_layer(&mut self.model, path, &config, &mut rng)?;
            let p = format!("base_model.model.{path}");
            self.register_var(
                format!("{p}.lora_A.{name}.weight"),
                &adapter.lora_a,
                Some(name),
            );
            self.register_var(
                format!("{p}.lora_B.{name}.weight"),
                &adapter.lora_b,
                Some(name),
            );
            if let Some(m) = &adapter.magnitude {
                let key = format!("{p}.lora_magnitude_vector.{name}.weight");
                self.register_var(key, m, Some(name));
            }
            self.model.map_linear(path, |old| {
                let mut lora = match old.into_layer::<LoraLayer>() {
                    Ok(lora) => lora,
                    Err(base) => LoraLayer::new(base),
                };
                lora.add_adapter(name, adapter)?;
                Ok(Linear::new(lora))
            })?;
        }
        self.train_biases(name, config.bias)?;
        self.configs.insert(name.to_string(), config);
        self.set_adapter(name)?;
        Ok(())
    }

    /// Puts `var` in the `VarMap` under `key`, owned by the adapter `owner` (`None`: a shared
    /// bias, whose owners [`TrainedBias`] lists).
    pub(super) fn register_var(&mut self, key: String, var: &Var, owner: Option<&str>) {
        if let Some(o) = owner {
            self.owned
                .entry(o.to_string())
                .or_default()
                .push(key.clone());
        }
        let mut data = self.varmap.data().lock().expect("varmap lock");
        data.insert(key, var.clone());
    }

    /// Notes made while adding adapters, as peft's warnings (e.g. a tied embedding untied by
    /// `modules_to_save`).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub(super) fn lora_layers_mut(&mut self) -> Result<Vec<&mut LoraLayer>> {
        Ok(self
            .model
            .linears_mut()
            .into_iter()
            .filter_map(|(_, l)| l.get_mut::<LoraLayer>())
            .collect())
    }

    /// The LoRA layers with their paths.
    pub fn lora_layers(&self) -> Vec<(String, &LoraLayer)> {
        self.model
            .linears()
            .into_iter()
            .filter_map(|(p, l)| l.get::<LoraLayer>().map(|l| (p, l)))
            .collect()
    }

    /// The LoRA layer at `path`.
    pub fn lora_layer(&self, path: &str) -> Result<&LoraLayer> {
        self.model
            .linear(path)?
            .get::<LoraLayer>()
            .ok_or_else(|| Error::Input(format!("`{path}` has no LoRA adapter")))
    }

    /// The trainable tensors of every adapter, named as peft names its parameters
    /// (`base_model.model.<path>.lora_A.<adapter>.weight`), and the trained biases and module
    /// copies.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The active adapter's `Var`s under their `VarMap` names, sorted by name: its A and B
    /// (DoRA's m), its `modules_to_save` copies and the biases its `bias` trains (a tensor
    /// shared by two names, as a tied copy, once).
    pub(super) fn active_named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let own = self.owned.get(&self.active).into_iter().flatten();
        let biases = self
            .biases
            .values()
            .filter(|b| b.adapters.contains(&self.active))
            .map(|b| &b.key);
        let mut named: Vec<(String, Var)> = own
            .chain(biases)
            .filter_map(|k| data.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let mut seen = std::collections::HashSet::new();
        named.retain(|(_, v)| seen.insert(v.as_tensor().id()));
        named
    }

    /// Quantizes the base model under the adapters ([`quantize_model`](crate::quant::quantize_model)
    /// on the model inside): every LoRA layer keeps its adapters and gets a quantized base, so
    /// nothing of ΔW is folded into the codes. All-or-nothing.
    pub fn quantize_base(
        &mut self,
        config: &crate::quant::QuantConfig,
    ) -> Result<crate::quant::QuantizeSummary> {
        crate::quant::quantize_model(&mut self.model, config)
    }

    /// The config of the adapter `name`.
    pub fn peft_config(&self, name: &str) -> Result<&LoraConfig> {
        self.configs.get(name).ok_or_else(|| Error::UnknownAdapter {
            name: name.into(),
            available: self.adapter_names(),
        })
    }

    /// Names of the adapters.
    pub fn adapter_names(&self) -> Vec<String> {
        self.configs.keys().cloned().collect()
    }

    /// The active adapter.
    pub fn active_adapter(&self) -> &str {
        &self.active
    }

    /// Makes `name` the active adapter (peft's `set_adapter`).
    pub fn set_adapter(&mut self, name: &str) -> Result<()> {
        self.peft_config(name)?;
        let names = vec![name.to_string()];
        for l in self.lora_layers_mut()? {
            if l.adapters().contains_key(name) {
                l.set_active(&names)?;
            } else {
                l.set_active(&[])?;
            }
        }
        self.active = name.to_string();
        self.apply_modules_to_save(Some(name));
        Ok(())
    }

    /// Runs `f` with every adapter off (peft's `with model.disable_adapter():`): LoRA off and
    /// the original modules in place of `modules_to_save` copies; trained biases stay (as in
    /// peft). Then turns them back on, also when `f` fails.
    pub fn with_adapters_disabled<T>(&mut self, f: impl FnOnce(&Llama) -> T) -> Result<T> {
        for l in self.lora_layers_mut()? {
            l.set_disabled(true);
        }
        self.apply_modules_to_save(None);
        let out = f(&self.model);
        for l in self.lora_layers_mut()? {
            l.set_disabled(false);
        }
        let active = self.active.clone();
        self.apply_modules_to_save(Some(&active));
        Ok(out)
    }

    /// Removes the adapter `name` from every layer and from the trainable tensors.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        self.peft_config(name)?;
        for l in self.lora_layers_mut()? {
            if l.adapters().contains_key(name) {
                l.delete_adapter(name)?;
            }
        }
        let mut keys = self.owned.remove(name).unwrap_or_default();
        for b in self.biases.values_mut() {
            b.adapters.retain(|a| a != name);
            if b.adapters.is_empty() {
                keys.push(b.key.clone()); // stays trained in the layer, no longer trainable
            }
        }
        self.biases.retain(|_, b| !b.adapters.is_empty());
        {
            let mut data = self.varmap.data().lock().expect("varmap lock");
            for k in &keys {
                data.remove(k);
            }
        }
        self.delete_modules_to_save(name)?;
        self.configs.remove(name);
        if self.active == name {
            match self.configs.keys().next().cloned() {
                Some(next) => self.set_adapter(&next)?,
                None => self.active = String::new(),
            }
        }
        Ok(())
    }

    /// Makes every LoRA layer draw its dropout masks from `rng` (keyed by module path), so
    /// training is reproducible from a seed and resumable: see [`DropoutRng`].
    pub fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        for (path, l) in self.model.linears_mut() {
            if let Some(l) = l.get_mut::<LoraLayer>() {
                l.set_dropout_rng(rng.clone(), &path);
            }
        }
    }

    /// peft's `get_nb_trainable_parameters`: the active adapter's A, B (m), module copies and
    /// trained biases, against every parameter (the base, all adapters, all copies).
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let lora: usize = self
            .lora_layers()
            .iter()
            .filter_map(|(_, l)| l.adapters().get(&self.active))
            .map(LoraAdapter::num_parameters)
            .sum();
        let mut seen = std::collections::HashSet::new();
        let copies: usize = self
            .modules_to_save(&self.active)
            .iter()
            .flat_map(|c| std::iter::once(&c.weight).chain(&c.bias))
            .filter(|v| seen.insert(v.as_tensor().id()))
            .map(|v| v.elem_count())
            .sum();
        let biases: usize = self
            .biases
            .values()
            .filter(|b| b.adapters.contains(&self.active))
            .map(|b| b.var.elem_count())
            .sum();
        TrainableParameters {
            trainable: lora + copies + biases,
            all: self.model.num_parameters() + self.modules_to_save_extra_params(),
        }
    }
}
