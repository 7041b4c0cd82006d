//! Parameter-efficient fine-tuning (slides 30–49): LoRA on any linear layer of the model, dense
//! or quantized (QLoRA), through the model's `Linear` seam.
//!
//! | file | what |
//! |---|---|
//! | `analysis.rs` | slides 31–35: parameter count, singular values and effective rank of ΔW = s·B·A, LoRA's gradients |
//! | `config.rs` | [`LoraConfig`] with peft's fields and defaults, target matching |
//! | `dropout.rs` | [`DropoutRng`]: dropout masks reproducible from (seed, step, layer), for resumable training |
//! | `lora.rs` | [`LoraLayer`]: `h = W·x + (α/r)·B·A·x`, merge / unmerge / verify |
//! | `io.rs` | adapters in PEFT's directory format (`adapter_config.json`, `adapter_model.safetensors`) |
//! | `model.rs` | [`get_peft_model`], [`PeftModel`]: adapters by name, trainable `VarMap`, `print_trainable_parameters`, `merge_and_unload` |

pub mod analysis;
pub mod config;
pub mod dropout;
pub mod io;
pub mod lora;
pub mod model;

pub use analysis::{
    delta_singular_values, effective_rank, energy_captured, entropy_effective_rank, lora_gradients,
    lora_param_count, singular_values_of, LoraParamCount,
};
pub use config::{InitLoraWeights, LoraBias, LoraConfig, TargetModules, ALL_LINEAR};
pub use dropout::DropoutRng;
pub use io::{load_adapter, load_adapter_into, save_adapter, AdapterConfig};
pub use lora::{LoraAdapter, LoraLayer};
pub use model::{get_peft_model, get_peft_model_seeded, PeftModel, TrainableParameters};
pub mod bottleneck;
pub mod prompt;
pub use bottleneck::{
    get_bottleneck_model, Bottleneck, BottleneckAdapters, BottleneckConfig, BottleneckModel,
    NonLinearity,
};
pub use prompt::{
    get_prefix_tuning_model, get_prompt_tuning_model, PrefixTuningConfig, PrefixTuningModel,
    PromptTuningConfig, PromptTuningInit, PromptTuningModel,
};
