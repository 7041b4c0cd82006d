//! Parameter-efficient fine-tuning (slides 30–49): LoRA on any linear layer of the model, dense
//! or quantized (QLoRA), through the model's `Linear` seam.
//!
//! | file | what |
//! |---|---|
//! | `config.rs` | [`LoraConfig`] with peft's fields and defaults, target matching |
//! | `lora.rs` | [`LoraLayer`]: `h = W·x + (α/r)·B·A·x`, merge / unmerge / verify |
//! | `model.rs` | [`get_peft_model`], [`PeftModel`]: adapters by name, trainable `VarMap`, `print_trainable_parameters`, `merge_and_unload` |

pub mod config;
pub mod lora;
pub mod model;

pub use config::{InitLoraWeights, LoraBias, LoraConfig, TargetModules, ALL_LINEAR};
pub use lora::{LoraAdapter, LoraLayer};
pub use model::{get_peft_model, get_peft_model_seeded, PeftModel, TrainableParameters};
