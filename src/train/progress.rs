//! Showing progress: a terminal progress bar (indicatif), or in a notebook one short line every
//! `logging_steps` steps on stdout (a cell gets a readable log, never a flood).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle as BarStyle};

use super::args::ProgressStyle;
use super::history::StepLog;

/// The progress display of one `train_*` call.
pub(crate) enum Progress {
    Bar(ProgressBar),
    Lines { every: usize, total: usize },
    Silent,
}

impl Progress {
    pub(crate) fn new(style: ProgressStyle, every: usize, done: usize, total: usize) -> Self {
        let style = match style {
            ProgressStyle::Auto if std::io::stderr().is_terminal() => ProgressStyle::Bar,
            ProgressStyle::Auto => ProgressStyle::Lines,
            s => s,
        };
        match style {
            ProgressStyle::Bar => {
                let bar = ProgressBar::new(total as u64);
                bar.set_position(done as u64);
                if let Ok(s) = BarStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                ) {
                    bar.set_style(s);
                }
                Progress::Bar(bar)
            }
            ProgressStyle::Lines => Progress::Lines { every, total },
            _ => Progress::Silent,
        }
    }

    /// After each step; `smoothed` is the mean loss since the last line.
    pub(crate) fn step(&self, log: &StepLog, smoothed: f64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_position(log.step as u64);
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {:.0} tok/s",
                    log.loss,
                    log.lr,
                    log.tokens_per_second()
                ));
            }
            Progress::Lines { every, total } => {
                if log.step % every == 0 || log.step == *total {
                    println!("{}", line(log, smoothed, *total));
                }
            }
            Progress::Silent => {}
        }
    }

    /// A free-form line (evaluation, checkpoint).
    pub(crate) fn note(&self, text: &str) {
        match self {
            Progress::Bar(bar) => bar.println(text),
            Progress::Lines { .. } => println!("{text}"),
            Progress::Silent => {}
        }
    }

    pub(crate) fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.abandon();
        }
    }
}

/// `step 50/300 (epoch 0.83) · loss 1.8342 · lr 1.90e-4 · grad 0.84 · 512 tok/s`.
pub(crate) fn line(log: &StepLog, smoothed: f64, total: usize) -> String {
    format!(
        "step {}/{} (epoch {:.2}) · loss {:.4} · lr {:.2e} · grad {:.3} · {:.0} tok/s",
        log.step,
        total,
        log.epoch,
        smoothed,
        log.lr,
        log.grad_norm,
        log.tokens_per_second()
    )
}
