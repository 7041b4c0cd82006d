//! Adapters in PEFT's format: a directory with `adapter_config.json` and
//! `adapter_model.safetensors`, as `PeftModel.save_pretrained` writes it and
//! `PeftModel.from_pretrained` reads it (peft `utils/save_and_load.py`).
//!
//! Tensor names are the module path under `base_model.model.` with the adapter name stripped:
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` (`[r, in]`) and
//! `....lora_B.weight` (`[out, r]`), and for DoRA `....lora_magnitude_vector` (`[out]`), float32.
//! Fields of `adapter_config.json` that tunelab does
//! not use are kept in [`AdapterConfig::extra`] and written back.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::DType;
use serde_json::{json, Map, Value};

use super::config::{InitLoraWeights, LoraBias, LoraConfig, TargetModules};
use super::lora::LoraLayer;
use super::model::{get_peft_model_seeded, PeftModel};
use crate::model::llama::Llama;
use crate::model::load::{save_safetensors, write_atomic};
use crate::{Error, Result};

/// The config file's name.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The weights file's name.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// `adapter_config.json`: the LoRA config and every other field as found.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// The fields tunelab uses.
    pub lora: LoraConfig,
    /// `base_model_name_or_path`, if given.
    pub base_model_name_or_path: Option<String>,
    /// Every other field, kept so that saving again loses nothing.
    pub extra: Map<String, Value>,
}

fn field_err(path: &Path, field: &str, msg: impl std::fmt::Display) -> Error {
    Error::format(path, format!("field `{field}`: {msg}"))
}

impl AdapterConfig {
    /// Parses peft's JSON. Errors name the file and the field; a `peft_type` other than LORA
    /// is an error.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let mut obj: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err(Error::format(path, "expected a JSON object")),
            Err(e) => return Err(Error::format(path, format!("not valid JSON: {e}"))),
        };
        let mut take = |k: &str| obj.remove(k).filter(|v| !v.is_null());
        if let Some(t) = take("peft_type") {
            if t != "LORA" {
                return Err(field_err(
                    path,
                    "peft_type",
                    format!("{t} is not supported; expected \"LORA\""),
                ));
            }
        }
        let mut lora = LoraConfig::default();
        let uint = |v: Value, f: &str| {
            v.as_u64().map(|x| x as usize).ok_or_else(|| {
                field_err(
                    path,
                    f,
                    format!("expected a non-negative integer, found {v}"),
                )
            })
        };
        let num = |v: Value, f: &str| {
            v.as_f64()
                .ok_or_else(|| field_err(path, f, format!("expected a number, found {v}")))
        };
        if let Some(v) = take("r") {
            lora.r = uint(v, "r")?;
        }
        if let Some(v) = take("lora_alpha") {
            lora.lora_alpha = num(v, "lora_alpha")?;
        }
        if let Some(v) = take("lora_dropout") {
            lora.lora_dropout = num(v, "lora_dropout")?;
        }
        if let Some(v) = take("use_rslora") {
            lora.use_rslora = v
                .as_bool()
                .ok_or_else(|| field_err(path, "use_rslora", "expected true or false"))?;
        }
        if let Some(v) = take("use_dora") {
            lora.use_dora = v
                .as_bool()
                .ok_or_else(|| field_err(path, "use_dora", "expected true or false"))?;
        }
        if let Some(v) = take("target_modules") {
            lora.target_modules = match v {
                Value::String(s) => TargetModules::Pattern(s),
                Value::Array(a) => TargetModules::Names(
                    a.into_iter()
                        .map(|x| {
                            x.as_str().map(str::to_string).ok_or_else(|| {
                                field_err(
                                    path,
                                    "target_modules",
                                    format!("expected names, found {x}"),
                                )
                            })
                        })
                        .collect::<Result<_>>()?,
                ),
                other => {
                    return Err(field_err(
                        path,
                        "target_modules",
                        format!("expected a list or a string, found {other}"),
                    ))
                }
            };
        }
        if let Some(v) = take("bias") {
            lora.bias = serde_json::from_value::<LoraBias>(v.clone()).map_err(|_| {
                field_err(
                    path,
                    "bias",
                    format!("expected \"none\", \"all\" or \"lora_only\", found {v}"),
                )
            })?;
        }
        if let Some(v) = take("init_lora_weights") {
            lora.init_lora_weights = match &v {
                Value::Bool(true) => InitLoraWeights::Default,
                Value::Bool(false) => InitLoraWeights::Random,
                Value::String(s) if s == "gaussian" => InitLoraWeights::Gaussian,
                _ => {
                    return Err(field_err(
                        path,
                        "init_lora_weights",
                        format!("{v} is not supported (true, false, \"gaussian\")"),
                    ))
                }
            };
        }
        if let Some(v) = take("layers_to_transform") {
            lora.layers_to_transform = Some(match v {
                Value::Number(_) => vec![uint(v, "layers_to_transform")?],
                Value::Array(a) => a
                    .into_iter()
                    .map(|x| uint(x, "layers_to_transform"))
                    .collect::<Result<_>>()?,
                other => {
                    return Err(field_err(
                        path,
                        "layers_to_transform",
                        format!("expected a layer index or a list, found {other}"),
                    ))
                }
            });
        }
        if let Some(v) = take("modules_to_save") {
            lora.modules_to_save = Some(serde_json::from_value(v.clone()).map_err(|_| {
                field_err(
                    path,
                    "modules_to_save",
                    format!("expected a list of names, found {v}"),
                )
            })?);
        }
        for (field, slot) in [("rank_pattern", true), ("alpha_pattern", false)] {
            if let Some(v) = take(field) {
                let m = v
                    .as_object()
                    .ok_or_else(|| field_err(path, field, "expected an object"))?;
                for (k, x) in m {
                    if slot {
                        lora.rank_pattern.insert(k.clone(), uint(x.clone(), field)?);
                    } else {
                        lora.alpha_pattern.insert(k.clone(), num(x.clone(), field)?);
                    }
                }
            }
        }
        let base = take("base_model_name_or_path").and_then(|v| v.as_str().map(str::to_string));
        Ok(Self {
            lora,
            base_model_name_or_path: base,
            extra: obj,
        })
    }

    /// peft's JSON: the LoRA fields, `peft_type` and `task_type`, and every kept field.
    pub fn to_json(&self) -> Value {
        let l = &self.lora;
        let mut obj = self.extra.clone();
        let target = match &l.target_modules {
            TargetModules::Names(n) => json!(n),
            TargetModules::Pattern(p) => json!(p),
        };
        let init = match l.init_lora_weights {
            InitLoraWeights::Default => json!(true),
            InitLoraWeights::Random => json!(false),
            InitLoraWeights::Gaussian => json!("gaussian"),
        };
        for (k, v) in [
            ("peft_type", json!("LORA")),
            (
                "task_type",
                obj.get("task_type").cloned().unwrap_or(json!("CAUSAL_LM")),
            ),
            ("r", json!(l.r)),
            ("lora_alpha", json!(l.lora_alpha)),
            ("lora_dropout", json!(l.lora_dropout)),
            ("target_modules", target),
            (
                "bias",
                serde_json::to_value(l.bias).expect("an enum of names"),
            ),
            ("use_rslora", json!(l.use_rslora)),
            ("use_dora", json!(l.use_dora)),
            ("init_lora_weights", init),
            ("layers_to_transform", json!(l.layers_to_transform)),
            ("modules_to_save", json!(l.modules_to_save)),
            ("rank_pattern", json!(l.rank_pattern)),
            ("alpha_pattern", json!(l.alpha_pattern)),
            (
                "base_model_name_or_path",
                json!(self.base_model_name_or_path),
            ),
            (
                "fan_in_fan_out",
                obj.get("fan_in_fan_out").cloned().unwrap_or(json!(false)),
            ),
            (
                "inference_mode",
                obj.get("inference_mode").cloned().unwrap_or(json!(true)),
            ),
        ] {
            obj.insert(k.to_string(), v);
        }
        Value::Object(obj)
    }
}

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
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
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
    save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))?;
    let text = serde_json::to_string_pretty(&config.to_json()).expect("JSON values serialize");
    let path = dir.join(ADAPTER_CONFIG);
    write_atomic(&path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e))
    })
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
    Ok(peft)
}

/// Adds the adapter in `dir` to `peft` under `name` (`PeftModel.load_adapter`).
pub fn load_adapter_into(peft: &mut PeftModel, dir: impl AsRef<Path>, name: &str) -> Result<()> {
    let dir = dir.as_ref();
    let config = read_adapter_config(dir)?;
    peft.add_adapter_seeded(name, &config.lora, 0)?;
    fill_adapter(peft, dir, name)
}

fn fill_adapter(peft: &mut PeftModel, dir: &Path, name: &str) -> Result<()> {
    let file = dir.join(ADAPTER_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&file, peft.model.device())
        .map_err(|e| Error::format(&file, format!("cannot read safetensors: {e}")))?;
    let layers: Vec<(String, &LoraLayer)> = peft.lora_layers();
    for (path, l) in &layers {
        let a = l.adapter(name)?;
        let mut slots = vec![
            (tensor_name(path, "lora_A"), &a.lora_a),
            (tensor_name(path, "lora_B"), &a.lora_b),
        ];
        if let Some(m) = &a.magnitude {
            slots.push((magnitude_name(path), m));
        }
        for (key, var) in slots {
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
