//! Learning-rate schedules, as transformers' `get_scheduler` defines them: a factor λ(k) of
//! the peak rate for optimizer step k = 0, 1, ..., with `W` warmup steps and `N` steps in all.
//!
//! ```text
//! warmup (k < W):        λ = k / max(1, W)
//! linear:                λ = max(0, (N − k) / max(1, N − W))
//! cosine:                λ = max(0, ½·(1 + cos(π · (k − W) / max(1, N − W))))
//! constant_with_warmup:  λ = 1
//! constant:              λ = 1 (no warmup)
//! ```
//! As in transformers, the rate of step k is λ(k)·lr and the scheduler steps after the
//! optimizer, so with warmup the first update has rate 0.

use serde::{Deserialize, Serialize};

use super::args::SchedulerType;

/// A schedule of `total` steps with `warmup` warmup steps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Which curve.
    pub kind: SchedulerType,
    /// The peak rate.
    pub peak: f64,
    /// Warmup steps W.
    pub warmup: usize,
    /// All steps N.
    pub total: usize,
}

impl LrSchedule {
    /// The factor λ(k).
    pub fn factor(&self, step: usize) -> f64 {
        let (k, w, n) = (step as f64, self.warmup as f64, self.total as f64);
        if self.kind == SchedulerType::Constant {
            return 1.0;
        }
        if step < self.warmup {
            return k / w.max(1.0);
        }
        let progress = (k - w) / (n - w).max(1.0);
        match self.kind {
            SchedulerType::Linear => ((n - k) / (n - w).max(1.0)).max(0.0),
            SchedulerType::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
            SchedulerType::ConstantWithWarmup | SchedulerType::Constant => 1.0,
        }
    }

    /// The learning rate of step `k`: λ(k) · peak.
    pub fn lr(&self, step: usize) -> f64 {
        self.factor(step) * self.peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: SchedulerType, warmup: usize, total: usize) -> LrSchedule {
        LrSchedule {
            kind,
            peak: 1.0,
            warmup,
            total,
        }
    }

    /// Values of transformers' `get_*_schedule_with_warmup` lambdas for N = 10, W = 2
    /// (`lr_lambda(k)` for k = 0..10), computed by hand from its source formulas.
    #[test]
    fn factors_match_transformers() {
        let lin = sched(SchedulerType::Linear, 2, 10);
        let want = [
            0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0,
        ];
        for (k, w) in want.iter().enumerate() {
            assert!((lin.factor(k) - w).abs() < 1e-12, "linear {k}");
        }
        let cos = sched(SchedulerType::Cosine, 2, 10);
        // k = 6: progress 0.5 → ½(1 + cos(π/2)) = 0.5; k = 4: progress 0.25 → ½(1 + √½).
        assert!((cos.factor(6) - 0.5).abs() < 1e-12);
        assert!((cos.factor(4) - 0.5 * (1.0 + 0.5f64.sqrt())).abs() < 1e-12);
        assert!(cos.factor(10).abs() < 1e-12);
        let cw = sched(SchedulerType::ConstantWithWarmup, 2, 10);
        assert_eq!(
            [cw.factor(0), cw.factor(1), cw.factor(2), cw.factor(9)],
            [0.0, 0.5, 1.0, 1.0]
        );
        let c = sched(SchedulerType::Constant, 2, 10);
        assert_eq!(c.factor(0), 1.0);
    }
}
