//! What a run records: one [`StepLog`] per optimizer step (loss, learning rate, gradient norm,
//! tokens/s) and one [`EvalLog`] per evaluation, kept across cells and checkpoints, with the
//! loss curve as an SVG figure.

use serde::{Deserialize, Serialize};

use crate::viz::{line_chart, Svg};
use crate::Result;

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The step's number, from 1.
    pub step: usize,
    /// Epochs done after it (fractional).
    pub epoch: f64,
    /// Mean cross-entropy over the step's targets (before the update).
    pub loss: f64,
    /// The auxiliary loss the model added, if any.
    pub aux_loss: Option<f64>,
    /// Learning rate used for the update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Non-padding tokens processed.
    pub tokens: usize,
    /// Targets the loss was averaged over.
    pub targets: usize,
    /// Wall time of the step.
    pub seconds: f64,
}

impl StepLog {
    /// Tokens per second of this step.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    /// The global step it was taken at.
    pub step: usize,
    /// Epochs done.
    pub epoch: f64,
    /// Mean cross-entropy over all eval targets.
    pub eval_loss: f64,
    /// exp(eval_loss).
    pub perplexity: f64,
    /// Eval targets.
    pub targets: usize,
}

/// The log of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Every optimizer step, in order.
    pub steps: Vec<StepLog>,
    /// Every evaluation, in order.
    pub evals: Vec<EvalLog>,
}

impl History {
    /// The losses of all steps.
    pub fn losses(&self) -> Vec<f64> {
        self.steps.iter().map(|s| s.loss).collect()
    }

    /// `(step, loss)` of every step: the points of a loss curve (for `line_chart`).
    pub fn loss_curve(&self) -> Vec<(f64, f64)> {
        self.steps.iter().map(|s| (s.step as f64, s.loss)).collect()
    }

    /// Mean loss of the steps numbered `from..=to`.
    pub fn mean_loss(&self, from: usize, to: usize) -> Option<f64> {
        let v: Vec<f64> = self
            .steps
            .iter()
            .filter(|s| s.step >= from && s.step <= to)
            .map(|s| s.loss)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    /// The loss curve: training loss per step, its running mean over `logging`-step windows,
    /// and the eval loss, against the step.
    pub fn loss_plot(&self) -> Result<Svg> {
        let train = self.loss_curve();
        let window = (self.steps.len() / 20).clamp(1, 50);
        let smooth: Vec<(f64, f64)> = self
            .steps
            .chunks(window)
            .map(|c| {
                let x = c.last().map_or(0.0, |s| s.step as f64);
                (x, c.iter().map(|s| s.loss).sum::<f64>() / c.len() as f64)
            })
            .collect();
        let eval: Vec<(f64, f64)> = self
            .evals
            .iter()
            .map(|e| (e.step as f64, e.eval_loss))
            .collect();
        let mut series: Vec<(&str, &[(f64, f64)])> = vec![("train loss", &train)];
        let smooth_name = format!("mean of {window}");
        if window > 1 {
            series.push((&smooth_name, &smooth));
        }
        if !eval.is_empty() {
            series.push(("eval loss", &eval));
        }
        line_chart("Loss", ("step", "cross-entropy"), &series)
    }

    /// The learning rate per step.
    pub fn lr_plot(&self) -> Result<Svg> {
        let lr: Vec<(f64, f64)> = self.steps.iter().map(|s| (s.step as f64, s.lr)).collect();
        line_chart("Learning rate", ("step", "lr"), &[("lr", &lr)])
    }
}
