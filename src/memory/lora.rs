//! LoRA's parameter count (Hu et al. 2021, *LoRA: Low-Rank Adaptation of Large Language
//! Models*, §4.1: `W₀ + ΔW = W₀ + B·A`, `B ∈ ℝ^{d×r}`, `A ∈ ℝ^{r×k}`) and the memory of a
//! LoRA or QLoRA run on a Llama-shaped model.

use serde::Serialize;

use super::{group_digits, MemoryBudget, Precision};
use crate::error::{Error, Result};
use crate::model::config::Config;

/// The projections of a Llama block that LoRA can target, as peft names them.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

fn positive(field: &str, v: u64) -> Result<u64> {
    if v == 0 {
        return Err(Error::config(
            field,
            format!("`{field}` should be a positive integer but is 0"),
        ));
    }
    Ok(v)
}

/// Trainable parameters of a LoRA adapter on a `d × k` weight: `r·(d + k)` (B is d×r, A is r×k).
///
/// Slide 33: r = 16, d = k = 4096 gives 131,072, against 16,777,216 for the full matrix
/// ([`dense_params`]).
pub fn lora_params(d: u64, k: u64, r: u64) -> Result<u64> {
    Ok(positive("r", r)? * (positive("d", d)? + positive("k", k)?))
}

/// Parameters of a full `d × k` weight: `d·k`.
pub fn dense_params(d: u64, k: u64) -> u64 {
    d * k
}

/// `(in_features, out_features)` of a block projection of `config`; GQA makes k/v narrower.
fn widths(config: &Config, module: &str) -> (u64, u64) {
    let h = config.hidden_size as u64;
    let i = config.intermediate_size as u64;
    let q = (config.num_attention_heads * config.head_dim) as u64;
    let kv = (config.num_key_value_heads * config.head_dim) as u64;
    match module {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, i),
        _ => (i, h), // down_proj
    }
}

/// The adapters on one kind of projection, over all layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoraModuleRow {
    /// Projection name (`q_proj`, ...).
    pub name: String,
    /// Input width k.
    pub in_features: u64,
    /// Output width d.
    pub out_features: u64,
    /// How many (one per layer).
    pub count: u64,
    /// Trainable parameters of all of them: `count · r·(in + out)`.
    pub trainable: u64,
}

/// Memory of a LoRA (16-bit base) or QLoRA (4-bit base) run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraEstimate {
    /// LoRA rank r.
    pub r: u64,
    /// The targeted projections, in block order.
    pub target_modules: Vec<String>,
    /// One row per targeted projection.
    pub modules: Vec<LoraModuleRow>,
    /// Trainable (adapter) parameters.
    pub trainable_params: u64,
    /// Parameters of the frozen base model.
    pub base_params: u64,
    /// Precision of the base model's block projections.
    pub base_precision: Precision,
    /// Weights of the block projections (the layers quantization replaces).
    pub base_linear_params: u64,
    /// Their bytes at `base_precision`.
    pub base_linear_bytes: u64,
    /// Embeddings, norms, biases and an untied `lm_head`.
    pub base_other_params: u64,
    /// Their bytes: at `base_precision` for a float base, at 2 bytes (16-bit) for a quantized
    /// one, as transformers + bitsandbytes leave them unquantized.
    pub base_other_bytes: u64,
    /// Adapter weights, 2 B each (16-bit).
    pub adapter_weights: u64,
    /// Adapter gradients, 2 B each.
    pub adapter_gradients: u64,
    /// Adam for the adapters, 12 B each (fp32 master copy, m, v).
    pub adapter_optimizer: u64,
    /// Activations, if given.
    pub activations: Option<u64>,
}

/// peft's `print_trainable_parameters` line:
/// `trainable params: 1,234 || all params: 5,678 || trainable%: 21.7324`.
pub fn trainable_line(trainable: u64, all: u64) -> String {
    format!(
        "trainable params: {} || all params: {} || trainable%: {:.4}",
        group_digits(trainable),
        group_digits(all),
        100.0 * trainable as f64 / all.max(1) as f64
    )
}

/// LoRA/QLoRA memory for a Llama-shaped `config`:
///
/// - trainable = Σ over targeted projections and layers of `r·(in + out)` ([`lora_params`]),
///   with the widths from the config (`q_proj` h→heads·head_dim, `k_proj`/`v_proj`
///   h→kv_heads·head_dim, `o_proj` back to h, `gate_proj`/`up_proj` h→intermediate,
///   `down_proj` back); `target_modules` may be `["all-linear"]` (every block projection, not
///   `lm_head`, as in peft);
/// - memory = base weights at `base_precision` (fp16/bf16 for LoRA, NF4 for QLoRA; embeddings,
///   norms and `lm_head` stay 16-bit when the base is quantized) + trainable × (2 weight +
///   2 gradient + 12 Adam with fp32 master weights) bytes + activations if given
///   ([`LoraEstimate::with_activations`]).
///
/// Errors name the field: `r` = 0, an empty or unknown `target_modules` entry.
pub fn lora_estimate<S: AsRef<str>>(
    config: &Config,
    r: u64,
    target_modules: &[S],
    base_precision: Precision,
) -> Result<LoraEstimate> {
    positive("r", r)?;
    if target_modules.is_empty() {
        return Err(Error::config(
            "target_modules",
            "should name at least one module but is empty",
        ));
    }
    let mut chosen = [false; LORA_TARGETS.len()];
    for name in target_modules {
        let name = name.as_ref();
        if name == "all-linear" {
            chosen = [true; LORA_TARGETS.len()];
            continue;
        }
        let idx = LORA_TARGETS
            .iter()
            .position(|t| *t == name)
            .ok_or_else(|| {
                Error::config(
                    "target_modules",
                    format!(
                        "unknown module `{name}`; a Llama block has {} (or use `all-linear`)",
                        LORA_TARGETS.join(", ")
                    ),
                )
            })?;
        chosen[idx] = true;
    }
    let layers = config.num_hidden_layers as u64;
    let modules: Vec<LoraModuleRow> = LORA_TARGETS
        .iter()
        .zip(chosen)
        .filter(|(_, c)| *c)
        .map(|(name, _)| {
            let (k, d) = widths(config, name);
            Ok(LoraModuleRow {
                name: name.to_string(),
                in_features: k,
                out_features: d,
                count: layers,
                trainable: layers * lora_params(d, k, r)?,
            })
        })
        .collect::<Result<_>>()?;
    let trainable: u64 = modules.iter().map(|m| m.trainable).sum();
    let base_params = config.num_parameters() as u64;
    let base_linear_params: u64 = LORA_TARGETS
        .iter()
        .map(|m| {
            let (k, d) = widths(config, m);
            layers * dense_params(d, k)
        })
        .sum();
    let base_other_params = base_params - base_linear_params;
    let other_precision = if base_precision.is_quantized() {
        Precision::Bf16
    } else {
        base_precision
    };
    Ok(LoraEstimate {
        r,
        target_modules: modules.iter().map(|m| m.name.clone()).collect(),
        modules,
        trainable_params: trainable,
        base_params,
        base_precision,
        base_linear_params,
        base_linear_bytes: super::weights_bytes(base_linear_params, base_precision),
        base_other_params,
        base_other_bytes: super::weights_bytes(base_other_params, other_precision),
        adapter_weights: 2 * trainable,
        adapter_gradients: 2 * trainable,
        adapter_optimizer: 12 * trainable,
        activations: None,
    })
}

impl LoraEstimate {
    /// The same estimate with activation bytes added.
    pub fn with_activations(mut self, bytes: u64) -> Self {
        self.activations = Some(bytes);
        self
    }

    /// Base plus adapter parameters (peft's "all params").
    pub fn all_params(&self) -> u64 {
        self.base_params + self.trainable_params
    }

    /// 100 × trainable / all params.
    pub fn trainable_percent(&self) -> f64 {
        100.0 * self.trainable_params as f64 / self.all_params() as f64
    }

    /// peft's `print_trainable_parameters` line.
    pub fn trainable_summary(&self) -> String {
        trainable_line(self.trainable_params, self.all_params())
    }

    /// All bytes, activations included when given.
    pub fn total(&self) -> u64 {
        self.budget().total()
    }

    /// The itemised budget.
    pub fn budget(&self) -> MemoryBudget {
        let t = group_digits(self.trainable_params);
        let prec = self.base_precision;
        let other = if prec.is_quantized() {
            16.0
        } else {
            prec.bits_per_param()
        };
        let b = MemoryBudget::new(format!(
            "LoRA r={} on {} over a {} base",
            self.r,
            self.target_modules.join(","),
            prec.name()
        ))
        .with_line(
            format!("base projections ({})", prec.name()),
            self.base_linear_bytes,
            format!(
                "{} bit × {} / 8",
                prec.bits_per_param(),
                group_digits(self.base_linear_params)
            ),
        )
        .with_line(
            "base embeddings, norms, lm_head",
            self.base_other_bytes,
            format!("{other} bit × {} / 8", group_digits(self.base_other_params)),
        )
        .with_line(
            "adapter weights (16-bit)",
            self.adapter_weights,
            format!("2 B × {t}"),
        )
        .with_line(
            "adapter gradients (16-bit)",
            self.adapter_gradients,
            format!("2 B × {t}"),
        )
        .with_line(
            "adapter Adam (fp32 master, m, v)",
            self.adapter_optimizer,
            format!("12 B × {t}"),
        );
        match self.activations {
            Some(a) => b.with_line("activations", a, "given"),
            None => b,
        }
    }
}
