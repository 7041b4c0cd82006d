//! Slide 52: the chapter's summary — what full fine-tuning, LoRA and QLoRA need for one model,
//! side by side, by the same three kinds of bytes: weights, gradients and optimizer states.

use serde::Serialize;

use super::{
    full_finetune_slide5, gb, group_digits, lora_estimate, mixed_precision_adam, AdamAccounting,
    MemoryBudget, Precision, QuantConstants,
};
use crate::error::Result;
use crate::model::config::Config;

/// One method of slide 52, its bytes split the same way for every method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slide52Row {
    /// The method ("QLoRA r=16, NF4 + double quant").
    pub method: String,
    /// Parameters the optimizer updates.
    pub trainable_params: u64,
    /// Every weight in memory: the base model (in its precision) and, for LoRA, the adapters;
    /// for full fine-tuning the weights the forward pass reads.
    pub weights: u64,
    /// Gradients of the trainable parameters.
    pub gradients: u64,
    /// Optimizer states: Adam's m and v, and fp32 master weights where the method keeps them.
    pub optimizer: u64,
}

impl Slide52Row {
    /// Weights + gradients + optimizer states (no activations).
    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer
    }
}

/// Slide 52 for one model: full fine-tuning two ways, LoRA on a 16-bit base, QLoRA on an NF4
/// base with double quantization. Activations are left out: they depend on batch and sequence
/// length, not on the method (see [`activation_estimate`](super::activation_estimate)).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Slide52 {
    /// Parameters of the base model.
    pub params: u64,
    /// LoRA rank.
    pub r: u64,
    /// LoRA target modules.
    pub target_modules: Vec<String>,
    /// The rows, heaviest first.
    pub rows: Vec<Slide52Row>,
}

/// Builds slide 52 for `config` with LoRA rank `r` on `target_modules` (`["all-linear"]`, as
/// QLoRA trains):
///
/// | method | weights | gradients | optimizer |
/// |---|---|---|---|
/// | full, slide 5 | 4·P | 8·P (gradients + one more copy) | 8·P (m, v) |
/// | full, mixed-precision Adam (ZeRO) | 2·P | 2·P | 12·P (master, m, v) |
/// | LoRA, bf16 base | base bf16 + 2·T | 2·T | 12·T |
/// | QLoRA, NF4 + double quant | base NF4 (+16-bit embeddings, norms, lm_head) + 2·T | 2·T | 12·T |
///
/// with P the model's parameters and T the adapters' ([`lora_estimate`]).
pub fn slide52<S: AsRef<str>>(config: &Config, r: u64, target_modules: &[S]) -> Result<Slide52> {
    let p = config.num_parameters() as u64;
    let full = full_finetune_slide5(p);
    let mixed = mixed_precision_adam(p, AdamAccounting::ZeroPaper);
    let mut rows = vec![
        Slide52Row {
            method: "full fine-tuning (slide 5, fp32)".into(),
            trainable_params: p,
            weights: full.weights,
            gradients: full.gradients,
            optimizer: full.adam_states,
        },
        Slide52Row {
            method: "full fine-tuning (mixed-precision Adam)".into(),
            trainable_params: p,
            weights: mixed.weights_16bit,
            gradients: mixed.gradients_16bit + mixed.gradients_fp32,
            optimizer: mixed.master_weights + mixed.adam_m + mixed.adam_v,
        },
    ];
    let mut targets = Vec::new();
    for (name, precision) in [
        (format!("LoRA r={r} (bf16 base)"), Precision::Bf16),
        (
            format!("QLoRA r={r} (NF4 + double quant base)"),
            Precision::Nf4(QuantConstants::DoubleQuant),
        ),
    ] {
        let est = lora_estimate(config, r, target_modules, precision)?;
        targets = est.target_modules.clone();
        rows.push(Slide52Row {
            method: name,
            trainable_params: est.trainable_params,
            weights: est.base_linear_bytes + est.base_other_bytes + est.adapter_weights,
            gradients: est.adapter_gradients,
            optimizer: est.adapter_optimizer,
        });
    }
    Ok(Slide52 {
        params: p,
        r,
        target_modules: targets,
        rows,
    })
}

impl Slide52 {
    /// Each row as a [`MemoryBudget`] with the lines `weights`, `gradients`, `optimizer states`
    /// (for a side-by-side chart: [`budget_chart`](crate::viz::budget_chart)).
    pub fn budgets(&self) -> Vec<MemoryBudget> {
        self.rows
            .iter()
            .map(|r| {
                MemoryBudget::new(r.method.clone())
                    .with_line("weights", r.weights, "")
                    .with_line("gradients", r.gradients, "")
                    .with_line("optimizer states", r.optimizer, "")
            })
            .collect()
    }

    /// The table as plain text, in GB (10⁹ bytes).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "Slide 52: {} parameters, LoRA r={} on {}\n{:<42} {:>15} {:>9} {:>9} {:>9} {:>9}\n",
            group_digits(self.params),
            self.r,
            self.target_modules.join(","),
            "method",
            "trainable",
            "weights",
            "grads",
            "optim",
            "total GB"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<42} {:>15} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                r.method,
                group_digits(r.trainable_params),
                gb(r.weights),
                gb(r.gradients),
                gb(r.optimizer),
                gb(r.total())
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_8b_summary() {
        let cfg = Config::preset("llama-3-8b").unwrap();
        let s = slide52(&cfg, 16, &["all-linear"]).unwrap();
        let p = 8_030_261_248u64;
        assert_eq!(s.params, p);
        // Full fine-tuning: slide 5's 20 B/param and ZeRO's 16 B/param.
        assert_eq!(s.rows[0].total(), 20 * p);
        assert_eq!(s.rows[1].total(), 16 * p);
        // LoRA r=16 on all seven projections of 32 layers:
        // r·(in+out) per projection = 16·(4096+4096)·2 (q, o) + 16·(4096+1024)·2 (k, v)
        // + 16·(4096+14336)·3 (gate, up, down) = 1,310,720 per layer, × 32 layers.
        let per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3);
        assert_eq!(s.rows[2].trainable_params, 32 * per_layer);
        assert_eq!(s.rows[2].trainable_params, 41_943_040);
        let t = s.rows[2].trainable_params;
        assert_eq!(s.rows[2].weights, 2 * p + 2 * t);
        assert_eq!((s.rows[2].gradients, s.rows[2].optimizer), (2 * t, 12 * t));
        // QLoRA: the same adapters; the base's projections at NF4 + double quant.
        assert_eq!(s.rows[3].trainable_params, t);
        assert!(s.rows[3].total() < s.rows[2].total() / 2);
        assert!(gb(s.rows[3].total()) > 5.0 && gb(s.rows[3].total()) < 7.0);
        let budgets = s.budgets();
        assert_eq!(budgets.len(), 4);
        assert_eq!(budgets[3].total(), s.rows[3].total());
        assert!(s.to_text().contains("QLoRA r=16"));
        println!("{}", s.to_text());
    }
}
