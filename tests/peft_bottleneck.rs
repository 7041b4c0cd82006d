//! Bottleneck adapters (Houlsby et al. 2019) through the model's block hook: the model starts
//! equal to the base, the adapter is `h + W_up·f(W_down·h + b_down) + b_up` (checked against
//! plain loops and torch's activations), gradients reach the adapters only, cached generation
//! goes through them, counts follow the formula.

mod common;

use candle_core::{Device, Tensor, Var};
use tunelab::model::llama::{BlockAdapter, KvCache};
use tunelab::peft::PeftMethod;
use tunelab::peft::{get_bottleneck_model, BottleneckConfig, BottleneckModel, NonLinearity};
use tunelab::Config;

use common::{max_abs_diff, max_rel_diff, tiny};

const INPUT: [u32; 6] = [1, 5, 9, 200, 17, 3];

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

/// Seeded U(−0.1, 0.1) values of `v`'s shape.
fn randomize(v: &Var, seed: u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Vec<f32> = (0..v.elem_count())
        .map(|_| rng.random_range(-0.1f32..0.1))
        .collect();
    v.set(&Tensor::from_vec(data, v.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

/// A model whose adapters all have random up-projections and biases (so they do something).
fn active(cfg: &BottleneckConfig, seed: u64) -> BottleneckModel {
    let bm = get_bottleneck_model(tiny(seed), cfg, 1).unwrap();
    for (i, v) in bm.trainable_vars().iter().enumerate() {
        randomize(v, 100 + i as u64);
    }
    bm
}

fn cases() -> Vec<(&'static str, BottleneckConfig)> {
    let mut attn_only = BottleneckConfig::new(8, NonLinearity::Relu);
    attn_only.after_mlp = false;
    let mut mlp_only = BottleneckConfig::new(16, NonLinearity::Tanh);
    mlp_only.after_attention = false;
    vec![
        ("houlsby rf16 swish", BottleneckConfig::default()),
        ("rf4 gelu", BottleneckConfig::new(4, NonLinearity::Gelu)),
        ("rf8 relu attention only", attn_only),
        ("rf16 tanh mlp only", mlp_only),
    ]
}

#[test]
fn at_init_the_model_is_the_base() {
    for (name, cfg) in cases() {
        let base = tiny(3);
        let want = base.forward(&ids(&INPUT), None).unwrap();
        let bm = get_bottleneck_model(tiny(3), &cfg, 7).unwrap();
        let got = bm.base_model().forward(&ids(&INPUT), None).unwrap();
        // W_up = 0, biases 0: h + 0 is h, exactly.
        assert_eq!(max_abs_diff(&got, &want), 0.0, "{name}");
        let mut c = KvCache::new();
        let got = bm.base_model().forward(&ids(&INPUT), Some(&mut c)).unwrap();
        let mut c = KvCache::new();
        let want = base.forward(&ids(&INPUT), Some(&mut c)).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0, "{name} (cached path)");
    }
}

#[test]
fn the_adapter_is_the_houlsby_formula() {
    // torch 2.15.0, float64: F.gelu / F.silu / torch.tanh / torch.relu of [-2, -0.5, 0, 1, 3].
    let x = [-2.0f32, -0.5, 0.0, 1.0, 3.0];
    let table: [(NonLinearity, [f64; 5]); 4] = [
        (NonLinearity::Relu, [0.0, 0.0, 0.0, 1.0, 3.0]),
        (
            NonLinearity::Gelu,
            [
                -0.04550026389635842,
                -0.15426876936299344,
                0.0,
                0.841344746068543,
                2.99595030590511,
            ],
        ),
        (
            NonLinearity::Silu,
            [
                -0.2384058440442351,
                -0.1887703343990727,
                0.0,
                0.7310585786300049,
                2.8577223804672998,
            ],
        ),
        (
            NonLinearity::Tanh,
            [
                -0.9640275800758169,
                -0.46211715726000974,
                0.0,
                0.7615941559557649,
                0.9950547536867305,
            ],
        ),
    ];
    let xt = Tensor::new(&x, &Device::Cpu).unwrap();
    for (f, want) in table {
        let got: Vec<f32> = f.apply(&xt).unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{f:?}: {g} vs {w}");
        }
    }
    // One adapter against plain loops: out = h + W_up·tanh(W_down·h + b_down) + b_up.
    let cfg = BottleneckConfig::new(16, NonLinearity::Tanh); // 64 -> 4
    let bm = active(&cfg, 2);
    let (attn, _) = bm.adapters().layer(1).unwrap();
    let a = attn.unwrap();
    let h = Tensor::randn(0f32, 1.0, (1, 3, 64), &Device::Cpu).unwrap();
    let got: Vec<Vec<f32>> = bm
        .adapters()
        .after_attention(1, &h)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let v = |t: &Var| -> Vec<f32> { t.as_tensor().flatten_all().unwrap().to_vec1().unwrap() };
    let (wd, bd, wu, bu) = (
        v(&a.down_weight),
        v(&a.down_bias),
        v(&a.up_weight),
        v(&a.up_bias),
    );
    let hv: Vec<Vec<f32>> = h.squeeze(0).unwrap().to_vec2().unwrap();
    let mut worst = 0f64;
    for (row, out) in hv.iter().zip(&got) {
        let z: Vec<f64> = (0..4)
            .map(|j| {
                let s: f64 = (0..64).map(|i| wd[j * 64 + i] as f64 * row[i] as f64).sum();
                (s + bd[j] as f64).tanh()
            })
            .collect();
        for o in 0..64 {
            let up: f64 = (0..4).map(|j| wu[o * 4 + j] as f64 * z[j]).sum();
            let want = row[o] as f64 + up + bu[o] as f64;
            worst = worst.max((want - out[o] as f64).abs());
        }
    }
    assert!(worst < 1e-5, "adapter differs from the formula by {worst}");
}

#[test]
fn adapters_change_the_output_and_the_cached_path_agrees() {
    for (name, cfg) in cases() {
        let mut bm = active(&cfg, 4);
        let plain = tiny(4).forward(&ids(&INPUT), None).unwrap();
        let full = bm.base_model().forward(&ids(&INPUT), None).unwrap();
        let moved = max_abs_diff(&full, &plain);
        assert!(moved > 1e-3, "{name}: the adapters do nothing ({moved})");
        // Prefill then one token at a time, through the fused kernels.
        let mut c = KvCache::new();
        let first = bm
            .base_model()
            .forward(&ids(&INPUT[..4]), Some(&mut c))
            .unwrap();
        let mut steps = vec![first];
        for &t in &INPUT[4..] {
            steps.push(bm.base_model().forward(&ids(&[t]), Some(&mut c)).unwrap());
        }
        let cached = Tensor::cat(&steps, 1).unwrap();
        let d = max_rel_diff(&cached, &full);
        assert!(d < 1e-5, "{name}: cached vs uncached {d}");
        // Disabled: the base, exactly; and back on afterwards.
        let off = bm
            .with_adapters_disabled(|m| m.forward(&ids(&INPUT), None))
            .unwrap();
        assert_eq!(max_abs_diff(&off, &plain), 0.0, "{name}");
        let again = bm.base_model().forward(&ids(&INPUT), None).unwrap();
        assert_eq!(max_abs_diff(&again, &full), 0.0, "{name}");
        let unloaded = bm.unload();
        assert!(unloaded.block_adapter().is_none());
        let back = unloaded.forward(&ids(&INPUT), None).unwrap();
        assert_eq!(max_abs_diff(&back, &plain), 0.0, "{name}");
    }
}

fn loss(logits: &Tensor) -> Tensor {
    let t = INPUT.len();
    let l = logits.squeeze(0).unwrap().narrow(0, 0, t - 1).unwrap();
    let y = Tensor::new(&INPUT[1..], &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&l, &y).unwrap()
}

fn grad_sum(grads: &candle_core::backprop::GradStore, v: &Var) -> f32 {
    grads
        .get(v.as_tensor())
        .expect("a trainable Var has a gradient")
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn gradients_reach_only_the_adapters() {
    let cfg = BottleneckConfig::default();
    // At init (W_up = 0) only the up-projection and its bias learn on the first step.
    let bm = get_bottleneck_model(tiny(5), &cfg, 2).unwrap();
    let grads = loss(&bm.base_model().forward(&ids(&INPUT), None).unwrap())
        .backward()
        .unwrap();
    let data = bm.varmap().data().lock().unwrap();
    for (k, v) in data.iter() {
        let s = grad_sum(&grads, v);
        if k.contains("adapter_up") {
            assert!(s > 0.0, "{k}: no gradient");
        } else {
            assert_eq!(
                s, 0.0,
                "{k}: W_up = 0 blocks the gradient to the down-projection"
            );
        }
    }
    drop(data);
    assert!(grads.get(&bm.base_model().embed_tokens).is_none());
    for path in [
        "model.layers.0.self_attn.o_proj",
        "model.layers.1.mlp.down_proj",
    ] {
        let w = bm
            .base_model()
            .linear(path)
            .unwrap()
            .dense_weight()
            .unwrap();
        assert!(grads.get(&w).is_none(), "{path} has a gradient");
    }
    // Once W_up is non-zero every adapter tensor has a gradient.
    let bm = active(&cfg, 5);
    let grads = loss(&bm.base_model().forward(&ids(&INPUT), None).unwrap())
        .backward()
        .unwrap();
    for v in bm.trainable_vars() {
        assert!(grad_sum(&grads, &v) > 0.0, "{:?}", v.dims());
    }
    // A few SGD steps lower the loss.
    use candle_nn::Optimizer;
    let bm = get_bottleneck_model(tiny(5), &cfg, 2).unwrap();
    let mut opt = candle_nn::SGD::new(bm.trainable_vars(), 0.5).unwrap();
    let first = loss(&bm.base_model().forward(&ids(&INPUT), None).unwrap())
        .to_scalar::<f32>()
        .unwrap();
    for _ in 0..5 {
        opt.backward_step(&loss(&bm.base_model().forward(&ids(&INPUT), None).unwrap()))
            .unwrap();
    }
    let last = loss(&bm.base_model().forward(&ids(&INPUT), None).unwrap())
        .to_scalar::<f32>()
        .unwrap();
    println!("bottleneck: loss {first:.4} -> {last:.4}");
    assert!(last < first);
}

#[test]
fn names_shapes_and_counts() {
    let bm = get_bottleneck_model(tiny(1), &BottleneckConfig::default(), 0).unwrap();
    {
        let data = bm.varmap().data().lock().unwrap();
        // AdapterHub's paths; tiny: hidden 64, rf 16 -> 4.
        for (k, shape) in [
            (
                "model.layers.0.attention_adapters.adapters.default.adapter_down.0.weight",
                vec![4, 64],
            ),
            (
                "model.layers.0.attention_adapters.adapters.default.adapter_down.0.bias",
                vec![4],
            ),
            (
                "model.layers.1.output_adapters.adapters.default.adapter_up.weight",
                vec![64, 4],
            ),
            (
                "model.layers.1.output_adapters.adapters.default.adapter_up.bias",
                vec![64],
            ),
        ] {
            assert_eq!(data[k].dims(), shape.as_slice(), "{k}");
        }
        assert_eq!(data.len(), 2 * 2 * 4);
        // W_down ~ U(−1/√64, 1/√64), the rest zero.
        let down = data["model.layers.0.attention_adapters.adapters.default.adapter_down.0.weight"]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(down > 0.1 && down <= 0.125, "{down}");
    }
    // Per adapter C·m + m + m·C + C = 64·4 + 4 + 4·64 + 64 = 580; 2 per layer, 2 layers.
    let t = bm.trainable_parameters();
    assert_eq!(t.trainable, 2 * 2 * 580);
    assert_eq!(t.all, tiny(1).num_parameters() + 2320);
    assert_eq!(
        BottleneckConfig::default().num_trainable_parameters(&Config::preset("tiny").unwrap()),
        2320
    );
    // SmolLM2-135M (hidden 576, 30 layers), Houlsby rf 16: m = 36,
    // 30 · 2 · (576·36 + 36 + 36·576 + 576) = 2,525,040.
    let smol = Config::preset("smollm2-135m").unwrap();
    assert_eq!(
        BottleneckConfig::default().num_trainable_parameters(&smol),
        2_525_040
    );
}

#[test]
fn bad_configs_are_named() {
    for (cfg, field, shown) in [
        (
            BottleneckConfig::new(7, NonLinearity::Relu),
            "reduction_factor",
            "got 7",
        ),
        (
            BottleneckConfig::new(0, NonLinearity::Relu),
            "reduction_factor",
            "got 0",
        ),
        (
            BottleneckConfig {
                after_attention: false,
                after_mlp: false,
                ..Default::default()
            },
            "after_attention",
            "after_mlp",
        ),
    ] {
        let e = get_bottleneck_model(tiny(1), &cfg, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(field) && e.contains(shown), "{e}");
        if field == "reduction_factor" {
            assert!(e.contains("hidden_size 64"), "{e}");
        }
    }
    // One block adapter per model.
    let m = get_bottleneck_model(tiny(1), &BottleneckConfig::default(), 0)
        .unwrap()
        .base_model()
        .clone();
    let e = get_bottleneck_model(m, &BottleneckConfig::default(), 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("already has a block adapter"), "{e}");
    // Serde names as AdapterHub's.
    let cfg: BottleneckConfig =
        serde_json::from_str(r#"{"reduction_factor": 8, "non_linearity": "swish"}"#).unwrap();
    assert_eq!(cfg.non_linearity, NonLinearity::Silu);
    assert!(cfg.after_attention && cfg.after_mlp);
    assert_eq!(
        serde_json::to_value(NonLinearity::Gelu).unwrap(),
        serde_json::json!("gelu")
    );
}
