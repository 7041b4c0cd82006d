//! Perplexity of SmolLM2-135M-Instruct on a fixed paragraph (tests/fixtures/smollm2/
//! perplexity.json), before and after each quantization scheme: the table of
//! docs/02_quantization.md. The weights come from the Q4_1 GGUF (dequantized to f32), so every
//! scheme re-quantizes weights that already sit on a 4-bit grid; the doc discusses what that
//! does to the comparison.

use candle_core::quantized::GgmlDType;
use tunelab::model::perplexity::{perplexity, PerplexityOptions};
use tunelab::quant::{
    quantize_model_with, AffineConfig, FourBitConfig, Granularity, QuantConfig, QuantScheme,
};
use tunelab::Pretrained;

mod common;

fn text() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/smollm2/perplexity.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["text"].as_str().unwrap().to_string()
}

fn load() -> Pretrained {
    let path = common::smollm2_gguf();
    Pretrained::load_path(path, &Default::default()).unwrap()
}

#[test]
fn perplexity_before_and_after_each_scheme() {
    let text = text();
    let opts = PerplexityOptions::default();
    let base = load();
    let fp32 = perplexity(&base.model, &base.tokenizer, &text, &opts).unwrap();
    drop(base);
    let schemes = [
        QuantScheme::Int8 { threshold: 6.0 },
        QuantScheme::FourBit(FourBitConfig::nf4(false)),
        QuantScheme::FourBit(FourBitConfig::nf4(true)),
        QuantScheme::FourBit(FourBitConfig::fp4(false)),
        QuantScheme::Affine(AffineConfig::asymmetric(4, Granularity::Group(64))),
        QuantScheme::Affine(AffineConfig::asymmetric(4, Granularity::PerChannel)),
        QuantScheme::Ggml(GgmlDType::Q4_0),
    ];
    println!("| scheme | bytes of the projections | perplexity | vs f32 |");
    println!("|---|---:|---:|---:|");
    println!("| f32 | — | {:.4} | 1.000 |", fp32.ppl);
    let mut results = Vec::new();
    for scheme in schemes {
        let mut lm = load();
        let s = quantize_model_with(&mut lm.model, &scheme, &QuantConfig::default()).unwrap();
        let p = perplexity(&lm.model, &lm.tokenizer, &text, &opts).unwrap();
        println!(
            "| {} | {} | {:.4} | {:.3} |",
            scheme.name(),
            s.bytes_after,
            p.ppl,
            p.ppl / fp32.ppl
        );
        assert!(
            p.ppl.is_finite() && p.ppl > 1.0,
            "{}: {}",
            scheme.name(),
            p.ppl
        );
        results.push((scheme.name(), p.ppl));
    }
    // The measured order (docs/02_quantization.md): LLM.int8 is closest to f32; NF4 is below
    // FP4 and below affine int4, per group of 64 and per channel; every 4-bit scheme stays
    // within a factor 2 of f32 on this text.
    let ppl = |name: &str| results.iter().find(|(n, _)| n == name).unwrap().1;
    assert!(results.iter().all(|(_, p)| *p >= ppl("int8")));
    for other in ["fp4", "affine-int4-g64", "affine-int4-channel"] {
        assert!(
            ppl("nf4") < ppl(other),
            "nf4 {} vs {other} {}",
            ppl("nf4"),
            ppl(other)
        );
    }
    assert!(results.iter().all(|(_, p)| p / fp32.ppl < 2.0));
}
