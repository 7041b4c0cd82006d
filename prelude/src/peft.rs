//! Displays of the LoRA chapter: peft's trainable-parameter line and a summary of a
//! `PeftModel`'s adapters.

use tunelab::peft::{PeftMethod, PeftModel, TrainableParameters};

use crate::display::Html;
use crate::html::{escape, group, table};

impl Html for TrainableParameters {
    fn to_html(&self) -> String {
        format!("<pre>{}</pre>", escape(&self.to_string()))
    }
}

impl Html for PeftModel {
    fn to_html(&self) -> String {
        let layers = self.lora_layers();
        let mut rows = Vec::new();
        for name in self.adapter_names() {
            let Ok(cfg) = self.peft_config(&name) else {
                continue;
            };
            let mut n_layers = 0;
            let mut params = 0;
            for (_, l) in &layers {
                if let Some(a) = l.adapters().get(&name) {
                    n_layers += 1;
                    params += a.num_parameters();
                }
            }
            rows.push(vec![
                if name == self.active_adapter() {
                    format!("{name} (active)")
                } else {
                    name.clone()
                },
                format!("{:?}", cfg.target_modules),
                cfg.r.to_string(),
                cfg.lora_alpha.to_string(),
                format!("{:.4}", cfg.scaling(cfg.r, cfg.lora_alpha)),
                if cfg.use_dora { "DoRA" } else { "LoRA" }.to_string(),
                n_layers.to_string(),
                group(params as u64),
            ]);
        }
        let kinds: std::collections::BTreeSet<String> = layers
            .iter()
            .filter_map(|(p, _)| self.base_model().linear(p).ok())
            .map(|l| l.kind().into_owned())
            .collect();
        let caption = format!(
            "PeftModel: {} — layers {}",
            self.trainable_parameters(),
            kinds.into_iter().collect::<Vec<_>>().join(", ")
        );
        table(
            Some(&caption),
            &[
                "adapter",
                "target_modules",
                "r",
                "lora_alpha",
                "scaling",
                "type",
                "layers",
                "parameters",
            ],
            &rows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use tunelab::peft::{get_peft_model_seeded, LoraConfig, TargetModules};
    use tunelab::{Config, Llama};

    #[test]
    fn peft_summary_shows_the_trainable_line() {
        let m = Llama::init_random(
            &Config::preset("tiny").unwrap(),
            DType::F32,
            &Device::Cpu,
            0,
        )
        .unwrap();
        let peft =
            get_peft_model_seeded(m, &LoraConfig::new(4, 8.0, TargetModules::all_linear()), 0)
                .unwrap();
        let html = peft.to_html();
        assert!(
            html.contains("trainable params:") && html.contains("lora(dense)"),
            "{html}"
        );
        assert!(html.contains("default (active)") && html.contains("2.0000"));
        assert!(peft
            .trainable_parameters()
            .to_html()
            .starts_with("<pre>trainable params:"));
    }
}
