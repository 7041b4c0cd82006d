//! `get_peft_model`: wrap a model's targeted linear layers in LoRA and keep the trainable
//! tensors in one `VarMap` — the adapters and nothing else.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::config::{InitLoraWeights, LoraConfig};
use super::lora::{row_norm, LoraAdapter, LoraLayer};
use crate::model::linear::Linear;
use crate::model::llama::Llama;
use crate::peft::dropout::DropoutRng;
use crate::{Error, Result};

/// A model with LoRA adapters (peft's `PeftModel`).
pub struct PeftModel {
    /// The model; targeted projections are [`LoraLayer`]s.
    pub model: Llama,
    varmap: VarMap,
    configs: BTreeMap<String, LoraConfig>,
    active: String,
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
    };
    peft.add_adapter_seeded("default", config, seed)?;
    Ok(peft)
}

/// A Kaiming-uniform A (a = √5: U(−1/√in, 1/√in)), or N(0, 1/r²), or uniform; B zeros unless
/// `Random`.
fn init_adapter(
    cfg: &LoraConfig,
    r: usize,
    alpha: f64,
    (out, inp): (usize, usize),
    rng: &mut rand::rngs::StdRng,
    device: &Device,
    base_weight: Option<&Tensor>,
) -> Result<LoraAdapter> {
    let uniform = |n: usize, bound: f64, rng: &mut rand::rngs::StdRng| -> Vec<f32> {
        (0..n)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect()
    };
    let a = match cfg.init_lora_weights {
        InitLoraWeights::Default | InitLoraWeights::Random => {
            uniform(r * inp, 1.0 / (inp as f64).sqrt(), rng)
        }
        InitLoraWeights::Gaussian => {
            // Box–Muller, σ = 1/r.
            (0..r * inp)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() / r as f64)
                        as f32
                })
                .collect()
        }
    };
    let b = match cfg.init_lora_weights {
        InitLoraWeights::Random => uniform(out * r, 1.0 / (r as f64).sqrt(), rng),
        _ => vec![0f32; out * r],
    };
    let mut adapter = LoraAdapter {
        r,
        alpha,
        scaling: cfg.scaling(r, alpha),
        dropout: cfg.lora_dropout,
        lora_a: Var::from_tensor(&Tensor::from_vec(a, (r, inp), device)?)?,
        lora_b: Var::from_tensor(&Tensor::from_vec(b, (out, r), device)?)?,
        magnitude: None,
    };
    if let Some(w) = base_weight {
        // DoRA: m starts at ‖W + ΔW‖ per row, so the adapted layer starts equal to W + ΔW.
        let w = (w.to_dtype(DType::F32)? + adapter.delta_weight()?)?;
        adapter.magnitude = Some(Var::from_tensor(&row_norm(&w)?)?);
    }
    Ok(adapter)
}

impl PeftModel {
    /// Adds the adapter `name` for `config` (peft's `add_adapter`) and makes it active.
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig) -> Result<()> {
        self.add_adapter_seeded(name, config, rand::rng().random())
    }

    /// [`PeftModel::add_adapter`] with a seed.
    pub fn add_adapter_seeded(&mut self, name: &str, config: &LoraConfig, seed: u64) -> Result<()> {
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
        let device = self.model.device().clone();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for path in &paths {
            let layer = self.model.linear(path)?;
            let (r, alpha) = config.rank_and_alpha(path);
            let base_weight = if config.use_dora {
                Some(layer.dense_weight()?)
            } else {
                None
            };
            let adapter = init_adapter(
                config,
                r,
                alpha,
                (layer.out_features(), layer.in_features()),
                &mut rng,
                &device,
                base_weight.as_ref(),
            )?;
            {
                let mut data = self.varmap.data().lock().expect("varmap lock");
                data.insert(
                    format!("base_model.model.{path}.lora_A.{name}.weight"),
                    adapter.lora_a.clone(),
                );
                data.insert(
                    format!("base_model.model.{path}.lora_B.{name}.weight"),
                    adapter.lora_b.clone(),
                );
                if let Some(m) = &adapter.magnitude {
                    data.insert(
                        format!("base_model.model.{path}.lora_magnitude_vector.{name}.weight"),
                        m.clone(),
                    );
                }
            }
            if let Some(lora) = self.model.linear_mut(path)?.downcast_mut::<LoraLayer>() {
                lora.add_adapter(name, adapter)?;
            } else {
                let mut wrapped: Option<Result<()>> = None;
                self.model.map_linear(path, |old| {
                    let mut l = LoraLayer::new(old);
                    wrapped = Some(l.add_adapter(name, adapter));
                    Ok(Linear::new(l))
                })?;
                wrapped.expect("map_linear ran the closure")?;
            }
        }
        self.configs.insert(name.to_string(), config.clone());
        self.set_adapter(name)?;
        Ok(())
    }

    fn lora_layers_mut(&mut self) -> Result<Vec<&mut LoraLayer>> {
        Ok(self
            .model
            .linears_mut()
            .into_iter()
            .filter_map(|(_, l)| l.downcast_mut::<LoraLayer>())
            .collect())
    }

    /// The LoRA layers with their paths.
    pub fn lora_layers(&self) -> Vec<(String, &LoraLayer)> {
        self.model
            .linears()
            .into_iter()
            .filter_map(|(p, l)| l.downcast_ref::<LoraLayer>().map(|l| (p, l)))
            .collect()
    }

    /// The LoRA layer at `path`.
    pub fn lora_layer(&self, path: &str) -> Result<&LoraLayer> {
        self.model
            .linear(path)?
            .downcast_ref::<LoraLayer>()
            .ok_or_else(|| Error::Input(format!("`{path}` has no LoRA adapter")))
    }

    /// The trainable tensors: A and B of every adapter, named as peft names its parameters
    /// (`base_model.model.<path>.lora_A.<adapter>.weight`).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable `Var`s of the active adapter (for an optimizer).
    pub fn trainable_vars(&self) -> Vec<Var> {
        let tag = format!(".{}.weight", self.active);
        let data = self.varmap.data().lock().expect("varmap lock");
        data.iter()
            .filter(|(k, _)| k.ends_with(&tag))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The config of the adapter `name`.
    pub fn peft_config(&self, name: &str) -> Result<&LoraConfig> {
        self.configs
            .get(name)
            .ok_or_else(|| Error::Input(format!("no adapter named `{name}`")))
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
        Ok(())
    }

    /// Runs `f` with every adapter off (peft's `with model.disable_adapter():`), then turns
    /// them back on, also when `f` fails.
    pub fn with_adapters_disabled<T>(&mut self, f: impl FnOnce(&Llama) -> T) -> Result<T> {
        for l in self.lora_layers_mut()? {
            l.set_disabled(true);
        }
        let out = f(&self.model);
        for l in self.lora_layers_mut()? {
            l.set_disabled(false);
        }
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
        let tag = format!(".{name}.weight");
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .retain(|k, _| !k.ends_with(&tag));
        self.configs.remove(name);
        if self.active == name {
            self.active = self.configs.keys().next().cloned().unwrap_or_default();
        }
        Ok(())
    }

    /// Dropout on (training) or off (evaluation) in every adapter.
    pub fn set_training(&mut self, training: bool) -> Result<()> {
        for l in self.lora_layers_mut()? {
            l.set_training(training);
        }
        Ok(())
    }

    /// Makes every LoRA layer draw its dropout masks from `rng` (keyed by module path), so
    /// training is reproducible from a seed and resumable: see [`DropoutRng`].
    pub fn set_dropout_rng(&mut self, rng: &DropoutRng) {
        for (path, l) in self.model.linears_mut() {
            if let Some(l) = l.downcast_mut::<LoraLayer>() {
                l.set_dropout_rng(rng.clone(), &path);
            }
        }
    }

    /// peft's `get_nb_trainable_parameters`.
    pub fn trainable_parameters(&self) -> TrainableParameters {
        let trainable = self
            .lora_layers()
            .iter()
            .filter_map(|(_, l)| l.adapters().get(&self.active))
            .map(LoraAdapter::num_parameters)
            .sum();
        TrainableParameters {
            trainable,
            all: self.model.num_parameters(),
        }
    }

    /// peft's `print_trainable_parameters` line (returned, not printed).
    pub fn print_trainable_parameters(&self) -> String {
        self.trainable_parameters().to_string()
    }

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

    /// Merges the active adapter and returns the plain model (`merge_and_unload`).
    pub fn merge_and_unload(mut self, safe_merge: bool) -> Result<Llama> {
        self.merge(safe_merge)?;
        self.unload()
    }

    /// The plain model without merging (`unload`): every LoRA layer gives back its base.
    pub fn unload(mut self) -> Result<Llama> {
        let paths: Vec<String> = self.lora_layers().into_iter().map(|(p, _)| p).collect();
        for path in paths {
            self.model
                .map_linear(&path, |l| match l.downcast::<LoraLayer>() {
                    Ok(lora) => Ok(lora.unload()),
                    Err(l) => Ok(l),
                })?;
        }
        Ok(self.model)
    }
}
