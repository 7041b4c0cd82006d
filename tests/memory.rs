//! The memory module against the seminar's slides and the papers it cites. Every expected number
//! below is the slide's or the paper's, or its formula written out again here.

use candle_core::{DType, Device};
use tunelab::memory::*;
use tunelab::{Config, Llama};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn bytes_per_parameter() {
    let cases = [
        (Precision::Fp32, 4.0),
        (Precision::Fp16, 2.0),
        (Precision::Bf16, 2.0),
        (Precision::Int8, 1.0),
        (Precision::Nf4(QuantConstants::Uncounted), 0.5),
        (Precision::Fp4(QuantConstants::Uncounted), 0.5),
        // QLoRA §3: fp32 absmax per block of 64 adds 32/64 = 0.5 bits.
        (
            Precision::Nf4(QuantConstants::Absmax),
            (4.0 + 32.0 / 64.0) / 8.0,
        ),
        // QLoRA §3: double quantization, 8/64 + 32/(64·256) bits.
        (
            Precision::Nf4(QuantConstants::DoubleQuant),
            (4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0)) / 8.0,
        ),
    ];
    for (p, bytes) in cases {
        assert_eq!(p.bytes_per_param(), bytes, "{}", p.name());
    }
    // The paper rounds the double-quant overhead to 0.127 bits per parameter.
    let dq = Precision::Nf4(QuantConstants::DoubleQuant).bits_per_param() - 4.0;
    assert!(close(dq, 0.127, 0.0005), "{dq}");
    assert_eq!(Precision::from_dtype(DType::BF16).unwrap(), Precision::Bf16);
    let err = Precision::from_dtype(DType::U8).unwrap_err().to_string();
    assert!(err.contains("dtype") && err.contains("U8"), "{err}");
}

#[test]
fn slide6_fp32_fp16_and_full_finetuning() {
    // Slide 6, GB = 1e9 bytes: FP32 15.2 / 32 / 280 GB, FP16 7.6 / 16 / 140 GB.
    let expected = [(3.8e9, 15.2, 7.6), (8e9, 32.0, 16.0), (70e9, 280.0, 140.0)];
    let rows = slide6_table();
    assert_eq!(rows.len(), 3);
    for (row, (p, fp32, fp16)) in rows.iter().zip(expected) {
        assert_eq!(row.params as f64, p, "{}", row.model);
        assert!(
            close(gb(row.fp32), fp32, 1e-9),
            "{}: {}",
            row.model,
            gb(row.fp32)
        );
        assert!(
            close(gb(row.fp16), fp16, 1e-9),
            "{}: {}",
            row.model,
            gb(row.fp16)
        );
        // Slide 5: 4·P·(1 + 2 + 2), no activations.
        assert_eq!(row.full_finetune as f64, 4.0 * p * (1.0 + 2.0 + 2.0));
    }
    let text = slide6_text(&rows);
    assert!(
        text.contains("Llama 3 70B") && text.contains("280.0"),
        "{text}"
    );
}

#[test]
fn slide6_true_parameter_counts() {
    // Counts as transformers reports them for microsoft/Phi-3-mini-4k-instruct,
    // meta-llama/Meta-Llama-3-8B and meta-llama/Meta-Llama-3-70B.
    let counts = [3_821_079_552u64, 8_030_261_248, 70_553_706_496];
    for (row, n) in slide6_table_true_counts().iter().zip(counts) {
        assert_eq!(row.params, n, "{}", row.model);
        assert_eq!(row.fp32, 4 * n);
        assert_eq!(row.fp16, 2 * n);
    }
}

#[test]
fn slide14_fp32_vs_nf4() {
    let s = slide14();
    assert_eq!(s.params as f64, 8e9);
    assert!(close(gb(s.fp32), 32.0, 1e-9)); // 8B × 4 bytes
    assert!(close(gb(s.nf4), 4.0, 1e-9)); // 8B × 4 bits
    assert!(close(gb(s.nf4_absmax), 4.5, 1e-9)); // 8B × 4.5 bits
    assert!(close(gb(s.nf4_double_quant), 4.13, 0.005)); // 8B × ≈4.127 bits
    assert!(close(gib(s.fp32), 32e9 / 2f64.powi(30), 1e-9));
}

#[test]
fn inference_rule_of_thumb() {
    // Substratus AI, "Calculating GPU memory for serving LLMs": Llama 70B in 16 bit × 1.2 =
    // 168 GB, in 4 bit = 42 GB.
    let e = inference_estimate(70_000_000_000, Precision::Fp16);
    assert_eq!(e.total(), e.weights);
    let e = e.with_overhead(RULE_OF_THUMB_OVERHEAD).unwrap();
    assert!(close(gb(e.total()), 168.0, 1e-6), "{}", gb(e.total()));
    let e4 = inference_estimate(70_000_000_000, Precision::Nf4(QuantConstants::Uncounted))
        .with_overhead(RULE_OF_THUMB_OVERHEAD)
        .unwrap();
    assert!(close(gb(e4.total()), 42.0, 1e-6));
    let err = e4.with_overhead(0.5).unwrap_err().to_string();
    assert!(
        err.contains("overhead_factor") && err.contains("0.5"),
        "{err}"
    );
    assert_eq!(e.budget().total(), e.total());
}

#[test]
fn slide5_and_mixed_precision_adam() {
    let p = 8_000_000_000u64;
    let ft = full_finetune_slide5(p);
    // VRAM ≈ 4·P·(1 + 2 + 2): weights 1×, Adam m and v 2×, gradients + one more copy 2×.
    assert_eq!(ft.weights, 4 * p);
    assert_eq!(ft.adam_states, 4 * p * 2);
    assert_eq!(ft.gradients, 4 * p * 2);
    assert_eq!(ft.total(), 4 * p * (1 + 2 + 2));
    assert_eq!(ft.bytes_per_param(), 20.0);
    let with_act = ft.clone().with_activations(1_000);
    assert_eq!(with_act.total(), ft.total() + 1_000);
    assert_eq!(with_act.budget().total(), with_act.total());

    // ZeRO §3.1: 2Ψ + 2Ψ + KΨ with K = 12 → 16Ψ; 18 with fp32 gradients (2 + 4 + 12); 20 with
    // 16-bit gradients and an fp32 copy (2 + 2 + 4 + 12).
    for (acc, per) in [
        (AdamAccounting::ZeroPaper, 2 + 2 + 12),
        (AdamAccounting::Fp32Gradients, 2 + 4 + 12),
        (AdamAccounting::Fp32GradientCopy, 2 + 2 + 4 + 12),
    ] {
        let m = mixed_precision_adam(p, acc);
        assert_eq!(m.total(), per * p, "{acc:?}");
        assert_eq!(m.budget().total(), m.total());
    }
    let note = slide5_vs_mixed_precision_note();
    assert!(
        note.contains("20 bytes/param") && note.contains("16 bytes/param"),
        "{note}"
    );
}

#[test]
fn activations_korthikanti() {
    // GPT-3 175B shape from the paper: a = 96, h = 12288, s = 2048, L = 96, b = 1.
    let shape = ActivationShape {
        batch: 1,
        seq_len: 2048,
        hidden: 12288,
        heads: 96,
        layers: 96,
        bytes_per_value: 2,
    };
    let (s, b, h, a, l) = (2048.0, 1.0, 12288.0, 96.0, 96.0);
    let none = activation_estimate(shape, Recompute::None).unwrap();
    assert_eq!(none.per_layer as f64, s * b * h * (34.0 + 5.0 * a * s / h));
    assert_eq!(none.total as f64, l * s * b * h * (34.0 + 5.0 * a * s / h));
    let sel = activation_estimate(shape, Recompute::Selective).unwrap();
    assert_eq!(sel.per_layer as f64, 34.0 * s * b * h);
    // §5: selective recomputation cuts GPT-3's activation memory by about 70 %.
    let cut = 1.0 - sel.total as f64 / none.total as f64;
    assert!(close(cut, 0.70, 0.01), "{cut}");
    let full = activation_estimate(shape, Recompute::Full).unwrap();
    assert_eq!(full.total as f64, l * 2.0 * s * b * h);
    // fp32 activations: twice the 16-bit formula.
    let fp32 = activation_estimate(
        ActivationShape {
            bytes_per_value: 4,
            ..shape
        },
        Recompute::Full,
    )
    .unwrap();
    assert_eq!(fp32.total, 2 * full.total);
    let err = activation_estimate(
        ActivationShape {
            seq_len: 0,
            ..shape
        },
        Recompute::None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("seq_len") && err.contains('0'), "{err}");
    let cfg = Config::preset("smollm2-135m").unwrap();
    let of = ActivationShape::of_config(&cfg, 4, 512);
    assert_eq!((of.hidden, of.heads, of.layers), (576, 9, 30));
}

#[test]
fn lora_parameters_slide33() {
    // Slide 33: r = 16, d = k = 4096 → r·(d + k) = 131,072 vs d·k = 16,777,216.
    assert_eq!(lora_params(4096, 4096, 16).unwrap(), 131_072);
    assert_eq!(dense_params(4096, 4096), 16_777_216);
    let err = lora_params(4096, 4096, 0).unwrap_err().to_string();
    assert!(err.contains("`r`") && err.contains("is 0"), "{err}");
}

#[test]
fn lora_on_smollm2_matches_peft() {
    let cfg = Config::preset("smollm2-135m").unwrap();
    // peft, r = 8 on q_proj (576→576) and v_proj (576→3·64 = 192), 30 layers:
    // 30 × (8·(576 + 576) + 8·(576 + 192)) = 30 × (9216 + 6144) = 460,800.
    let e = lora_estimate(&cfg, 8, &["q_proj", "v_proj"], Precision::Fp16).unwrap();
    assert_eq!(e.trainable_params, 30 * (8 * (576 + 576) + 8 * (576 + 192)));
    assert_eq!(e.trainable_params, 460_800);
    // peft's print_trainable_parameters: all params = 134,515,008 (transformers) + 460,800.
    assert!(
        e.trainable_summary().starts_with(
            "trainable params: 460,800 || all params: 134,975,808 || trainable%: 0.34"
        ),
        "{}",
        e.trainable_summary()
    );
    // fp16 LoRA: the whole base at 2 bytes, adapters at 2 + 2 + 12 bytes.
    assert_eq!(e.base_linear_bytes + e.base_other_bytes, 2 * 134_515_008);
    assert_eq!(e.total(), 2 * 134_515_008 + 16 * 460_800);

    // "all-linear", r = 16, widths from SmolLM2's config.json (hidden 576, intermediate 1536,
    // 9 heads and 3 kv heads of 64): q, o 576↔576; k, v 576→192; gate, up 576→1536; down back.
    let all = lora_estimate(&cfg, 16, &["all-linear"], Precision::Bf16).unwrap();
    let per_layer = 16 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536));
    assert_eq!(all.trainable_params, 30 * per_layer);
    assert_eq!(all.modules.len(), 7);
    let k = all.modules.iter().find(|m| m.name == "k_proj").unwrap();
    assert_eq!((k.in_features, k.out_features), (576, 192));
}

#[test]
fn qlora_quantizes_only_the_block_projections() {
    let cfg = Config::preset("llama-3.2-1b").unwrap();
    let nf4 = Precision::Nf4(QuantConstants::DoubleQuant);
    let e = lora_estimate(&cfg, 16, &["q_proj", "k_proj", "v_proj", "o_proj"], nf4).unwrap();
    // Llama 3.2 1B: 16 layers, hidden 2048, 32 heads / 8 kv heads of 64, MLP 8192.
    let linear: u64 = 16 * (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192);
    assert_eq!(e.base_linear_params, linear);
    assert_eq!(e.base_other_params, 1_235_814_400 - linear);
    let bits = 4.0 + 8.0 / 64.0 + 32.0 / (64.0 * 256.0);
    assert!(close(
        e.base_linear_bytes as f64,
        linear as f64 * bits / 8.0,
        1.0
    ));
    assert_eq!(e.base_other_bytes, 2 * (1_235_814_400 - linear)); // kept in 16-bit
    assert_eq!(
        e.trainable_params,
        16 * 16 * (2 * (2048 + 2048) + 2 * (2048 + 512))
    );
    let total = e.clone().with_activations(123).total();
    assert_eq!(total, e.total() + 123);
}

#[test]
fn lora_errors_name_field_and_value() {
    let cfg = Config::preset("tiny").unwrap();
    let err = lora_estimate(&cfg, 8, &["q_proj", "qproj"], Precision::Fp16)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("target_modules") && err.contains("`qproj`"),
        "{err}"
    );
    let none: [&str; 0] = [];
    let err = lora_estimate(&cfg, 8, &none, Precision::Fp16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("target_modules"), "{err}");
    let err = lora_estimate(&cfg, 0, &["q_proj"], Precision::Fp16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`r`") && err.contains("is 0"), "{err}");
}

#[test]
fn footprint_of_tiny_model_agrees_with_formula() {
    let cfg = Config::preset("tiny").unwrap();
    for (dtype, size) in [(DType::F32, 4), (DType::BF16, 2)] {
        let m = Llama::init_random(&cfg, dtype, &Device::Cpu, 0).unwrap();
        let f = footprint_of_model(&m).unwrap();
        assert!(f.agrees(), "{dtype:?}: {f:?}");
        assert!(f.to_text().contains("agree: yes"), "{}", f.to_text());
        assert_eq!(f.counted_params, cfg.num_parameters() as u64);
        assert_eq!(f.counted_bytes, size * cfg.num_parameters() as u64);
    }
}

#[test]
fn budget_is_itemised_and_serializable() {
    let b = MemoryBudget::new("test")
        .with_line("a", 1_500_000_000, "1.5 × 1e9")
        .with_line("b", 500_000_000, "0.5 × 1e9");
    assert_eq!(b.total(), 2_000_000_000);
    let text = b.to_text();
    assert!(
        text.contains("1,500,000,000") && text.contains("2.000"),
        "{text}"
    );
    let json = serde_json::to_value(&b).unwrap();
    assert_eq!(json["lines"][1]["formula"], "0.5 × 1e9");
    let ft = full_finetune_slide5(3_800_000_000).budget();
    assert_eq!(ft.lines.len(), 3);
    assert!(ft.to_text().contains("Adam m and v"));
}
