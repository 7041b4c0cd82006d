//! Displays of the quantization chapter: the quantization state of a 4-bit weight, the model's
//! footprint (slide 24), the before/after report with per-layer errors, and slide 15's
//! sensitivity.

use tunelab::model::perplexity::Perplexity;
use tunelab::quant::nf4::Absmax;
use tunelab::quant::{
    FourBitWeight, ModelFootprint, QuantReport, QuantState, QuantizeSummary, QuantizedWeight,
    Sensitivity, WeightError,
};

use crate::display::Html;
use crate::html::{group, human_bytes, table};

fn db(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2} dB")
    } else {
        "∞ (exact)".into()
    }
}

impl Html for QuantState {
    fn to_html(&self) -> String {
        let n = self.numel();
        let absmax = match &self.absmax {
            Absmax::F32(a) => format!("{} × float32", group(a.len() as u64)),
            Absmax::Nested { q, absmax2, offset } => format!(
                "double quant: {} × u8 codes + {} × float32 absmax2 + offset {offset:.6}",
                group(q.len() as u64),
                group(absmax2.len() as u64)
            ),
        };
        let rows = vec![
            vec!["quant_type".into(), self.quant_type.name().into()],
            vec!["shape".into(), format!("{:?}", self.shape)],
            vec!["blocksize".into(), self.blocksize.to_string()],
            vec!["blocks".into(), group(self.blocks() as u64)],
            vec!["absmax".into(), absmax],
            vec!["packed codes".into(), human_bytes(n.div_ceil(2) as u64)],
            vec![
                "storage".into(),
                format!(
                    "{} ({:.4} bits per weight)",
                    human_bytes(self.storage_bytes() as u64),
                    8.0 * self.storage_bytes() as f64 / n as f64
                ),
            ],
        ];
        table(Some("QuantState"), &["field", "value"], &rows)
    }
}

impl Html for FourBitWeight {
    fn to_html(&self) -> String {
        self.quant_state().to_html()
    }
}

impl Html for WeightError {
    fn to_html(&self) -> String {
        let rows = vec![vec![
            group(self.numel as u64),
            format!("{:.3e}", self.mse),
            format!("{:.3e}", self.rmse()),
            format!("{:.3e}", self.max_abs),
            db(self.snr_db),
        ]];
        table(
            Some("quantization error"),
            &["elements", "MSE", "RMSE", "max |w − ŵ|", "SNR"],
            &rows,
        )
    }
}

impl Html for ModelFootprint {
    fn to_html(&self) -> String {
        let budget = self.budget("by kind");
        let mut rows: Vec<Vec<String>> = budget
            .lines
            .iter()
            .map(|l| vec![l.name.clone(), l.formula.clone(), human_bytes(l.bytes)])
            .collect();
        rows.push(vec![
            "total (get_memory_footprint)".into(),
            format!("{} parameters", group(self.total_parameters as u64)),
            human_bytes(self.total_bytes as u64),
        ]);
        rows.push(vec![
            "slide 24 estimate: fp16".into(),
            format!("2 B × {}", group(self.total_parameters as u64)),
            human_bytes(self.fp16_estimate_bytes as u64),
        ]);
        let caption = format!(
            "Memory footprint: {:.2}× the fp16 estimate",
            self.ratio_to_fp16()
        );
        table(Some(&caption), &["part", "what", "bytes"], &rows)
    }
}

impl Html for QuantReport {
    fn to_html(&self) -> String {
        let e = &self.total_error;
        let summary = vec![
            vec![
                "whole model".into(),
                human_bytes(self.before.total_bytes as u64),
                human_bytes(self.after.total_bytes as u64),
                format!("{:.3}", self.compression()),
            ],
            vec![
                "projections".into(),
                human_bytes(self.linear_bytes_before as u64),
                human_bytes(self.linear_bytes_after as u64),
                format!(
                    "{:.3}",
                    self.linear_bytes_after as f64 / self.linear_bytes_before.max(1) as f64
                ),
            ],
        ];
        let mut s = table(
            Some(&format!(
                "Quantization report: pooled SNR {}, RMSE {:.3e}",
                db(e.snr_db),
                e.rmse()
            )),
            &["", "before", "after", "after / before"],
            &summary,
        );
        let rows: Vec<Vec<String>> = self
            .layers
            .iter()
            .map(|r| {
                vec![
                    r.path.clone(),
                    format!("{} → {}", r.kind_before, r.kind_after),
                    human_bytes(r.bytes_before as u64),
                    human_bytes(r.bytes_after as u64),
                    format!("{:.3e}", r.error.mse),
                    format!("{:.3e}", r.error.max_abs),
                    db(r.error.snr_db),
                ]
            })
            .collect();
        s.push_str(&format!(
            "<details><summary>{} layers</summary>{}</details>",
            rows.len(),
            table(
                None,
                &["layer", "kind", "before", "after", "MSE", "max abs", "SNR"],
                &rows
            )
        ));
        s
    }
}

impl Html for QuantizeSummary {
    fn to_html(&self) -> String {
        let rows = vec![vec![
            self.quantized.len().to_string(),
            if self.skipped.is_empty() {
                "—".into()
            } else {
                self.skipped.join(", ")
            },
            human_bytes(self.bytes_before as u64),
            human_bytes(self.bytes_after as u64),
        ]];
        table(
            Some("quantize_model"),
            &["quantized layers", "skipped", "bytes before", "bytes after"],
            &rows,
        )
    }
}

impl Html for Sensitivity {
    fn to_html(&self) -> String {
        let rows = vec![vec![
            self.path.clone(),
            format!("{:.5}", self.loss),
            format!("{:+.4e}", self.first_order),
            format!("{:+.4e}", self.actual),
            format!("{:.3}", self.ratio()),
        ]];
        table(
            Some("Slide 15: δL ≈ Σ ∂L/∂w · ε"),
            &["layer", "L", "Σ ∂L/∂w·ε", "L(w+ε) − L(w)", "ratio"],
            &rows,
        )
    }
}

impl Html for Perplexity {
    fn to_html(&self) -> String {
        let rows = vec![vec![
            format!("{:.4}", self.ppl),
            format!("{:.5}", self.nll),
            group(self.tokens as u64),
            format!(
                "{} × {} (stride {})",
                self.windows, self.max_length, self.stride
            ),
        ]];
        table(
            Some("perplexity"),
            &["ppl", "NLL (nats/token)", "tokens scored", "windows"],
            &rows,
        )
    }
}

/// The kind and bytes of any quantized weight, for a one-line display.
pub fn describe(w: &dyn QuantizedWeight) -> String {
    let n = w.out_features() * w.in_features();
    format!(
        "{} [{}, {}]: {} ({:.3} bits per weight)",
        w.kind(),
        w.out_features(),
        w.in_features(),
        human_bytes(w.storage_bytes() as u64),
        8.0 * w.storage_bytes() as f64 / n as f64
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use tunelab::quant::{quantize_4bit_weight, FourBitConfig};

    #[test]
    fn quant_state_shows_its_bits() {
        let w = Tensor::randn(0f32, 1.0, (64, 256), &Device::Cpu).unwrap();
        let q = quantize_4bit_weight(&w, "w", &FourBitConfig::nf4(true)).unwrap();
        let html = q.to_html();
        // 8192 bytes + 256 codes + 4 B absmax2 + 4 B offset = 8456 bytes over 16384 weights.
        assert!(
            html.contains("nf4") && html.contains("4.1289 bits"),
            "{html}"
        );
        assert!(html.contains("double quant"));
        assert!(describe(&q).starts_with("nf4+dq [64, 256]"));
    }

    #[test]
    fn exact_snr_shows_infinity() {
        let w = Tensor::ones((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = tunelab::quant::weight_error(&w, &w).unwrap();
        assert!(e.to_html().contains("∞"));
    }
}
