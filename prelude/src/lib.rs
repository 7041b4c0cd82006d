//! `use tunelab_prelude::*;` — everything a notebook cell needs: tunelab's public API, candle's
//! `Tensor`, `Device` and `DType`, and candle itself (re-exported so that evcxr can name the
//! types of values a cell binds).
//!
//! The rich displays (`evcxr_display`) for tunelab values come with the notebook chapter;
//! for now this crate only re-exports.

pub use candle_core;
pub use candle_core::{DType, Device, Tensor};
pub use tunelab;
pub use tunelab::model::generate::{FinishReason, Generation, GenerationConfig};
pub use tunelab::model::summary::ModelSummary;
pub use tunelab::{
    Config, Dense, Linear, LinearLayer, Llama, LoadOptions, Message, Pretrained, Tokenizer,
};
