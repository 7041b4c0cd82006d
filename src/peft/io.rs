//! Adapters in PEFT's format: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes it and
//! `PeftModel.from_pretrained` reads it (peft `utils/save_and_load.py`).
//!
//! Tensor names are the module path under `base_model.model.` with the adapter name stripped:
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (`[r, in]`) and
//! `....lora_B.weight` (`[out, r]`), and for DoRA `....lora_magnitude_vector` (`[out]`), float32;
//! trained biases as `....q_proj.base_layer.bias` (an adapted layer) or `....k_proj.bias`, and
//! `modules_to_save` copies as `base_model.model.lm_head.weight`, in the model's dtype.
//! Fields of `adapter_config.json` that tunelab does not use are kept in
//! [`AdapterConfig::extra`] and written back.
//!
//! Loading puts the adapters in evaluation mode (peft's `is_trainable=False`): call
//! `train()` (the trainer does) before training a loaded adapter.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use serde_json::Map;

pub use super::adapter_config::AdapterConfig;
use super::bias::bias_key;
use super::lora::LoraLayer;
use super::model::{get_peft_model_seeded, PeftModel};
use crate::fs::write_bytes_atomic;
use crate::model::llama::Llama;
use crate::model::load::save_safetensors;
use crate::{Error, Result};

/// The config file's name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The weights file's name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

fn tensor_name(path: &str, which: &str) -> String {
    format!("base_model.model.{path}.{which}.weight")
}

fn magnitude_name(path: &str) -> String {
    format!("base_model.model.{path}.lora_magnitude_vector")
}

/// Saves the adapter `adapter` of `peft` into `dir` (created if needed) in PEFT's format.
pub fn save_adapter(peft: &PeftModel, dir: impl AsRef<Path>, adapter: &str) -> Result<()> {
    let dir = dir.as_ref();
    let config = AdapterConfig {
        lora: peft.peft_config(adapter)?.clone(),
        base_model_name_or_path: None,
        extra: Map::new(),
    };
    save_adapter_with(peft, dir, adapter, &config)
}

/// Like [`save_adapter`] with a given [`AdapterConfig`] (e.g. one loaded, to keep its fields).
pub fn save_adapter_with(
    peft: &PeftModel,
    dir: &Path,
    adapter: &str,
    config: &AdapterConfig,
) -> Result<()> {
    write_adapter(dir, &adapter_tensors(peft, adapter)?, config)
}

/// The tensors of the adapter `adapter` under the names peft saves them with: A, B (DoRA's m)
/// in f32, trained biases and `modules_to_save` copies in their dtype.
pub fn adapter_tensors(peft: &PeftModel, adapter: &str) -> Result<BTreeMap<String, Tensor>> {
    let mut tensors = BTreeMap::new();
    for (path, l) in peft.lora_layers() {
        if let Some(a) = l.adapters().get(adapter) {
            tensors.insert(
                tensor_name(&path, "lora_A"),
                a.lora_a.as_tensor().to_dtype(DType::F32)?,
            );
            tensors.insert(
                tensor_name(&path, "lora_B"),
                a.lora_b.as_tensor().to_dtype(DType::F32)?,
            );
            if let Some(m) = &a.magnitude {
                // peft saves DoRA's magnitude without the `.weight` suffix.
                tensors.insert(magnitude_name(&path), m.as_tensor().to_dtype(DType::F32)?);
            }
        }
    }
    if tensors.is_empty() {
        return Err(Error::Input(format!(
            "no layer has an adapter named `{adapter}`"
        )));
    }
    for (key, var) in extra_slots(peft, adapter)? {
        tensors.insert(key, var.as_tensor().detach());
    }
    Ok(tensors)
}

/// The biases and module copies of `adapter`, by their keys in the adapter file.
fn extra_slots(peft: &PeftModel, adapter: &str) -> Result<Vec<(String, Var)>> {
    let mut out = Vec::new();
    for (path, b) in peft.trained_biases() {
        if b.adapters.iter().any(|a| a == adapter) {
            let adapted = peft.model.linear(path)?.is::<LoraLayer>();
            out.push((bias_key(path, adapted), b.var.clone()));
        }
    }
    for c in peft.modules_to_save(adapter) {
        out.push((
            format!("base_model.model.{}.weight", c.path),
            c.weight.clone(),
        ));
        if let Some(b) = &c.bias {
            out.push((format!("base_model.model.{}.bias", c.path), b.clone()));
        }
    }
    Ok(out)
}

/// Writes `tensors` and `config` into `dir` (created if needed) in PEFT's format.
pub fn write_adapter(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    config: &AdapterConfig,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(tensors, &dir.join(ADAPTER_WEIGHTS))?;
    let text = serde_json::to_string_pretty(&config.to_json()).expect("JSON values serialize");
    let path = dir.join(ADAPTER_CONFIG);
    write_bytes_atomic(&path, text)
}

/// Reads `dir/adapter_config.json`.
pub fn read_adapter_config(dir: impl AsRef<Path>) -> Result<AdapterConfig> {
    let path = dir.as_ref().join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    AdapterConfig::from_json(&text, &path)
}

/// `PeftModel.from_pretrained(model, dir)`: wraps `model` as the adapter's config says and
/// loads its A and B. Every tensor's shape is checked against the model (the first mismatch
/// is named), every targeted layer must have its tensors, and a tensor for a layer the config
/// does not target is an error.
pub fn load_adapter(model: Llama, dir: impl AsRef<Path>) -> Result<PeftModel> {
    let dir = dir.as_ref();
    let config = read_adapter_config(dir)?;
    let mut peft = get_peft_model_seeded(model, &config.lora, 0)?;
    fill_adapter(&mut peft, dir, "default")?;
    peft.model.eval();
    Ok(peft)
}

/// Adds the adapter in `dir` to `peft` under `name` (`PeftModel.load_adapter`).
pub fn load_adapter_into(peft: &mut PeftModel, dir: impl AsRef<Path>, name: &str) -> Result<()> {
    let dir = dir.as_ref();
    let config = read_adapter_config(dir)?;
    peft.add_adapter_seeded(name, &config.lora, 0)?;
    if let Err(e) = fill_adapter(peft, dir, name) {
        // All-or-nothing: the half-loaded adapter goes again.
        peft.delete_adapter(name)?;
        return Err(e);
    }
    peft.model.eval();
    Ok(())
}

fn fill_adapter(peft: &mut PeftModel, dir: &Path, name: &str) -> Result<()> {
    let file = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&file, peft.model.device())
        .map_err(|e| Error::format(&file, format!("cannot read safetensors: {e}")))?;
    let mut slots: Vec<(String, String, Var)> = Vec::new(); // (key, module path, var)
    for (path, l) in peft.lora_layers() {
        let Some(a) = l.adapters().get(name) else {
            continue;
        };
        slots.push((tensor_name(&path, "lora_A"), path.clone(), a.lora_a.clone()));
        slots.push((tensor_name(&path, "lora_B"), path.clone(), a.lora_b.clone()));
        if let Some(m) = &a.magnitude {
            slots.push((magnitude_name(&path), path.clone(), m.clone()));
        }
    }
    for (key, var) in extra_slots(peft, name)? {
        let path = key.trim_start_matches("base_model.model.").to_string();
        slots.push((key, path, var));
    }
    for (key, path, var) in slots {
        let t = tensors.remove(&key).ok_or_else(|| {
            Error::format(
                &file,
                format!("tensor `{key}` is missing; the config targets `{path}`"),
            )
        })?;
        if t.dims() != var.dims() {
            return Err(Error::format(
                &file,
                format!(
                    "tensor `{key}` has shape {:?} but the model's `{path}` needs {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    if let Some(key) = tensors.keys().next() {
        return Err(Error::format(
            &file,
            format!(
                "tensor `{key}` matches no adapted layer of the model ({} left over)",
                tensors.len()
            ),
        ));
    }
    Ok(())
}
