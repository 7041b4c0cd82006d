//! Parameter-efficient fine-tuning (slides 30–49): LoRA on any linear layer of the model, dense
//! or quantized (QLoRA), through the model's `Linear` seam.
//!
//! | file | what |
//! |---|---|
//! | `config.rs` | [`LoraConfig`] with peft's fields and defaults, target matching |
//! | `lora.rs` | [`LoraLayer`]: `h = W·x + (α/r)·B·A·x`, merge / unmerge / verify |
//! | `io.rs` | adapters in PEFT's directory format (`adapter_config.json`, `adapter_model.safetensors`) |
//! | `model.rs` | [`get_peft_model`], [`PeftModel`]: adapters by name, trainable `VarMap`, `print_trainable_parameters`, `merge_and_unload` |

pub mod config;
pub mod io;
pub mod lora;
pub mod model;

pub use config::{InitLoraWeights, LoraBias, LoraConfig, TargetModules, ALL_LINEAR};
pub use io::{load_adapter, load_adapter_into, save_adapter, AdapterConfig};
pub use lora::{LoraAdapter, LoraLayer};
pub use model::{get_peft_model, get_peft_model_seeded, PeftModel, TrainableParameters};
