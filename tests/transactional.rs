//! Edits of the model are all-or-nothing: a wrap, an adapter or a quantization that fails
//! halfway through the model leaves it exactly as it was — every logit bit for bit.

mod common;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor, Var};
use tunelab::model::config::Config;
use tunelab::peft::{
    get_peft_model_seeded, InitLoraWeights, LoraAdapter, LoraConfig, LoraLayer, PeftMethod,
    TargetModules,
};
use tunelab::quant::{quantize_model, quantize_model_with, QuantConfig, QuantScheme};
use tunelab::{Error, Linear, LinearLayer, Llama};

fn ids() -> Tensor {
    Tensor::new(&[[1u32, 5, 9, 200, 17, 3, 44]], &Device::Cpu).unwrap()
}

/// The logits as bits, so that "the same" means the same float bit patterns.
fn logit_bits(model: &Llama) -> Vec<u32> {
    model
        .forward(&ids(), None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn kinds(model: &Llama) -> Vec<String> {
    model
        .linears()
        .iter()
        .map(|(_, l)| l.kind().into_owned())
        .collect()
}

/// A LoRA layer around `base` whose B is not zero, so that it changes the logits.
fn lora_around(base: Linear, seed: f64) -> tunelab::Result<Linear> {
    let dev = Device::Cpu;
    let (out, inp) = (base.out_features(), base.in_features());
    let mut l = LoraLayer::new(base);
    l.add_adapter(
        "default",
        LoraAdapter {
            r: 2,
            alpha: 4.0,
            scaling: 2.0,
            dropout: 0.0,
            lora_a: Var::from_tensor(&(Tensor::ones((2, inp), DType::F32, &dev)? * seed)?)?,
            lora_b: Var::from_tensor(&(Tensor::ones((out, 2), DType::F32, &dev)? * 0.01)?)?,
            magnitude: None,
        },
    )?;
    Ok(Linear::new(l))
}

#[test]
fn a_failing_map_linear_keeps_the_layer() {
    let mut model = common::tiny(1);
    let before = logit_bits(&model);
    let path = "model.layers.1.mlp.down_proj";
    let e = model
        .map_linear(path, |l| {
            let _wrapped = lora_around(l, 0.1)?; // built, then the closure fails
            Err(Error::Input("fails after wrapping".into()))
        })
        .unwrap_err();
    assert!(e.to_string().contains("fails after wrapping"), "{e}");
    assert_eq!(model.linear(path).unwrap().kind(), "dense");
    assert_eq!(logit_bits(&model), before);
    // A replacement of the wrong width is refused and changes nothing either.
    let e = model
        .map_linear(path, |_| {
            Ok(Linear::new(tunelab::Dense::new(
                Tensor::zeros((3, 3), DType::F32, &Device::Cpu)?,
                None,
            )?))
        })
        .unwrap_err();
    assert!(e.to_string().contains(path), "{e}");
    assert_eq!(logit_bits(&model), before);
    // And a wrap that succeeds does change the logits (the check above can see a change).
    model.map_linear(path, |l| lora_around(l, 0.1)).unwrap();
    assert_eq!(model.linear(path).unwrap().kind(), "lora(dense)");
    assert_ne!(logit_bits(&model), before);
}

#[test]
fn an_edit_that_fails_halfway_through_the_model_is_undone() {
    let mut model = common::tiny(2);
    let before = logit_bits(&model);
    let kinds_before = kinds(&model);
    let paths = model.linear_paths();
    let half = paths.len() / 2;
    let e = model
        .edit(|m| {
            for (i, p) in paths.iter().enumerate() {
                if i == half {
                    return Err(Error::Input(format!("cannot wrap `{p}`")));
                }
                m.map_linear(p, |l| lora_around(l, 0.05))?;
            }
            Ok(())
        })
        .unwrap_err();
    assert!(e.to_string().contains(&paths[half]), "{e}");
    assert_eq!(kinds(&model), kinds_before);
    assert_eq!(logit_bits(&model), before);
}

/// PiSSA replaces each base weight by its residual as it goes; the rank is too large for
/// `k_proj` (32 rows), the second layer it reaches. The first adapter stays, the model is as
/// it was.
#[test]
fn add_adapter_that_fails_halfway_leaves_the_peft_model_as_it_was() {
    let mut first = LoraConfig::new(4, 8.0, TargetModules::names(["v_proj"]));
    first.init_lora_weights = InitLoraWeights::Random;
    let mut peft = get_peft_model_seeded(common::tiny(3), &first, 0).unwrap();
    let before = logit_bits(peft.base_model());
    let kinds_before = kinds(peft.base_model());
    let vars_before = peft.varmap().all_vars().len();
    let mut bad = LoraConfig::new(48, 16.0, TargetModules::all_linear());
    bad.init_lora_weights = InitLoraWeights::Pissa;
    let e = peft.add_adapter_seeded("pissa", &bad, 0).unwrap_err();
    assert!(e.to_string().contains("min(out, in) = 32"), "{e}");
    assert_eq!(kinds(peft.base_model()), kinds_before);
    assert_eq!(logit_bits(peft.base_model()), before);
    assert_eq!(peft.adapter_names(), vec!["default".to_string()]);
    assert_eq!(peft.active_adapter(), "default");
    assert_eq!(peft.varmap().all_vars().len(), vars_before);
    // The model still takes a good second adapter.
    let mut good = bad.clone();
    good.r = 8;
    peft.add_adapter_seeded("pissa", &good, 0).unwrap();
    assert_eq!(peft.adapter_names().len(), 2);
}

/// GGML's q4_0 needs `in_features` to be a multiple of 32: with an intermediate size of 80,
/// `down_proj` of layer 0 fails after six projections were quantized.
#[test]
fn quantize_model_that_fails_halfway_is_undone() {
    let mut cfg = Config::preset("tiny").unwrap();
    cfg.intermediate_size = 80;
    let mut model = Llama::init_random(&cfg, DType::F32, &Device::Cpu, 4).unwrap();
    let before = logit_bits(&model);
    let kinds_before = kinds(&model);
    let e = quantize_model_with(
        &mut model,
        &QuantScheme::Ggml(GgmlDType::Q4_0),
        &QuantConfig::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("model.layers.0.mlp.down_proj"),
        "{e}"
    );
    assert_eq!(kinds(&model), kinds_before);
    assert_eq!(logit_bits(&model), before);
}

/// Quantizing a model with LoRA layers quantizes the base under the adapters: the adapter's
/// ΔW is not folded into the codes, and the logits are those of quantize(W) + ΔW.
#[test]
fn quantizing_under_the_adapters_keeps_them() {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::names(["q_proj", "v_proj"]));
    c.init_lora_weights = InitLoraWeights::Random;
    let mut peft = get_peft_model_seeded(common::tiny(5), &c, 0).unwrap();
    let summary = peft.quantize_base(&QuantConfig::nf4()).unwrap();
    assert!(summary
        .quantized
        .contains(&"model.layers.0.self_attn.q_proj".to_string()));
    let q = peft
        .base_model()
        .linear("model.layers.0.self_attn.q_proj")
        .unwrap();
    assert_eq!(q.kind(), "lora(nf4)");
    // Reference: quantize the plain model the same way, then add the very same adapters.
    let mut plain = common::tiny(5);
    quantize_model(&mut plain, &QuantConfig::nf4()).unwrap();
    for (path, l) in peft.lora_layers() {
        let w_q = plain.linear(&path).unwrap().dense_weight().unwrap();
        let a = &l.adapters()["default"];
        let expected = (&w_q + a.delta_weight().unwrap()).unwrap();
        let got = l.dense_weight().unwrap();
        assert_eq!(common::max_abs_diff(&got, &expected), 0.0, "{path}");
    }
    // The trainable tensors are the same Vars as before quantizing.
    assert_eq!(peft.named_trainable_vars().len(), 8);
}
