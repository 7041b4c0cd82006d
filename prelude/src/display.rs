//! Rich displays of tunelab values in evcxr notebooks.
//!
//! Each value has a pure [`Html::to_html`] (unit-tested without a kernel); [`EvcxrDisplay`]
//! prints it in evcxr's protocol in one write, so evcxr shows it when a cell ends with the
//! value. The traits are brought into scope by `use tunelab_prelude::*;`.

use std::io::Write;

use tunelab::memory::{gb, MemoryBudget, Slide52};
use tunelab::model::generate::{FinishReason, Generation};
use tunelab::model::summary::ModelSummary;
use tunelab::{Config, Message, Pretrained};

use crate::html::{escape, group, human_bytes, table};

/// A value that renders itself as an HTML fragment.
pub trait Html {
    /// The HTML fragment.
    fn to_html(&self) -> String;
}

/// Prints `content` as one evcxr rich-output block of MIME type `mime`.
pub fn emit(mime: &str, content: &str) {
    let block = format!("EVCXR_BEGIN_CONTENT {mime}\n{content}\nEVCXR_END_CONTENT\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(block.as_bytes());
    let _ = out.flush();
}

/// What evcxr calls to display a value (`value.evcxr_display()`).
pub trait EvcxrDisplay {
    /// Prints the value's rich output.
    fn evcxr_display(&self);
}

impl<T: Html + ?Sized> EvcxrDisplay for T {
    fn evcxr_display(&self) {
        emit("text/html", &self.to_html());
    }
}

impl Html for Config {
    fn to_html(&self) -> String {
        let rows: Vec<Vec<String>> = [
            ("family", format!("{:?}", self.family)),
            ("vocab_size", group(self.vocab_size as u64)),
            ("hidden_size", self.hidden_size.to_string()),
            ("intermediate_size", self.intermediate_size.to_string()),
            ("num_hidden_layers", self.num_hidden_layers.to_string()),
            ("num_attention_heads", self.num_attention_heads.to_string()),
            ("num_key_value_heads", self.num_key_value_heads.to_string()),
            ("head_dim", self.head_dim.to_string()),
            ("rope_theta", self.rope_theta.to_string()),
            (
                "rope_scaling",
                if self.rope_scaling.is_some() {
                    "llama3".into()
                } else {
                    "none".into()
                },
            ),
            (
                "max_position_embeddings",
                group(self.max_position_embeddings as u64),
            ),
            ("tie_word_embeddings", self.tie_word_embeddings.to_string()),
            ("parameters", group(self.num_parameters() as u64)),
        ]
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
        table(Some("Config"), &["field", "value"], &rows)
    }
}

impl Html for ModelSummary {
    fn to_html(&self) -> String {
        let c = &self.config;
        let head = format!(
            "<p><b>{:?}</b>: {} layers, hidden {}, heads {} (kv {}), vocab {}, context {}; \
             <b>{}</b> parameters, <b>{}</b> in {} on {}</p>",
            c.family,
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            group(c.vocab_size as u64),
            group(c.max_position_embeddings as u64),
            group(self.total_parameters as u64),
            human_bytes(self.total_bytes as u64),
            escape(&self.dtype),
            escape(&self.device),
        );
        let mut rows: Vec<Vec<String>> = self
            .modules
            .iter()
            .map(|r| {
                vec![
                    r.kind.clone(),
                    r.count.to_string(),
                    group(r.parameters as u64),
                    human_bytes(r.bytes as u64),
                    r.layer_kinds.join(", "),
                ]
            })
            .collect();
        rows.push(vec![
            "total".into(),
            String::new(),
            group(self.total_parameters as u64),
            human_bytes(self.total_bytes as u64),
            String::new(),
        ]);
        format!(
            "{head}{}",
            table(
                None,
                &["module", "count", "parameters", "memory", "layers"],
                &rows
            )
        )
    }
}

impl Html for Pretrained {
    fn to_html(&self) -> String {
        format!(
            "<div><p>{} <small>(via {})</small></p>{}</div>",
            escape(&self.resolved.source.path().display().to_string()),
            escape(&self.resolved.via),
            ModelSummary::of(&self.model).to_html()
        )
    }
}

impl Html for Generation {
    fn to_html(&self) -> String {
        let reason = match &self.finish_reason {
            FinishReason::Eos => "end of sequence".to_string(),
            FinishReason::StopString(s) => format!("stop string {s:?}"),
            FinishReason::MaxNewTokens => "max_new_tokens".to_string(),
            FinishReason::ContextFull => "context full".to_string(),
        };
        format!(
            "<div><pre style=\"white-space:pre-wrap\">{}</pre><small>{} prompt tokens, {} new tokens \
             ({:.1} tokens/s), stopped by {}</small></div>",
            escape(&self.text),
            self.prompt_tokens,
            self.token_ids.len(),
            self.tokens_per_second(),
            escape(&reason)
        )
    }
}

impl Html for [Message] {
    fn to_html(&self) -> String {
        let mut s = String::from("<div class=\"tunelab-chat\">");
        for m in self {
            let bg = match m.role.as_str() {
                "user" => "#eef4ff",
                "assistant" => "#effaf0",
                "system" => "#f4f4f4",
                _ => "#fff8e6",
            };
            s.push_str(&format!(
                "<div style=\"background:{bg};margin:2px 0;padding:4px 8px;border-radius:4px\">\
                 <b>{}</b>: <span style=\"white-space:pre-wrap\">{}</span></div>",
                escape(&m.role),
                escape(&m.content)
            ));
        }
        s.push_str("</div>");
        s
    }
}

impl Html for Vec<Message> {
    fn to_html(&self) -> String {
        self.as_slice().to_html()
    }
}

impl Html for MemoryBudget {
    fn to_html(&self) -> String {
        let mut rows: Vec<Vec<String>> = self
            .lines
            .iter()
            .map(|l| vec![l.name.clone(), human_bytes(l.bytes), l.formula.clone()])
            .collect();
        rows.push(vec![
            "total".into(),
            human_bytes(self.total()),
            String::new(),
        ]);
        table(Some(&self.title), &["item", "memory", "formula"], &rows)
    }
}

impl Html for Slide52 {
    fn to_html(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.method.clone(),
                    group(r.trainable_params),
                    format!("{:.2}", gb(r.weights)),
                    format!("{:.2}", gb(r.gradients)),
                    format!("{:.2}", gb(r.optimizer)),
                    format!("{:.2}", gb(r.total())),
                ]
            })
            .collect();
        let caption = format!(
            "Slide 52: {} parameters, LoRA r={} on {} (GB = 10⁹ bytes, activations not included)",
            group(self.params),
            self.r,
            self.target_modules.join(", ")
        );
        table(
            Some(&caption),
            &[
                "method",
                "trainable params",
                "weights",
                "gradients",
                "optimizer",
                "total GB",
            ],
            &rows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use tunelab::Llama;

    #[test]
    fn summary_html_has_the_numbers() {
        let cfg = Config::preset("tiny").unwrap();
        let m = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 0).unwrap();
        let html = ModelSummary::of(&m).to_html();
        assert!(html.contains("<table"));
        assert!(html.contains(&group(cfg.num_parameters() as u64)));
        assert!(html.contains("q_proj") && html.contains("dense"));
        let html = cfg.to_html();
        assert!(html.contains("num_key_value_heads") && html.contains(">2<"));
    }

    #[test]
    fn memory_budget_html_totals() {
        let b = tunelab::memory::full_finetune_slide5(8_000_000_000).budget();
        let html = b.to_html();
        // Slide 5: 4·P·(1+2+2) bytes for P = 8e9 is 160 GB.
        assert!(html.contains("160.00 GB"), "{html}");
        assert!(html.contains("<caption"));
    }

    #[test]
    fn slide52_table() {
        let cfg = Config::preset("llama-3-8b").unwrap();
        let html = tunelab::memory::slide52(&cfg, 16, &["all-linear"])
            .unwrap()
            .to_html();
        // 20 B/param × 8,030,261,248 = 160.61 GB; QLoRA's adapters: 41,943,040 parameters.
        assert!(
            html.contains("160.61") && html.contains("41,943,040"),
            "{html}"
        );
        assert!(html.contains("QLoRA r=16"));
    }

    #[test]
    fn chat_html_escapes_content() {
        let msgs = vec![
            Message::user("<script>x</script>"),
            Message::assistant("ok"),
        ];
        let html = msgs.to_html();
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        assert!(html.contains("<b>assistant</b>"));
    }

    #[test]
    fn generation_html() {
        let g = Generation {
            token_ids: vec![1, 2, 3],
            text: "Paris & more".into(),
            finish_reason: FinishReason::Eos,
            prompt_tokens: 10,
            prefill_seconds: 0.1,
            decode_seconds: 0.5,
        };
        let html = g.to_html();
        assert!(
            html.contains("Paris &amp; more")
                && html.contains("6.0 tokens/s")
                && html.contains("end of sequence")
        );
    }
}
