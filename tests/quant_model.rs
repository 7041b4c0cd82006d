//! quantize_model on the real SmolLM2-135M-Instruct (GGUF fallback, dequantized to f32):
//! footprint against the analytic byte count, outputs against the dense model.

use candle_core::{DType, Device, Tensor};
use tunelab::quant::{quantize_model, QLinear, QuantConfig};
use tunelab::{Config, Linear, Llama, Pretrained};

mod common;
use common::max_rel_diff;

fn smollm2() -> Pretrained {
    let path = common::smollm2_gguf();
    Pretrained::load_path(path, &Default::default()).expect("loading SmolLM2 from GGUF")
}

/// bitsandbytes' storage of an NF4 + double-quant weight of `n` values at blocksize 64:
/// n/2 packed bytes, one byte per block, a float32 absmax per 256 blocks, a float32 offset.
fn nf4_dq_bytes(n: usize) -> usize {
    let blocks = n.div_ceil(64);
    n.div_ceil(2) + blocks + 4 * blocks.div_ceil(256) + 4
}

#[test]
fn smollm2_nf4_double_quant_footprint_is_the_analytic_count() {
    let mut lm = smollm2();
    let dense_bytes: usize = lm
        .model
        .linears()
        .iter()
        .map(|(_, l)| l.storage_bytes())
        .sum();
    let summary = quantize_model(&mut lm.model, &QuantConfig::nf4_double_quant()).unwrap();
    assert_eq!(summary.quantized.len(), 30 * 7);
    assert_eq!(summary.skipped, vec!["lm_head".to_string()]);
    let mut params = 0usize;
    let mut bytes = 0usize;
    for (path, layer) in lm.model.linears() {
        if path == "lm_head" {
            assert_eq!(layer.kind(), "dense");
            continue;
        }
        let n = layer.in_features() * layer.out_features();
        assert_eq!(layer.kind(), "nf4+dq", "{path}");
        assert_eq!(layer.storage_bytes(), nf4_dq_bytes(n), "{path}");
        params += n;
        bytes += layer.storage_bytes();
    }
    let bits = 8.0 * bytes as f64 / params as f64;
    println!(
        "SmolLM2 projections: {params} weights, {bytes} bytes NF4+DQ = {bits:.4} bits/weight \
         (analytic 4 + 8/64 + 32/(64·256) = {:.4}); dense f32 {dense_bytes} bytes",
        4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0)
    );
    // 4.127 bits per weight, plus the per-tensor offsets and whole 256-block groups.
    assert!((bits - 4.127).abs() < 0.002, "{bits}");
    assert_eq!(summary.bytes_after, bytes);
    // The model still generates coherent text.
    let g = lm
        .chat(
            &[tunelab::Message::user("What is the capital of France?")],
            &tunelab::GenerationConfig::greedy(12),
        )
        .unwrap();
    println!("NF4+DQ answer: {}", g.text);
    assert!(g.text.contains("Paris"), "{}", g.text);
}

#[test]
fn quantized_model_matches_dense_model_on_dequantized_weights() {
    // The tiny model: quantize, then build a dense model from the dequantized weights; both
    // must give the same logits (forward = dequantize + matmul).
    let cfg = Config::preset("tiny").unwrap();
    let mut q = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 7).unwrap();
    let mut d = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 7).unwrap();
    quantize_model(&mut q, &QuantConfig::nf4_double_quant()).unwrap();
    for (path, layer) in q.linears() {
        let w = layer.dense_weight().unwrap();
        d.replace_linear(
            &path,
            Linear::new(tunelab::Dense::new(w, layer.bias().cloned()).unwrap()),
        )
        .unwrap();
    }
    let ids = Tensor::new(&[[1u32, 5, 9, 200, 17, 3]], &Device::Cpu).unwrap();
    let a = q.forward(&ids, None).unwrap();
    let b = d.forward(&ids, None).unwrap();
    let rel = max_rel_diff(&a, &b);
    assert!(rel < 1e-5, "relative difference {rel}");
}

#[test]
fn config_errors_and_frozen_weights() {
    let cfg = Config::preset("tiny").unwrap();
    let mut m = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 1).unwrap();
    let e = quantize_model(&mut m, &QuantConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("load_in_4bit"), "{e}");
    let both = QuantConfig {
        load_in_8bit: true,
        ..QuantConfig::nf4()
    };
    assert!(quantize_model(&mut m, &both)
        .unwrap_err()
        .to_string()
        .contains("both"));
    let mut bad = QuantConfig::nf4();
    bad.bnb_4bit_blocksize = 100;
    let e = quantize_model(&mut m, &bad).unwrap_err().to_string();
    assert!(e.contains("blocksize") && e.contains("100"), "{e}");
    // Skipping by component: all q_proj stay dense.
    let s = quantize_model(
        &mut m,
        &QuantConfig::nf4().with_skip_modules(["lm_head", "q_proj"]),
    )
    .unwrap();
    assert_eq!(s.skipped.len(), cfg.num_hidden_layers + 1);
    assert_eq!(
        m.linear("model.layers.0.self_attn.q_proj").unwrap().kind(),
        "dense"
    );
    // Quantizing twice is refused.
    let e = quantize_model(&mut m, &QuantConfig::nf4())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already quantized"), "{e}");
    // Slide 25: a quantized weight cannot be trained.
    let layer = m.linear_mut("model.layers.0.mlp.up_proj").unwrap();
    let q = layer.get_mut::<QLinear>().unwrap();
    let e = q.set_trainable(true).unwrap_err().to_string();
    assert!(e.contains("cannot be trained") && e.contains("LoRA"), "{e}");
    assert!(q.set_trainable(false).is_ok());
}
