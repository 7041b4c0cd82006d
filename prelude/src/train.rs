//! Displays of the data and training chapters (4 and 5): which tokens carry labels, what
//! tokenization did, and what a training call did — tables instead of `Debug` dumps.

use std::fmt;

use tunelab::data::batch::{TokenizeReport, TokenizedExample, IGNORE_INDEX};
use tunelab::data::compose::ComposeReport;
use tunelab::data::template::TokenizedChat;
use tunelab::train::{EvalLog, History, SftReport, TrainOutput};
use tunelab::Tokenizer;

use crate::display::Html;
use crate::html::{escape, group, table};

/// One token of a [`TokenView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCell {
    /// The token id.
    pub id: u32,
    /// Its text, with whitespace made visible (`␣`, `↵`).
    pub text: String,
    /// Its label: the id where the loss is taken, −100 elsewhere.
    pub label: i64,
}

/// A tokenized example token by token, with its labels: green tokens are trained on, grey
/// ones carry −100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenView {
    /// The tokens in order.
    pub tokens: Vec<TokenCell>,
}

/// The text of one token, with whitespace visible.
fn token_text(tokenizer: &Tokenizer, id: u32) -> tunelab::Result<String> {
    let t = tokenizer.decode(&[id], false)?;
    Ok(t.replace(' ', "␣").replace('\n', "↵").replace('\t', "⇥"))
}

impl TokenView {
    /// The view of `example`'s ids and labels.
    pub fn of_example(tokenizer: &Tokenizer, example: &TokenizedExample) -> tunelab::Result<Self> {
        Self::new(tokenizer, &example.input_ids, &example.labels)
    }

    /// The view of a tokenized chat with the assistant mask as labels (the ids of assistant
    /// tokens, −100 elsewhere).
    pub fn of_chat(tokenizer: &Tokenizer, chat: &TokenizedChat) -> tunelab::Result<Self> {
        let labels: Vec<i64> = chat
            .input_ids
            .iter()
            .zip(chat.assistant_mask())
            .map(|(&id, on)| if on { id as i64 } else { IGNORE_INDEX })
            .collect();
        Self::new(tokenizer, &chat.input_ids, &labels)
    }

    /// The view of `ids` with `labels` (equal lengths).
    pub fn new(tokenizer: &Tokenizer, ids: &[u32], labels: &[i64]) -> tunelab::Result<Self> {
        if ids.len() != labels.len() {
            return Err(tunelab::Error::Input(format!(
                "TokenView: {} ids but {} labels",
                ids.len(),
                labels.len()
            )));
        }
        let tokens = ids
            .iter()
            .zip(labels)
            .map(|(&id, &label)| {
                Ok(TokenCell {
                    id,
                    text: token_text(tokenizer, id)?,
                    label,
                })
            })
            .collect::<tunelab::Result<_>>()?;
        Ok(Self { tokens })
    }

    /// Tokens that carry a label.
    pub fn num_labels(&self) -> usize {
        self.tokens
            .iter()
            .filter(|t| t.label != IGNORE_INDEX)
            .count()
    }
}

impl fmt::Display for TokenView {
    /// One line per token: position, id, label, text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:>4}  {:>6}  {:>6}  token", "pos", "id", "label")?;
        for (i, t) in self.tokens.iter().enumerate() {
            writeln!(f, "{i:>4}  {:>6}  {:>6}  {}", t.id, t.label, t.text)?;
        }
        write!(
            f,
            "{} tokens, {} with labels",
            self.tokens.len(),
            self.num_labels()
        )
    }
}

impl Html for TokenView {
    fn to_html(&self) -> String {
        let mut s = format!(
            "<div style=\"font-family:monospace;font-size:12px\"><p>{} tokens, {} with labels \
             (<span style=\"background:#c8e6c9\">green</span>: label = id, \
             <span style=\"background:#eee\">grey</span>: label = {IGNORE_INDEX})</p>\
             <div style=\"display:flex;flex-wrap:wrap;gap:2px\">",
            self.tokens.len(),
            self.num_labels()
        );
        for (i, t) in self.tokens.iter().enumerate() {
            let on = t.label != IGNORE_INDEX;
            s.push_str(&format!(
                "<div title=\"position {i}\" style=\"border:1px solid #ccc;padding:1px 3px;\
                 background:{}\"><div><b>{}</b></div><div style=\"color:#666\">{}</div>\
                 <div style=\"color:{}\">{}</div></div>",
                if on { "#c8e6c9" } else { "#eee" },
                escape(&t.text),
                t.id,
                if on { "#1b5e20" } else { "#999" },
                t.label
            ));
        }
        s.push_str("</div></div>");
        s
    }
}

fn report_rows(name: &str, r: &TokenizeReport) -> Vec<String> {
    let share = 100.0 * r.label_tokens as f64 / r.total_tokens.max(1) as f64;
    vec![
        name.to_string(),
        group(r.examples as u64),
        group(r.total_tokens as u64),
        group(r.label_tokens as u64),
        format!("{share:.1}%"),
        r.longest.to_string(),
        r.truncated.to_string(),
        r.max_length.to_string(),
        r.dropped_no_labels.to_string(),
    ]
}

const REPORT_HEADER: [&str; 9] = [
    "set",
    "examples",
    "tokens",
    "with labels",
    "share",
    "longest",
    "truncated",
    "max_length",
    "dropped",
];

impl Html for TokenizeReport {
    fn to_html(&self) -> String {
        table(
            Some("Tokenized"),
            &REPORT_HEADER,
            &[report_rows("data", self)],
        )
    }
}

impl Html for SftReport {
    fn to_html(&self) -> String {
        let mut rows = vec![report_rows("train", &self.train)];
        if let Some(e) = &self.eval {
            rows.push(report_rows("eval", e));
        }
        table(Some("SFT datasets"), &REPORT_HEADER, &rows)
    }
}

impl Html for ComposeReport {
    fn to_html(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .sources
            .iter()
            .map(|s| {
                vec![
                    s.path.display().to_string(),
                    s.read.to_string(),
                    s.duplicates.to_string(),
                    s.taken.to_string(),
                ]
            })
            .collect();
        let caption = format!("train {}, validation {}", self.train, self.validation);
        table(
            Some(&caption),
            &["source", "read", "duplicates", "taken"],
            &rows,
        )
    }
}

impl Html for TrainOutput {
    fn to_html(&self) -> String {
        format!("<pre>{}</pre>", escape(&self.to_string()))
    }
}

impl Html for EvalLog {
    fn to_html(&self) -> String {
        format!(
            "<pre>eval at step {}: loss {:.4} · perplexity {:.2} · {} targets</pre>",
            self.step, self.eval_loss, self.perplexity, self.targets
        )
    }
}

impl Html for History {
    /// Every step (the last 50 when there are more) and every evaluation.
    fn to_html(&self) -> String {
        let skip = self.steps.len().saturating_sub(50);
        let rows: Vec<Vec<String>> = self.steps[skip..]
            .iter()
            .map(|s| {
                vec![
                    s.step.to_string(),
                    format!("{:.2}", s.epoch),
                    format!("{:.4}", s.loss),
                    format!("{:.2e}", s.lr),
                    format!("{:.3}", s.grad_norm),
                    s.targets.to_string(),
                    format!("{:.0}", s.tokens_per_second()),
                ]
            })
            .collect();
        let caption = if skip > 0 {
            format!("History: last 50 of {} steps", self.steps.len())
        } else {
            format!("History: {} steps", self.steps.len())
        };
        let mut s = table(
            Some(&caption),
            &[
                "step",
                "epoch",
                "loss",
                "lr",
                "grad_norm",
                "targets",
                "tokens/s",
            ],
            &rows,
        );
        if !self.evals.is_empty() {
            let rows: Vec<Vec<String>> = self
                .evals
                .iter()
                .map(|e| {
                    vec![
                        e.step.to_string(),
                        format!("{:.4}", e.eval_loss),
                        format!("{:.2}", e.perplexity),
                    ]
                })
                .collect();
            s.push_str(&table(
                Some("Evaluations"),
                &["step", "eval_loss", "perplexity"],
                &rows,
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunelab::train::StepLog;

    #[test]
    fn history_and_reports_render() {
        let h = History {
            steps: vec![StepLog {
                step: 1,
                epoch: 0.1,
                loss: 2.5,
                aux_loss: None,
                lr: 1e-3,
                grad_norm: 0.5,
                tokens: 100,
                targets: 40,
                seconds: 2.0,
            }],
            evals: vec![],
        };
        let html = h.to_html();
        assert!(html.contains("History: 1 steps") && html.contains("2.5000"));
        assert!(html.contains(">50<"), "tokens/s = 100 / 2 s: {html}");
        let r = TokenizeReport {
            examples: 3,
            truncated: 1,
            dropped_no_labels: 0,
            longest: 300,
            total_tokens: 400,
            label_tokens: 100,
            max_length: 256,
        };
        assert!(r.to_html().contains("25.0%"));
    }

    #[test]
    fn token_cells_show_labels() {
        let v = TokenView {
            tokens: vec![
                TokenCell {
                    id: 1,
                    text: "<|im_start|>".into(),
                    label: IGNORE_INDEX,
                },
                TokenCell {
                    id: 42,
                    text: "Hi".into(),
                    label: 42,
                },
            ],
        };
        assert_eq!(v.num_labels(), 1);
        let html = v.to_html();
        assert!(html.contains("&lt;|im_start|&gt;") && html.contains("#c8e6c9"));
        assert!(v.to_string().ends_with("2 tokens, 1 with labels"));
    }
}
