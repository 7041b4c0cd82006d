//! Memory budgets of the seminar: how many bytes the weights, gradients, optimizer states and
//! activations of a model take, for inference, full fine-tuning, LoRA and QLoRA.
//!
//! Every function states its formula and where it comes from; every number is computed from the
//! parameter count, the precision or the model's [`Config`](crate::Config), none is typed in.
//!
//! | file | what | slides |
//! |---|---|---|
//! | `precision.rs` | bytes per parameter ([`Precision`]), [`weights_bytes`], [`inference_estimate`] | 6, 14 |
//! | `training.rs` | full fine-tuning ([`full_finetune_slide5`], [`mixed_precision_adam`]), activations ([`activation_estimate`]) | 5 |
//! | `lora.rs` | [`lora_params`], [`lora_estimate`] (LoRA and QLoRA) | 33 |
//! | `slides.rs` | [`slide6_table`], [`slide14`], [`footprint_of_model`] | 6, 14 |
//! | `summary.rs` | [`slide52`]: full fine-tuning, LoRA and QLoRA side by side | 52 |
//!
//! # Units
//!
//! Bytes are `u64`. The seminar's tables use **GB = 10⁹ bytes** (8B parameters × 4 bytes =
//! 32 GB); [`gb`] converts to that unit and [`gib`] to GiB = 2³⁰ bytes, the unit `nvidia-smi` and
//! most allocators report in (32 GB ≈ 29.8 GiB).
//!
//! Data and formatting are apart: the estimates are plain structs (serde-serializable) that can
//! give a [`MemoryBudget`]; [`MemoryBudget::to_text`] is a plain-text table, and the notebook
//! prelude renders the same struct as HTML.

mod lora;
mod precision;
mod slides;
mod summary;
mod training;

pub use lora::{
    dense_params, lora_estimate, lora_params, trainable_line, LoraEstimate, LoraModuleRow,
    LORA_TARGETS,
};
pub use precision::{
    inference_estimate, weights_bytes, InferenceEstimate, Precision, QuantConstants,
    RULE_OF_THUMB_OVERHEAD,
};
pub use slides::{
    footprint_of_model, quantized_sizes, slide14, slide6_table, slide6_table_true_counts,
    slide6_text, Footprint, QuantizedSizes, Slide6Row,
};
pub use summary::{slide52, Slide52, Slide52Row};
pub use training::{
    activation_estimate, full_finetune_slide5, mixed_precision_adam,
    slide5_vs_mixed_precision_note, ActivationEstimate, ActivationShape, AdamAccounting,
    FullFinetune, MixedPrecisionAdam, Recompute,
};

use serde::Serialize;

/// One gigabyte as the seminar counts it: 10⁹ bytes.
pub const GB: u64 = 1_000_000_000;
/// One gibibyte: 2³⁰ bytes.
pub const GIB: u64 = 1 << 30;

/// `bytes` in GB (10⁹ bytes), the seminar's unit.
pub fn gb(bytes: u64) -> f64 {
    bytes as f64 / GB as f64
}

/// `bytes` in GiB (2³⁰ bytes).
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / GIB as f64
}

/// `1234567` -> `1,234,567`.
pub fn group_digits(n: u64) -> String {
    crate::model::summary::group(n as usize)
}

/// One item of a [`MemoryBudget`]: what it is, its bytes, and the formula that gave them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetLine {
    /// What the bytes hold ("weights (fp32)", "Adam m and v", ...).
    pub name: String,
    /// Bytes.
    pub bytes: u64,
    /// The formula, with its numbers (`4 B × 8,000,000,000`).
    pub formula: String,
}

/// An itemised memory budget: lines of bytes with their formulas, and their total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryBudget {
    /// A title ("Full fine-tuning, slide 5: 8B parameters").
    pub title: String,
    /// The items, in order.
    pub lines: Vec<BudgetLine>,
}

impl MemoryBudget {
    /// An empty budget.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            lines: Vec::new(),
        }
    }

    /// Adds a line.
    pub fn with_line(
        mut self,
        name: impl Into<String>,
        bytes: u64,
        formula: impl Into<String>,
    ) -> Self {
        self.lines.push(BudgetLine {
            name: name.into(),
            bytes,
            formula: formula.into(),
        });
        self
    }

    /// The sum of all lines, in bytes.
    pub fn total(&self) -> u64 {
        self.lines.iter().map(|l| l.bytes).sum()
    }

    /// A plain-text table: item, bytes, GB (10⁹), GiB (2³⁰), formula, and the total.
    pub fn to_text(&self) -> String {
        let width = self
            .lines
            .iter()
            .map(|l| l.name.chars().count())
            .chain([5])
            .max()
            .unwrap_or(5);
        let row = |name: &str, bytes: u64, formula: &str| {
            format!(
                "{name:<width$}  {:>19}  {:>10.3}  {:>10.3}  {formula}\n",
                group_digits(bytes),
                gb(bytes),
                gib(bytes),
            )
        };
        let mut s = format!("{}\n", self.title);
        s.push_str(&format!(
            "{:<width$}  {:>19}  {:>10}  {:>10}  formula\n",
            "item", "bytes", "GB", "GiB"
        ));
        for l in &self.lines {
            s.push_str(&row(&l.name, l.bytes, &l.formula));
        }
        s.push_str(&row("total", self.total(), ""));
        s
    }
}

/// `⌈a / b⌉` for `b > 0`, in u128 so that products of parameter counts never overflow.
fn div_ceil(a: u128, b: u128) -> u64 {
    a.div_ceil(b) as u64
}
