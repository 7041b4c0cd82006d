//! LoRA through the Linear seam: init, merge/unmerge, gradients, QLoRA, trainable counts.

mod common;

use candle_core::{DType, Device, Tensor};
use tunelab::peft::PeftMethod;
use tunelab::peft::{get_peft_model_seeded, InitLoraWeights, LoraConfig, LoraLayer, TargetModules};
use tunelab::quant::{quantize_model, QuantConfig};
use tunelab::{Config, Llama};

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 200, 17, 3, 44, 90]], &Device::Cpu).unwrap()
}

use common::tiny;

/// The cases: r ≠ α throughout, rsLoRA, several target styles.
fn cases() -> Vec<(&'static str, LoraConfig)> {
    let random = |mut c: LoraConfig| {
        c.init_lora_weights = InitLoraWeights::Random;
        c
    };
    let mut rs = LoraConfig::new(4, 16.0, TargetModules::all_linear());
    rs.use_rslora = true;
    let mut layers = LoraConfig::new(
        2,
        4.0,
        TargetModules::Pattern(r".*\.mlp\.(gate|up)_proj".into()),
    );
    layers.layers_to_transform = Some(vec![1]);
    let mut pattern = LoraConfig::new(8, 4.0, TargetModules::all_linear());
    pattern.rank_pattern.insert("down_proj".into(), 2);
    pattern.alpha_pattern.insert("down_proj".into(), 32.0);
    let mut dora = LoraConfig::new(
        4,
        8.0,
        TargetModules::names(["q_proj", "k_proj", "v_proj", "o_proj"]),
    );
    dora.use_dora = true;
    vec![
        (
            "r4 a8 q,v",
            random(LoraConfig::new(
                4,
                8.0,
                TargetModules::names(["q_proj", "v_proj"]),
            )),
        ),
        ("r4 a16 rslora all-linear", random(rs)),
        ("r2 a4 regex layer 1", random(layers)),
        ("r8 a4 patterns", random(pattern)),
        ("r4 a8 dora attention", random(dora)),
    ]
}

#[test]
fn zero_b_at_init_leaves_the_model_unchanged() {
    let base = tiny(3).forward(&ids(), None).unwrap();
    let cfg = LoraConfig::new(4, 8.0, TargetModules::all_linear());
    let peft = get_peft_model_seeded(tiny(3), &cfg, 1).unwrap();
    let y = peft.base_model().forward(&ids(), None).unwrap();
    assert_eq!(common::max_abs_diff(&y, &base), 0.0);
    // DoRA: m = ‖W‖ at init, so m/‖W‖ = 1 up to rounding.
    let mut dora = cfg.clone();
    dora.use_dora = true;
    let peft = get_peft_model_seeded(tiny(3), &dora, 1).unwrap();
    let y = peft.base_model().forward(&ids(), None).unwrap();
    assert!(common::max_rel_diff(&y, &base) < 1e-5);
}

#[test]
fn merged_equals_unmerged_and_unmerge_restores() {
    for (name, cfg) in cases() {
        let mut peft = get_peft_model_seeded(tiny(5), &cfg, 7).unwrap();
        let base_w: Vec<Tensor> = peft
            .lora_layers()
            .iter()
            .map(|(_, l)| l.base().dense_weight().unwrap())
            .collect();
        let before = peft.base_model().forward(&ids(), None).unwrap();
        let plain = tiny(5).forward(&ids(), None).unwrap();
        assert!(
            common::max_abs_diff(&before, &plain) > 1e-3,
            "{name}: the adapter changes the output"
        );
        for (_, l) in peft.lora_layers() {
            assert!(l.verify_merge().unwrap() < 1e-6, "{name}: verify_merge");
        }
        peft.merge(true).unwrap();
        let merged = peft.base_model().forward(&ids(), None).unwrap();
        assert!(
            common::max_rel_diff(&merged, &before) < 1e-5,
            "{name}: merged vs unmerged"
        );
        // Idempotent: a second merge changes nothing.
        peft.merge(true).unwrap();
        let again = peft.base_model().forward(&ids(), None).unwrap();
        assert_eq!(
            common::max_abs_diff(&again, &merged),
            0.0,
            "{name}: merge twice"
        );
        peft.unmerge().unwrap();
        for ((_, l), w) in peft.lora_layers().iter().zip(&base_w) {
            let d = common::max_abs_diff(&l.base().dense_weight().unwrap(), w);
            assert!(d < 1e-6, "{name}: unmerge restores the weight ({d})");
        }
        let unmerged = peft.base_model().forward(&ids(), None).unwrap();
        assert!(
            common::max_rel_diff(&unmerged, &before) < 1e-5,
            "{name}: after unmerge"
        );
        // merge_and_unload gives a plain model with the same output.
        let plain = peft.merge_and_unload(true).unwrap();
        assert!(plain.linears().iter().all(|(_, l)| l.kind() == "dense"));
        let y = plain.forward(&ids(), None).unwrap();
        assert!(
            common::max_rel_diff(&y, &before) < 1e-5,
            "{name}: merge_and_unload"
        );
    }
}

#[test]
fn merged_weight_is_w_plus_scaled_ba() {
    // The PEFT notebook's check by hand: W + (α/r)·B·A equals the merged weight.
    let (_, cfg) = cases().remove(0);
    let peft = get_peft_model_seeded(tiny(2), &cfg, 3).unwrap();
    let path = "model.layers.0.self_attn.q_proj";
    let l = peft.lora_layer(path).unwrap();
    let a = &l.adapters()["default"];
    assert_eq!(a.scaling, 8.0 / 4.0);
    let expected = (l.base().dense_weight().unwrap()
        + (a.lora_b.as_tensor().matmul(a.lora_a.as_tensor()).unwrap() * 2.0).unwrap())
    .unwrap();
    let merged = peft.merge_and_unload(false).unwrap();
    let w = merged.linear(path).unwrap().dense_weight().unwrap();
    assert!(common::max_abs_diff(&w, &expected) < 1e-6);
}

#[test]
fn only_the_adapters_get_gradients() {
    for (_, cfg) in [cases().remove(1), cases().remove(4)] {
        let cfg = &cfg;
        let peft = get_peft_model_seeded(tiny(4), cfg, 9).unwrap();
        let logits = peft.base_model().forward(&ids(), None).unwrap();
        let loss = logits.sqr().unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = peft.trainable_vars();
        let per_layer = if cfg.use_dora { 3 } else { 2 };
        assert_eq!(vars.len(), per_layer * peft.lora_layers().len());
        for v in &vars {
            let g = grads
                .get(v.as_tensor())
                .expect("every adapter tensor has a gradient");
            assert!(
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            );
        }
        for (path, l) in peft.lora_layers() {
            let base = l.base().get::<tunelab::Dense>().unwrap();
            assert!(
                grads.get(base.weight()).is_none(),
                "{path}: base weight got a gradient"
            );
        }
        assert!(grads.get(&peft.base_model().embed_tokens).is_none());
    }
}

#[test]
fn qlora_forward_equals_lora_on_the_dequantized_base() {
    let (_, cfg) = cases().remove(1);
    let mut q = tiny(6);
    quantize_model(&mut q, &QuantConfig::nf4_double_quant()).unwrap();
    // The same model with dense layers holding the dequantized weights.
    let mut d = tiny(6);
    for (path, l) in q.linears() {
        let w = l.dense_weight().unwrap();
        d.replace_linear(
            &path,
            tunelab::Linear::new(tunelab::Dense::new(w, l.bias().cloned()).unwrap()),
        )
        .unwrap();
    }
    let pq = get_peft_model_seeded(q, &cfg, 11).unwrap();
    let pd = get_peft_model_seeded(d, &cfg, 11).unwrap();
    assert!(pq
        .base_model()
        .linear("model.layers.0.mlp.up_proj")
        .unwrap()
        .kind()
        .starts_with("lora(nf4"));
    let yq = pq.base_model().forward(&ids(), None).unwrap();
    let yd = pd.base_model().forward(&ids(), None).unwrap();
    assert!(common::max_rel_diff(&yq, &yd) < 1e-5);
}

#[test]
fn adapters_by_name_and_disabled() {
    let cfg = cases().remove(0).1;
    let mut peft = get_peft_model_seeded(tiny(8), &cfg, 1).unwrap();
    let base = tiny(8).forward(&ids(), None).unwrap();
    let first = peft.base_model().forward(&ids(), None).unwrap();
    peft.add_adapter_seeded("second", &cfg, 2).unwrap();
    assert_eq!(peft.active_adapter(), "second");
    let second = peft.base_model().forward(&ids(), None).unwrap();
    assert!(common::max_abs_diff(&first, &second) > 1e-4);
    let off = peft
        .with_adapters_disabled(|m| m.forward(&ids(), None).unwrap())
        .unwrap();
    assert_eq!(common::max_abs_diff(&off, &base), 0.0);
    peft.set_adapter("default").unwrap();
    assert_eq!(
        common::max_abs_diff(&peft.base_model().forward(&ids(), None).unwrap(), &first),
        0.0
    );
    peft.delete_adapter("second").unwrap();
    assert_eq!(peft.adapter_names(), vec!["default".to_string()]);
    assert!(peft.set_adapter("second").is_err());
    let l: &LoraLayer = peft.lora_layer("model.layers.0.self_attn.q_proj").unwrap();
    assert_eq!(l.adapters().len(), 1);
}

#[test]
fn bad_configs_are_named() {
    let e = get_peft_model_seeded(
        tiny(1),
        &LoraConfig::new(4, 8.0, TargetModules::names(["qq_proj"])),
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("target_modules") && e.contains("qq_proj") && e.contains("matched no"),
        "{e}"
    );
    let e = get_peft_model_seeded(
        tiny(1),
        &LoraConfig::new(0, 8.0, TargetModules::all_linear()),
        0,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("`r`"), "{e}");
}

#[test]
fn trainable_parameters_of_smollm2() {
    // SmolLM2-135M, r = 16 on all linear layers: per layer 16·(576+576)·2 (q, o)
    // + 16·(576+192)·2 (k, v) + 16·(576+1536)·3 (gate, up, down) = 162,816; × 30 layers.
    let cfg = Config::preset("smollm2-135m").unwrap();
    let model = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 0).unwrap();
    let peft = get_peft_model_seeded(
        model,
        &LoraConfig::new(16, 32.0, TargetModules::all_linear()),
        0,
    )
    .unwrap();
    let t = peft.trainable_parameters();
    assert_eq!(t.trainable, 4_884_480);
    assert_eq!(t.all, 134_515_008 + 4_884_480);
    peft.print_trainable_parameters();
}

#[test]
fn safe_merge_refuses_a_non_finite_update() {
    let cfg = cases().remove(0).1;
    let mut peft = get_peft_model_seeded(tiny(1), &cfg, 0).unwrap();
    let a = peft
        .lora_layer("model.layers.1.self_attn.v_proj")
        .unwrap()
        .adapters()["default"]
        .lora_a
        .clone();
    let nan = (a.as_tensor().ones_like().unwrap() * f64::NAN).unwrap();
    a.set(&nan).unwrap();
    let e = peft.merge(true).unwrap_err().to_string();
    assert!(e.contains("`default`") && e.contains("NaN"), "{e}");
}

/// Asking for an adapter the model does not have is an [`tunelab::Error::UnknownAdapter`] that
/// lists the adapters it has.
#[test]
fn unknown_adapter_is_a_typed_error() {
    let cfg = LoraConfig::new(2, 4.0, TargetModules::names(["q_proj"]));
    let peft = get_peft_model_seeded(tiny(0), &cfg, 0).unwrap();
    let err = peft.peft_config("other").unwrap_err();
    match &err {
        tunelab::Error::UnknownAdapter { name, available } => {
            assert_eq!(name, "other");
            assert_eq!(available, &["default".to_string()]);
        }
        other => panic!("expected Error::UnknownAdapter, found {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("`other`") && msg.contains("`default`"),
        "{msg}"
    );
}
