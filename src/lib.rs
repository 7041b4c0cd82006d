//! tunelab: the practical side of fine-tuning large language models, on candle.
//!
//! Load a Llama-family model (SmolLM2, Llama 2/3, Mistral, TinyLlama, Qwen2) from a Hugging Face
//! directory, the hub or a GGUF file; tokenize and chat with its own template; generate. Every
//! projection is a [`model::linear::Linear`] addressed by its HF module path, the seam through which
//! quantization and PEFT replace layers.
#![warn(missing_docs)]

pub mod data;
pub mod device;
mod downcast;
pub mod error;
pub mod fs;
pub mod memory;
pub mod model;
pub mod peft;
pub mod quant;
#[cfg(test)]
mod test_util;
pub mod train;
pub mod viz;

pub use error::{Error, Result};

pub use model::chat_template::Message;
pub use model::config::Config;
pub use model::generate::{Generation, GenerationConfig};
pub use model::linear::{Dense, Linear, LinearLayer};
pub use model::llama::Llama;
pub use model::pretrained::{LoadOptions, Pretrained};
pub use model::tokenizer::Tokenizer;
pub use peft::PeftMethod;
