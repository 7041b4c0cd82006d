//! The transformer and everything needed to load, tokenize and generate with it.

pub(crate) mod autograd;
pub mod chat_template;
pub mod config;
pub mod frozen;
pub(crate) mod fused;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod init;
pub mod linear;
pub mod llama;
pub mod load;
pub mod moe;
pub mod perplexity;
pub mod pretrained;
pub mod quantized;
pub mod summary;
pub mod token_stream;
pub mod tokenizer;
