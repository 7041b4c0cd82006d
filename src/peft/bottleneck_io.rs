//! Bottleneck adapters on disk, in PEFT's directory layout: `adapter_config.json` and
//! `adapter_model.safetensors` in one directory, as `save_pretrained` writes every method.
//!
//! peft has no bottleneck adapters, so there is no peft file to match; the layout is peft's and
//! the content is AdapterHub's: the config carries `peft_type = "BOTTLENECK"` beside the
//! [`BottleneckConfig`] fields (`reduction_factor`, `non_linearity`, `after_attention`,
//! `after_mlp`, and AdapterHub's own names for the places, `mh_adapter` / `output_adapter`),
//! and the tensors are f32 under AdapterHub's parameter paths
//! (`model.layers.{i}.attention_adapters.adapters.default.adapter_down.0.weight`, ...).
//! Loading checks every tensor's presence and shape and refuses tensors it does not expect.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{json, Value};

use super::bottleneck::{get_bottleneck_model, BottleneckConfig, BottleneckModel};
use crate::fs::write_bytes_atomic;
use crate::model::llama::Llama;
use crate::model::load::save_safetensors;
use crate::{Error, Result};

const ADAPTER_CONFIG: &str = "adapter_config.json";
const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The `peft_type` of a bottleneck adapter directory.
pub const BOTTLENECK: &str = "BOTTLENECK";

impl BottleneckModel {
    /// `model.save_pretrained(dir)`: the adapters' config and f32 tensors (see the module docs).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let c = self.peft_config();
        let config = json!({
            "peft_type": BOTTLENECK,
            "task_type": "CAUSAL_LM",
            "inference_mode": true,
            "reduction_factor": c.reduction_factor,
            "non_linearity": c.non_linearity,
            "after_attention": c.after_attention,
            "after_mlp": c.after_mlp,
            "mh_adapter": c.after_attention,
            "output_adapter": c.after_mlp,
            "base_model_name_or_path": Value::Null,
        });
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| Error::format(dir.join(ADAPTER_CONFIG), e.to_string()))?;
        let path = dir.join(ADAPTER_CONFIG);
        write_bytes_atomic(&path, text)?;
        let tensors: BTreeMap<String, Tensor> = self
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.as_tensor().detach()))
            .collect();
        save_safetensors(&tensors, &dir.join(ADAPTER_WEIGHTS))
    }

    /// `PeftModel.from_pretrained(base, dir)` for a directory [`BottleneckModel::save_pretrained`]
    /// wrote: the adapters of its config, with its tensors. Errors name the file and the field
    /// or tensor (a missing or misshapen tensor, one the config does not call for).
    pub fn from_pretrained(base: Llama, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let (path, obj) = super::adapter_config::read_peft_config(dir, BOTTLENECK)?;
        let config: BottleneckConfig = serde_json::from_value(Value::Object(obj))
            .map_err(|e| Error::format(&path, format!("not a bottleneck config: {e}")))?;
        config
            .validate(base.config())
            .map_err(|e| Error::format(&path, e.to_string()))?;
        let model = get_bottleneck_model(base, &config, 0)?;
        let file = dir.join(ADAPTER_WEIGHTS);
        let mut tensors = candle_core::safetensors::load(&file, model.base_device())
            .map_err(|e| Error::format(&file, format!("cannot read safetensors: {e}")))?;
        for (key, var) in model.named_vars() {
            let t = tensors
                .remove(&key)
                .ok_or_else(|| Error::format(&file, format!("tensor `{key}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(Error::format(
                    &file,
                    format!(
                        "tensor `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::format(
                &file,
                format!(
                    "tensor `{extra}` is not a parameter of the adapters `adapter_config.json` \
                     describes"
                ),
            ));
        }
        Ok(model)
    }
}
