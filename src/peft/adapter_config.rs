//! `adapter_config.json` (peft's `LoraConfig.to_dict()` as `save_pretrained` writes it): the
//! fields tunelab uses become a [`LoraConfig`], every other field is kept in
//! [`AdapterConfig::extra`] and written back, so loading and saving again loses nothing.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::config::{InitLoraWeights, LoraBias, LoraConfig, TargetModules};
use crate::{Error, Result};

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
        if let Some(v) = take("ensure_weight_tying") {
            lora.ensure_weight_tying = v
                .as_bool()
                .ok_or_else(|| field_err(path, "ensure_weight_tying", "expected true or false"))?;
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
            lora.init_lora_weights = InitLoraWeights::from_json(&v)
                .map_err(|e| field_err(path, "init_lora_weights", e))?;
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
        let init = l.init_lora_weights.to_json();
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
            ("ensure_weight_tying", json!(l.ensure_weight_tying)),
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

/// `dir/adapter_config.json` as a JSON object whose `peft_type` is `peft_type`, with the
/// file's path for later errors. Errors name the file: unreadable, not a JSON object, another
/// `peft_type` (shown).
pub(super) fn read_peft_config(
    dir: &Path,
    peft_type: &str,
) -> Result<(std::path::PathBuf, Map<String, Value>)> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let obj: Map<String, Value> = match serde_json::from_str(&text) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(Error::format(&path, "expected a JSON object")),
        Err(e) => return Err(Error::format(&path, format!("not valid JSON: {e}"))),
    };
    let found = obj
        .get("peft_type")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or(Value::Null);
    if found != json!(peft_type) {
        return Err(Error::format(
            &path,
            format!("field `peft_type`: expected \"{peft_type}\", found {found}"),
        ));
    }
    Ok((path, obj))
}
