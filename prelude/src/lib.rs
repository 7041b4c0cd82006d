//! `use tunelab_prelude::*;` — everything a notebook cell needs: tunelab's public API, candle's
//! `Tensor`, `Device` and `DType`, candle itself (re-exported so that evcxr can name the types
//! of values a cell binds), and rich displays for tunelab values and tensors.
//!
//! Displays: every value with an [`Html`] impl renders as HTML in evcxr through
//! [`EvcxrDisplay::evcxr_display`]; the HTML itself comes from a pure `to_html()`. Figures
//! ([`Svg`], [`Histogram`], [`StackedBars`]) come from the library's `to_svg()` (plotters) and
//! show inline as HTML holding the `<svg>`.

#![warn(missing_docs)]

pub mod display;
pub mod figure;
pub mod html;
pub mod peft;
pub mod quant;
pub mod tensor;
pub mod train;

pub use candle_core;
pub use candle_core::{DType, Device, Tensor};
pub use candle_nn;
pub use display::{EvcxrDisplay, Html};
pub use tensor::{tensor_stats, TensorStats};
pub use train::{TokenCell, TokenView};
pub use tunelab;
pub use tunelab::model::generate::{FinishReason, Generation, GenerationConfig};
pub use tunelab::model::summary::ModelSummary;
pub use tunelab::viz::{budget_chart, histogram_svg, line_chart, Bar, Histogram, StackedBars, Svg};
pub use tunelab::{
    Config, Dense, Linear, LinearLayer, Llama, LoadOptions, Message, PeftMethod, Pretrained,
    Tokenizer,
};
