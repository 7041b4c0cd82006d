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
//! | `method.rs` | [`PeftMethod`]: the one interface of every method (trainable `Var`s, counts, forward, generate, mode, save) |
//! | `lora_method.rs` | [`PeftMethod`] for [`PeftModel`], `from_pretrained` / `save_pretrained` |
//! | `model.rs` | [`get_peft_model`], [`PeftModel`]: adapters by name, trainable `VarMap`, `print_trainable_parameters`, `merge_and_unload` |
//! | `adapter_config.rs` | `adapter_config.json` ↔ [`LoraConfig`], unknown fields kept |
//! | `init.rs` | `init_lora_weights`: peft's default, Gaussian, random, PiSSA |
//! | `merge.rs` | merge / unmerge / verify of one layer, merging a quantized base and quantizing it again |
//! | `unload.rs` | `merge_and_unload`, `merge_and_requantize`, `unload` of the whole model |
//! | `bias.rs` | `bias = "all" \| "lora_only"`: trainable base biases |
//! | `modules_to_save.rs` | [`ModulesToSaveLayer`]: trainable copies of whole modules (`lm_head`, `embed_tokens`, norms), tied embeddings |
//! | `saved_modules.rs` | `modules_to_save` wired into `PeftModel`: copies per adapter, counts, unload, untying |
//! | `pissa.rs` | PiSSA initialisation (exact and randomized SVD), conversion to plain LoRA |
//! | `kbit.rs` | [`prepare_model_for_kbit_training`] |

mod adapter_config;
pub mod analysis;
pub mod bias;
pub mod config;
pub mod dropout;
mod init;
pub mod io;
pub mod kbit;
pub mod lora;
mod lora_delta;
mod lora_eval;
mod lora_method;
pub mod merge;
pub mod method;
pub mod model;
pub mod modules_to_save;
pub mod pissa;
mod saved_modules;
mod unload;

pub use analysis::{
    delta_singular_values, effective_rank, energy_captured, entropy_effective_rank, lora_gradients,
    lora_param_count, singular_values_of, LoraParamCount,
};
pub use bias::TrainedBias;
pub use config::{InitLoraWeights, LoraBias, LoraConfig, TargetModules, ALL_LINEAR};
pub use dropout::DropoutRng;
pub use io::{load_adapter, load_adapter_into, save_adapter, AdapterConfig};
pub use kbit::{prepare_model_for_kbit_training, KbitReport};
pub use lora::{LoraAdapter, LoraLayer};
pub use merge::{LayerRounding, RequantizeReport};
pub use method::{AsCausalLm, PeftMethod};
pub use model::{get_peft_model, get_peft_model_seeded, PeftModel, TrainableParameters};
pub use modules_to_save::{ModuleCopy, ModulesToSaveLayer};
pub use pissa::save_adapter_as_lora;
pub mod bottleneck;
mod bottleneck_io;
pub mod prompt;
pub use bottleneck::{
    get_bottleneck_model, Bottleneck, BottleneckAdapters, BottleneckConfig, BottleneckModel,
    NonLinearity,
};
pub use prompt::{
    get_prefix_tuning_model, get_prompt_tuning_model, PrefixTuningConfig, PrefixTuningModel,
    PromptTuningConfig, PromptTuningInit, PromptTuningModel,
};
