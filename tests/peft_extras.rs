//! LoRA's extras against Python peft 0.21.2 (tests/fixtures/peft/extras, made by
//! scripts/ref/make_peft_extras.py): `bias`, `modules_to_save` (tied embeddings too), PiSSA and
//! its conversion to plain LoRA, merging into a 4-bit base (peft + bitsandbytes requantize),
//! `prepare_model_for_kbit_training`, and the evaluation-mode copies of Aᵀ, Bᵀ.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tunelab::peft::PeftMethod;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use tunelab::model::load::load_hf_dir;
use tunelab::peft::pissa::{pissa_init, truncated_svd};
use tunelab::peft::{
    get_peft_model_seeded, load_adapter, prepare_model_for_kbit_training, save_adapter,
    save_adapter_as_lora, InitLoraWeights, LoraBias, LoraConfig, LoraLayer, TargetModules,
};
use tunelab::quant::{quantize_model, QLinear, QuantConfig};
use tunelab::{Config, Llama};

use common::max_abs_diff;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn extras() -> PathBuf {
    fixtures().join("peft/extras")
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(extras().join("cases.json")).unwrap()).unwrap()
}

fn base(name: &str) -> Llama {
    load_hf_dir(
        fixtures().join("tiny_hf").join(name),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
    .0
}

fn expected(dir: &Path) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Every bias / modules_to_save case: peft's adapter loads, gives peft's logits adapted,
/// disabled and merged, the trainable line and parameter names are peft's, and saving again
/// writes peft's keys and values.
#[test]
fn bias_and_modules_to_save_match_peft() {
    let cases = cases();
    for (case, want) in cases["cases"].as_object().unwrap() {
        let dir = extras().join(case);
        let model = want["base"].as_str().unwrap().rsplit('/').next().unwrap();
        let exp = expected(&dir);
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let mut peft = load_adapter(base(model), &dir).unwrap();
        assert_eq!(
            peft.trainable_parameters().to_string(),
            want["line"].as_str().unwrap(),
            "{case}"
        );
        let ours: BTreeSet<String> = peft
            .varmap()
            .data()
            .lock()
            .unwrap()
            .keys()
            .filter(|k| !k.contains("lora_"))
            .cloned()
            .collect();
        assert_eq!(
            ours,
            strings(&want["trainable_other"]),
            "{case}: trainable names"
        );
        let adapted = peft.base_model().forward(&ids, None).unwrap();
        let d = max_abs_diff(&adapted, &exp["logits_adapted"]);
        let off = peft
            .with_adapters_disabled(|m| m.forward(&ids, None).unwrap())
            .unwrap();
        let d_off = max_abs_diff(&off, &exp["logits_disabled"]);
        let out = tempfile::tempdir().unwrap();
        save_adapter(&peft, out.path(), "default").unwrap();
        let mine = candle_core::safetensors::load(
            out.path().join("adapter_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let theirs =
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap();
        assert_eq!(
            mine.keys().collect::<BTreeSet<_>>(),
            theirs.keys().collect::<BTreeSet<_>>(),
            "{case}: saved keys"
        );
        for (k, t) in &theirs {
            assert_eq!(max_abs_diff(&mine[k], t), 0.0, "{case}: {k}");
        }
        let tied_warning = peft.warnings().iter().any(|w| w.contains("unties"));
        assert_eq!(
            tied_warning,
            !want["warnings"].as_array().unwrap().is_empty(),
            "{case}"
        );
        let merged = peft.merge_and_unload(true).unwrap();
        assert_eq!(
            merged.config().tie_word_embeddings,
            want["merged_tie_word_embeddings"].as_bool().unwrap(),
            "{case}"
        );
        let d_merged = max_abs_diff(&merged.forward(&ids, None).unwrap(), &exp["logits_merged"]);
        println!("{case}: max |ours − peft| adapted {d:.1e}, disabled {d_off:.1e}, merged {d_merged:.1e}");
        assert!(
            d < 1e-4 && d_off < 1e-4 && d_merged < 1e-4,
            "{case}: {d} {d_off} {d_merged}"
        );
    }
}

#[test]
fn smollm2_lines_with_bias_and_lm_head_equal_peft() {
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("peft/trainable_params.json")).unwrap(),
    )
    .unwrap();
    let cfg = Config::preset("smollm2-135m").unwrap();
    for (case, lora) in [
        ("r8_q_v_bias_all", {
            let mut c = LoraConfig::new(8, 16.0, TargetModules::names(["q_proj", "v_proj"]));
            c.bias = LoraBias::All;
            c
        }),
        ("r8_q_v_lm_head_to_save", {
            let mut c = LoraConfig::new(8, 16.0, TargetModules::names(["q_proj", "v_proj"]));
            c.modules_to_save = Some(vec!["lm_head".into()]);
            c
        }),
    ] {
        let model = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 0).unwrap();
        let peft = get_peft_model_seeded(model, &lora, 0).unwrap();
        assert_eq!(
            peft.trainable_parameters().to_string(),
            json["cases"][case]["line"].as_str().unwrap(),
            "{case}"
        );
    }
}

/// Biases, module copies, A and B all get gradients, and a step moves each of them; the
/// original lm_head and embeddings stay as they were.
#[test]
fn trained_extras_receive_gradients() {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj", "v_proj"]));
    c.bias = LoraBias::All;
    c.modules_to_save = Some(vec!["lm_head".into(), "norm".into()]);
    let peft = get_peft_model_seeded(base("llama_bias"), &c, 1).unwrap();
    let vars = peft.trainable_vars();
    // 8 LoRA matrices + 14 biases + lm_head + 5 norms.
    assert_eq!(vars.len(), 8 + 14 + 1 + 5);
    let ids = Tensor::new(&[[1u32, 5, 9, 20, 17, 3]], &Device::Cpu).unwrap();
    let loss = peft
        .base_model()
        .forward(&ids, None)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let missing = vars
        .iter()
        .filter(|v| grads.get(v.as_tensor()).is_none())
        .count();
    // lora_A gets no gradient through B = 0 only numerically (it is in the graph).
    assert_eq!(missing, 0);
    let original = peft
        .base_model()
        .lm_head
        .get::<tunelab::peft::ModulesToSaveLayer>()
        .unwrap()
        .original()
        .dense_weight()
        .unwrap();
    let before = original.to_vec2::<f32>().unwrap();
    for v in &vars {
        let g = grads.get(v.as_tensor()).unwrap();
        v.set(&(v.as_tensor() - g).unwrap()).unwrap();
    }
    assert_eq!(original.to_vec2::<f32>().unwrap(), before);
}

#[test]
fn modules_to_save_follow_the_active_adapter() {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj"]));
    c.modules_to_save = Some(vec!["lm_head".into()]);
    let mut peft = get_peft_model_seeded(base("llama_untied"), &c, 1).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 9, 20]], &Device::Cpu).unwrap();
    let plain = base("llama_untied").forward(&ids, None).unwrap();
    let copy = peft.modules_to_save("default")[0].weight.clone();
    copy.set(&(copy.as_tensor() * 1.5).unwrap()).unwrap();
    let with_copy = peft.base_model().forward(&ids, None).unwrap();
    assert!(max_abs_diff(&with_copy, &plain) > 0.1);
    peft.add_adapter_seeded(
        "other",
        &LoraConfig::new(4, 8.0, TargetModules::names(["v_proj"])),
        2,
    )
    .unwrap();
    // "other" has no lm_head copy: the original runs (its B = 0, so the base's logits).
    assert!(max_abs_diff(&peft.base_model().forward(&ids, None).unwrap(), &plain) < 1e-5);
    peft.set_adapter("default").unwrap();
    assert!(max_abs_diff(&peft.base_model().forward(&ids, None).unwrap(), &with_copy) < 1e-6);
    let all = peft.trainable_parameters().all;
    peft.delete_adapter("default").unwrap();
    assert!(peft.base_model().lm_head.layer().kind() == "dense");
    assert_eq!(
        all - peft.trainable_parameters().all,
        128 * 64 + 2 * (4 * 64 + 64 * 4)
    );
}

#[test]
fn config_errors_name_the_field() {
    let q = || {
        let mut m = base("llama_untied");
        quantize_model(
            &mut m,
            &QuantConfig::nf4().with_skip_modules(Vec::<String>::new()),
        )
        .unwrap();
        m
    };
    let cfg = |f: &dyn Fn(&mut LoraConfig)| {
        let mut c = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj"]));
        f(&mut c);
        c
    };
    let table: Vec<(&str, Llama, LoraConfig, &str)> = vec![
        (
            "unknown module",
            base("llama_untied"),
            cfg(&|c| c.modules_to_save = Some(vec!["mlp".into()])),
            "modules_to_save",
        ),
        (
            "LoRA target",
            base("llama_untied"),
            cfg(&|c| c.modules_to_save = Some(vec!["q_proj".into()])),
            "modules_to_save",
        ),
        (
            "quantized",
            q(),
            cfg(&|c| c.modules_to_save = Some(vec!["lm_head".into()])),
            "modules_to_save",
        ),
        (
            "pissa on nf4",
            q(),
            cfg(&|c| c.init_lora_weights = InitLoraWeights::Pissa),
            "init_lora_weights",
        ),
        (
            "pissa_niter_0",
            base("llama_untied"),
            cfg(&|c| c.init_lora_weights = InitLoraWeights::PissaNiter(0)),
            "init_lora_weights",
        ),
        (
            "pissa r too big",
            base("llama_untied"),
            cfg(&|c| {
                c.init_lora_weights = InitLoraWeights::Pissa;
                c.r = 65;
            }),
            "`r`",
        ),
    ];
    for (what, model, c, field) in table {
        let e = get_peft_model_seeded(model, &c, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(field), "{what}: {e}");
    }
}

#[test]
fn init_lora_weights_json_is_peft_s() {
    for (json, v) in [
        ("true", InitLoraWeights::Default),
        ("false", InitLoraWeights::Random),
        ("\"gaussian\"", InitLoraWeights::Gaussian),
        ("\"pissa\"", InitLoraWeights::Pissa),
        ("\"pissa_niter_4\"", InitLoraWeights::PissaNiter(4)),
    ] {
        assert_eq!(serde_json::from_str::<InitLoraWeights>(json).unwrap(), v);
        assert_eq!(serde_json::to_string(&v).unwrap(), json);
    }
    assert!(serde_json::from_str::<InitLoraWeights>("\"pissa_niter_x\"").is_err());
}

/// PiSSA on single matrices against peft: ΔW = s·B·A and W_res (sign-free), and A's rows.
#[test]
fn pissa_matches_peft_on_single_layers() {
    let t = candle_core::safetensors::load(extras().join("pissa_linear.safetensors"), &Device::Cpu)
        .unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    for (name, niter) in [("tall", None), ("wide", None), ("decay", Some(2))] {
        let w = &t[&format!("{name}.W")];
        let (a, b, w_res) = pissa_init(w, 4, 2.0, niter, &mut rng).unwrap();
        let dw = (b.matmul(&a).unwrap() * 2.0).unwrap();
        let peft_dw = (t[&format!("{name}.B")]
            .matmul(&t[&format!("{name}.A")])
            .unwrap()
            * 2.0)
            .unwrap();
        assert!(
            max_abs_diff(&(&w_res + &dw).unwrap(), w) < 1e-6,
            "{name}: W = W_res + ΔW"
        );
        if niter.is_none() {
            let d_dw = max_abs_diff(&dw, &peft_dw);
            let d_res = max_abs_diff(&w_res, &t[&format!("{name}.W_res")]);
            println!("pissa {name}: max |ΔW − peft| {d_dw:.1e}, max |W_res − peft| {d_res:.1e}");
            assert!(d_dw < 1e-5 && d_res < 1e-5, "{name}: {d_dw} {d_res}");
            let abs = |x: &Tensor| x.abs().unwrap();
            assert!(
                max_abs_diff(&abs(&a), &abs(&t[&format!("{name}.A")])) < 1e-5,
                "{name}: A up to signs"
            );
        } else {
            // Randomized: different random starts, so compare each with the best rank-4
            // approximation (the exact PiSSA's ΔW, checked against peft above).
            let (a4, b4, _) = pissa_init(w, 4, 2.0, None, &mut rng).unwrap();
            let best = (b4.matmul(&a4).unwrap() * 2.0).unwrap();
            let (ours, theirs) = (max_abs_diff(&dw, &best), max_abs_diff(&peft_dw, &best));
            println!(
                "pissa {name} niter 2: max |ΔW − best rank 4| ours {ours:.1e}, peft {theirs:.1e}"
            );
            assert!(ours < 5e-3 && theirs < 5e-3, "{ours} {theirs}");
        }
    }
    // The exact SVD's singular values against a known spectrum.
    let u = Tensor::eye(6, DType::F64, &Device::Cpu).unwrap();
    let w = (u
        .narrow(1, 0, 3)
        .unwrap()
        .broadcast_mul(&Tensor::new(&[3.0f64, 2.0, 1.0], &Device::Cpu).unwrap()))
    .unwrap()
    .matmul(&Tensor::eye(3, DType::F64, &Device::Cpu).unwrap())
    .unwrap();
    let (_, s, _) = truncated_svd(&w, 2, None, &mut rng).unwrap();
    assert!(
        (s[0] - 3.0).abs() < 1e-12 && (s[1] - 2.0).abs() < 1e-12,
        "{s:?}"
    );
}

/// A PiSSA adapter saved by peft reloads on the original base (the SVD runs again), peft's
/// converted adapter is plain LoRA, and ours converts the same way.
#[test]
fn pissa_adapters_save_load_and_convert() {
    for case in ["pissa_qv", "pissa_qv_lora"] {
        let dir = extras().join(case);
        let exp = expected(&dir);
        let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
        let peft = load_adapter(base("llama_untied"), &dir).unwrap();
        let d = max_abs_diff(
            &peft.base_model().forward(&ids, None).unwrap(),
            &exp["logits_adapted"],
        );
        println!("{case}: max |ours − peft| {d:.1e}");
        assert!(d < 1e-4, "{case}: {d}");
    }
    let mut c = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj", "v_proj"]));
    c.init_lora_weights = InitLoraWeights::Pissa;
    let ids = Tensor::new(&[[1u32, 5, 9, 20, 17]], &Device::Cpu).unwrap();
    let plain = base("llama_untied").forward(&ids, None).unwrap();
    let peft = get_peft_model_seeded(base("llama_untied"), &c, 3).unwrap();
    assert!(max_abs_diff(&peft.base_model().forward(&ids, None).unwrap(), &plain) < 1e-4);
    let init = tempfile::tempdir().unwrap();
    save_adapter(&peft, init.path(), "default").unwrap();
    for v in peft.trainable_vars() {
        v.set(&(v.as_tensor() * 1.1).unwrap()).unwrap(); // "training"
    }
    let trained = peft.base_model().forward(&ids, None).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_adapter_as_lora(&peft, out.path(), "default", init.path()).unwrap();
    let conv = load_adapter(base("llama_untied"), out.path()).unwrap();
    let cfg = conv.peft_config("default").unwrap();
    assert_eq!(
        (cfg.r, cfg.lora_alpha, cfg.init_lora_weights),
        (8, 16.0, InitLoraWeights::Default)
    );
    let d = max_abs_diff(&conv.base_model().forward(&ids, None).unwrap(), &trained);
    println!("pissa converted to LoRA on the original base: max |diff| {d:.1e}");
    assert!(d < 1e-4, "{d}");
}

fn nf4_untied(compute: DType) -> Llama {
    let mut m = base("llama_untied");
    let q = QuantConfig::nf4_double_quant().with_compute_dtype(compute);
    quantize_model(&mut m, &q).unwrap();
    m
}

/// Merging into NF4 and quantizing again gives bitsandbytes' merged weight (peft's merge into a
/// Linear4bit), and the report's rounding is measured right.
#[test]
fn merge_and_requantize_matches_peft_and_bitsandbytes() {
    let dir = extras().join("qlora_merge");
    let exp = expected(&dir);
    let peft = load_adapter(nf4_untied(DType::F32), &dir).unwrap();
    let paths: Vec<String> = peft.lora_layers().into_iter().map(|(p, _)| p).collect();
    // Our NF4 of the same weights is bitsandbytes' (bit-exact elsewhere); check it here too.
    let mut own = Vec::new();
    for p in &paths {
        let l: &LoraLayer = peft.lora_layer(p).unwrap();
        let q = l.base().quantized().unwrap();
        let w0 = q.dequantize(DType::F32).unwrap();
        assert_eq!(max_abs_diff(&w0, &exp[&format!("before.{p}")]), 0.0, "{p}");
        // Independently: quantize(dequant(W_q) + ΔW) with the same scheme.
        let dw = l.adapters()["default"].delta_weight().unwrap();
        let merged = (&w0 + &dw).unwrap();
        let back = q
            .requantize(&merged, p)
            .unwrap()
            .dequantize(DType::F32)
            .unwrap();
        own.push((p.clone(), back.clone(), max_abs_diff(&merged, &back)));
    }
    let ids = exp["input_ids"].to_dtype(DType::U32).unwrap();
    let (model, report) = peft.merge_and_requantize(true).unwrap();
    assert_eq!(report.layers.len(), 4);
    let py = cases()["qlora_merge"]["rounding"].clone();
    for ((p, back, rounding), r) in own.iter().zip(&report.layers) {
        assert_eq!(&r.path, p);
        let layer = model.linear(p).unwrap();
        assert!(layer.is::<QLinear>(), "{p} stays quantized");
        let w = layer.quantized().unwrap().dequantize(DType::F32).unwrap();
        assert_eq!(
            max_abs_diff(&w, back),
            0.0,
            "{p}: quantize(dequant(W_q) + ΔW)"
        );
        assert_eq!(r.max_abs_rounding, *rounding, "{p}");
        let d_bnb = max_abs_diff(&w, &exp[&format!("merged.{p}")]);
        let want = py[p]["max_abs_merged_minus_requantized"].as_f64().unwrap() as f32;
        println!("{p}: rounding {:.4e} (peft+bnb {want:.4e}), max |ΔW| {:.3e}, max |ours − bnb| {d_bnb:.1e}", r.max_abs_rounding, r.max_abs_delta);
        assert!(d_bnb < 1e-6, "{p}: {d_bnb}");
        assert!((r.max_abs_rounding - want).abs() < 1e-5, "{p}");
    }
    assert!(
        report.warning().starts_with("warning: requantized 4"),
        "{}",
        report.warning()
    );
    let d = max_abs_diff(&model.forward(&ids, None).unwrap(), &exp["logits_merged"]);
    assert!(d < 1e-4, "merged 4-bit logits differ from peft's by {d}");
}

#[test]
fn kbit_preparation_reports_and_the_forward_runs() {
    let mut model = nf4_untied(DType::BF16);
    let model_bf16 = {
        // The same on a bf16 model (the NF4 layers compute in bf16).
        let mut m = load_hf_dir(
            fixtures().join("tiny_hf/llama_untied"),
            DType::BF16,
            &Device::Cpu,
        )
        .unwrap()
        .0;
        quantize_model(
            &mut m,
            &QuantConfig::nf4_double_quant().with_compute_dtype(DType::BF16),
        )
        .unwrap();
        m
    };
    let r32 = prepare_model_for_kbit_training(&mut model, true).unwrap();
    assert!(r32.notes.iter().any(|n| n.contains("f32: nothing to cast")));
    let mut m = model_bf16;
    let r = prepare_model_for_kbit_training(&mut m, true).unwrap();
    println!("{r}");
    assert_eq!(r.quantized.len(), 14); // lm_head skipped, as transformers does
    assert!(r
        .notes
        .iter()
        .any(|n| n.contains("gradient checkpointing") || n.contains("use_gradient_checkpointing")));
    let norms = [&m.norm.weight, &m.layers[0].input_layernorm.weight];
    if r.cast_to_f32.is_empty() {
        // This model's RmsNorm cannot take an f32 gain yet: said so, nothing changed.
        assert!(r.notes.iter().any(|n| n.contains("RmsNorm")), "{r}");
        assert!(norms.iter().all(|w| w.dtype() == DType::BF16));
    } else {
        assert_eq!(r.cast_to_f32.len(), 2 * 2 + 1);
        assert!(norms.iter().all(|w| w.dtype() == DType::F32));
    }
    let ids = Tensor::new(&[[1u32, 5, 9, 20]], &Device::Cpu).unwrap();
    let peft =
        get_peft_model_seeded(m, &LoraConfig::new(4, 8.0, TargetModules::all_linear()), 0).unwrap();
    let logits = peft.base_model().forward(&ids, None).unwrap();
    assert_eq!(logits.dims(), [1, 4, 128]);
}

/// Evaluation mode's copies: made by `eval()` only, the same logits as the training path (to
/// rounding), used until `eval()` is called again, dropped by `train()`; a model never put in
/// evaluation mode reads A and B and keeps its gradients. No getter changes the mode.
#[test]
fn eval_copies_are_exact_and_follow_the_mode() {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::all_linear());
    c.init_lora_weights = InitLoraWeights::Random;
    let mut peft = get_peft_model_seeded(common::tiny(2), &c, 0).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 9, 200, 17]], &Device::Cpu).unwrap();
    let slow = peft.base_model().forward(&ids, None).unwrap();
    let layer = "model.layers.0.self_attn.q_proj";
    let copies = |p: &tunelab::peft::PeftModel| p.lora_layer(layer).unwrap().eval_copies_len();
    assert_eq!(copies(&peft), 0);
    // A loop of one's own on a fresh model: forward + backward reaches A and B.
    let grads = slow.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    let vars = peft.trainable_vars();
    assert_eq!(copies(&peft), 0, "handing out the Vars changes nothing");
    assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()));
    peft.eval();
    assert_eq!(copies(&peft), 1);
    let fast = peft.base_model().forward(&ids, None).unwrap();
    assert!(max_abs_diff(&fast, &slow) < 1e-5);
    for v in &vars {
        v.set(&(v.as_tensor() * 0.5).unwrap()).unwrap();
    }
    let stale = peft.base_model().forward(&ids, None).unwrap();
    assert_eq!(
        max_abs_diff(&stale, &fast),
        0.0,
        "the copies stand until eval() again"
    );
    peft.eval();
    let fresh = peft.base_model().forward(&ids, None).unwrap();
    assert!(
        max_abs_diff(&fresh, &slow) > 1e-3,
        "the update shows after eval()"
    );
    peft.train();
    assert_eq!(copies(&peft), 0);
    let after = peft.base_model().forward(&ids, None).unwrap();
    assert!(max_abs_diff(&after, &fresh) < 1e-5);
    let grads = after.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    assert!(vars.iter().all(|v| grads.get(v.as_tensor()).is_some()));
}

/// `bias = "all"` on a quantized base: the bias trains beside the NF4 weight, the forward
/// starts equal, and requantizing keeps the trained bias.
#[test]
fn biases_train_on_a_quantized_base() {
    let q = || {
        let mut m = base("qwen2");
        quantize_model(&mut m, &QuantConfig::nf4()).unwrap();
        m
    };
    let ids = Tensor::new(&[[1u32, 5, 9, 20, 17]], &Device::Cpu).unwrap();
    let plain = q().forward(&ids, None).unwrap();
    let mut c = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj"]));
    c.bias = LoraBias::All;
    let peft = get_peft_model_seeded(q(), &c, 0).unwrap();
    assert!(max_abs_diff(&peft.base_model().forward(&ids, None).unwrap(), &plain) < 1e-5);
    // qwen2: q, k, v biases in 2 layers.
    assert_eq!(peft.trained_biases().len(), 6);
    let key = "base_model.model.model.layers.0.self_attn.k_proj.bias";
    let b = peft.varmap().data().lock().unwrap()[key].clone();
    let grads = peft
        .base_model()
        .forward(&ids, None)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(b.as_tensor()).is_some());
    b.set(&(b.as_tensor() + 1.0).unwrap()).unwrap();
    let (model, report) = peft.merge_and_requantize(false).unwrap();
    assert_eq!(report.layers.len(), 2);
    let k = model.linear("model.layers.0.self_attn.k_proj").unwrap();
    assert_eq!(max_abs_diff(k.bias().unwrap(), b.as_tensor()), 0.0);
    let qp = model.linear("model.layers.0.self_attn.q_proj").unwrap();
    assert!(qp.is::<QLinear>() && qp.is_quantized());
}
