//! The decoder on the tiny preset: save/load round trip, the linear seam, KV cache, fused vs
//! differentiable kernels, masks, and the errors a user can cause. No network, no big model.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};
use tunelab::model::config::Config;
use tunelab::model::linear::{Dense, Linear};
use tunelab::model::llama::{ForwardOptions, KvCache, Llama};
use tunelab::model::load::{self, gguf_name, unpermute_rotary};

mod common;
use common::{max_abs_diff, tiny};

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn tiny_round_trips_bit_identically() {
    let m = tiny(1);
    let dir = tempfile::tempdir().unwrap();
    load::save_pretrained(&m, None, dir.path()).unwrap();
    let (back, tok) = load::load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert!(tok.is_none());
    assert_eq!(back.config(), m.config());
    let a = load::state_dict(&m).unwrap();
    let b = load::state_dict(&back).unwrap();
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        let x: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[k].flatten_all().unwrap().to_vec1().unwrap();
        let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
        let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
        assert_eq!(xb, yb, "tensor {k} changed in the round trip");
    }
    // A tied lm_head is not saved, as transformers does.
    assert!(!a.contains_key("lm_head.weight"));
    let x = ids(&[1, 2, 3, 4, 5]);
    let l1 = m.forward(&x, None).unwrap();
    let l2 = back.forward(&x, None).unwrap();
    assert_eq!(max_abs_diff(&l1, &l2), 0.0);
    // The config.json is what transformers reads.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    assert_eq!(cfg["num_key_value_heads"], 2);
    // No temp files are left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

#[test]
fn round_trip_in_bf16_and_f16() {
    for dtype in [DType::BF16, DType::F16] {
        let m =
            Llama::init_random(&Config::preset("tiny").unwrap(), dtype, &Device::Cpu, 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        load::save_pretrained(&m, None, dir.path()).unwrap();
        let (back, _) = load::load_hf_dir(dir.path(), dtype, &Device::Cpu).unwrap();
        let x = ids(&[7, 8, 9]);
        assert_eq!(
            max_abs_diff(
                &m.forward(&x, None).unwrap(),
                &back.forward(&x, None).unwrap()
            ),
            0.0
        );
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            cfg["torch_dtype"],
            if dtype == DType::BF16 {
                "bfloat16"
            } else {
                "float16"
            }
        );
    }
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    let m = tiny(2);
    let seq = [3u32, 14, 15, 92, 65, 35, 89, 79];
    let full = m.forward(&ids(&seq), None).unwrap(); // (1, T, V), differentiable kernels
    let mut cache = KvCache::new();
    // Prefill 5 tokens in one call, then one at a time (fused kernels).
    let first = m.forward(&ids(&seq[..5]), Some(&mut cache)).unwrap();
    assert_eq!(cache.seq_len(), 5);
    let d = max_abs_diff(&first, &full.narrow(1, 0, 5).unwrap());
    assert!(d < 1e-5, "prefill differs from the full forward by {d}");
    for (i, &t) in seq.iter().enumerate().skip(5) {
        let step = m.forward_last(&ids(&[t]), Some(&mut cache)).unwrap(); // (1, V)
        let want = full.narrow(1, i, 1).unwrap().squeeze(1).unwrap();
        let d = max_abs_diff(&step, &want);
        assert!(d < 1e-5, "cached step {i} differs by {d}");
    }
    assert_eq!(cache.seq_len(), seq.len());
}

#[test]
fn left_padding_is_masked() {
    let m = tiny(4);
    let real = [5u32, 6, 7, 8];
    let alone = m.forward(&ids(&real), None).unwrap();
    // Batch of two rows: the real sequence left-padded by 3, and another sequence.
    let padded = Tensor::new(
        &[[0u32, 0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15]],
        &Device::Cpu,
    )
    .unwrap();
    let mask = Tensor::new(
        &[[0u32, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]],
        &Device::Cpu,
    )
    .unwrap();
    let pos = Tensor::new(
        &[[0u32, 0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6]],
        &Device::Cpu,
    )
    .unwrap();
    let opts = ForwardOptions {
        position_ids: Some(pos),
        attention_mask: Some(mask),
        segment_ids: None,
    };
    let out = m.forward_with(&padded, &opts, None).unwrap();
    let row0 = out.narrow(0, 0, 1).unwrap().narrow(1, 3, 4).unwrap();
    let d = max_abs_diff(&row0, &alone);
    assert!(d < 1e-5, "padded row differs by {d}");
}

#[test]
fn packed_documents_do_not_attend_to_each_other() {
    let m = tiny(5);
    let a = [11u32, 12, 13];
    let b = [21u32, 22, 23, 24];
    let la = m.forward(&ids(&a), None).unwrap();
    let lb = m.forward(&ids(&b), None).unwrap();
    let packed = ids(&[11, 12, 13, 21, 22, 23, 24]);
    let opts = ForwardOptions {
        position_ids: Some(ids(&[0, 1, 2, 0, 1, 2, 3])),
        attention_mask: None,
        segment_ids: Some(ids(&[0, 0, 0, 1, 1, 1, 1])),
    };
    let out = m.forward_with(&packed, &opts, None).unwrap();
    assert!(max_abs_diff(&out.narrow(1, 0, 3).unwrap(), &la) < 1e-5);
    assert!(max_abs_diff(&out.narrow(1, 3, 4).unwrap(), &lb) < 1e-5);
}

#[test]
fn gradients_reach_through_the_differentiable_path() {
    // A trainable weight in place of one projection: its gradient must be non-zero, i.e. the
    // norm, RoPE and softmax on the way are differentiable.
    let mut m = tiny(6);
    let w = candle_core::Var::from_tensor(
        &m.linear("model.layers.0.self_attn.q_proj")
            .unwrap()
            .layer()
            .dense_weight()
            .unwrap(),
    )
    .unwrap();
    m.replace_linear(
        "model.layers.0.self_attn.q_proj",
        Linear::new(Dense::new(w.as_tensor().clone(), None).unwrap()),
    )
    .unwrap();
    let logits = m.forward(&ids(&[1, 2, 3, 4]), None).unwrap();
    let loss = candle_nn::loss::cross_entropy(
        &logits.squeeze(0).unwrap(),
        &Tensor::new(&[2u32, 3, 4, 5], &Device::Cpu).unwrap(),
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(w.as_tensor())
        .expect("q_proj weight has a gradient");
    let norm = g
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(norm > 0.0);
}

#[test]
fn linear_seam_enumerates_and_replaces_by_path() {
    let mut m = tiny(7);
    let paths = m.linear_paths();
    assert_eq!(paths.len(), 2 * 7 + 1);
    assert_eq!(paths[0], "model.layers.0.self_attn.q_proj");
    assert_eq!(paths[6], "model.layers.0.mlp.down_proj");
    assert_eq!(paths.last().unwrap(), "lm_head");
    let x = ids(&[1, 2, 3]);
    let before = m.forward(&x, None).unwrap();
    // Replacing a layer by a copy of itself changes nothing; by zeros changes the output.
    let w = m
        .linear("model.layers.1.mlp.up_proj")
        .unwrap()
        .layer()
        .dense_weight()
        .unwrap();
    let old = m
        .replace_linear(
            "model.layers.1.mlp.up_proj",
            Linear::new(Dense::new(w.zeros_like().unwrap(), None).unwrap()),
        )
        .unwrap();
    assert!(max_abs_diff(&m.forward(&x, None).unwrap(), &before) > 0.0);
    m.replace_linear("model.layers.1.mlp.up_proj", old).unwrap();
    assert_eq!(max_abs_diff(&m.forward(&x, None).unwrap(), &before), 0.0);
    // map_linear hands the old layer to a closure.
    m.map_linear("lm_head", Ok).unwrap();
    // Wrong shape and unknown paths are errors that say what was expected.
    let bad = Linear::new(
        Dense::new(
            Tensor::zeros((3, 3), DType::F32, &Device::Cpu).unwrap(),
            None,
        )
        .unwrap(),
    );
    let e = m
        .replace_linear("model.layers.0.self_attn.k_proj", bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("k_proj") && e.contains("[32, 64]"), "{e}");
    let e = m
        .linear("model.layers.9.self_attn.q_proj")
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.9.self_attn.q_proj"), "{e}");
}

#[test]
fn gguf_names_and_rotary_permutation() {
    assert_eq!(
        gguf_name("model.layers.3.self_attn.o_proj.weight").unwrap(),
        "blk.3.attn_output.weight"
    );
    assert_eq!(
        gguf_name("model.layers.0.post_attention_layernorm.weight").unwrap(),
        "blk.0.ffn_norm.weight"
    );
    assert_eq!(gguf_name("lm_head.weight").unwrap(), "output.weight");
    assert!(gguf_name("model.layers.0.foo.weight").is_none());
    // llama.cpp's converter: W.reshape(h, 2, hd/2, in).swapaxes(1, 2).reshape(out, in).
    let (h, hd, inp) = (3usize, 4usize, 2usize);
    let w = Tensor::arange(0f32, (h * hd * inp) as f32, &Device::Cpu)
        .unwrap()
        .reshape((h * hd, inp))
        .unwrap();
    let permuted = w
        .reshape((h, 2, hd / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((h * hd, inp))
        .unwrap();
    // Row order of head 0 after permutation: 0, 2, 1, 3 (halves interleaved).
    let rows: Vec<f32> = permuted
        .narrow(1, 0, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(&rows[..4], &[0.0, 4.0, 2.0, 6.0]);
    let back = unpermute_rotary(&permuted, h).unwrap();
    assert_eq!(max_abs_diff(&back, &w), 0.0);
}

#[test]
fn rope_scaling_llama3_frequencies() {
    // transformers' _compute_llama3_parameters for Llama 3.1 (factor 8, low 1, high 4, 8192):
    // the highest frequencies are unchanged, the lowest divided by 8.
    let s = tunelab::model::config::Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };
    let plain = tunelab::model::llama::rope_inv_freq(128, 500_000.0, None);
    let scaled = tunelab::model::llama::rope_inv_freq(128, 500_000.0, Some(&s));
    assert_eq!(plain[0], scaled[0]);
    assert!((scaled[63] - plain[63] / 8.0).abs() < 1e-12);
    // A middle frequency is smoothly interpolated between the two.
    let mid = (0..64).find(|&i| {
        let wl = 2.0 * std::f32::consts::PI / plain[i];
        wl > 2048.0 && wl < 8192.0
    });
    let i = mid.expect("a frequency in the smoothing band");
    assert!(scaled[i] < plain[i] && scaled[i] > plain[i] / 8.0);
}

#[test]
fn missing_config_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = load::load_hf_dir(dir.path(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains(&dir.path().display().to_string()),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let m = tiny(8);
    let dir = tempfile::tempdir().unwrap();
    load::save_pretrained(&m, None, dir.path()).unwrap();
    let f = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load::load_hf_dir(dir.path(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // A header cut in the middle too.
    std::fs::write(&f, &bytes[..20]).unwrap();
    let e = load::load_hf_dir(dir.path(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_tensor_shape_is_named() {
    let m = tiny(9);
    let dir = tempfile::tempdir().unwrap();
    load::save_pretrained(&m, None, dir.path()).unwrap();
    // Claim a wider model in config.json: every tensor is now the wrong shape.
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    std::fs::write(&p, text).unwrap();
    let e = load::load_hf_dir(dir.path(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[96, 64]")
            && e.contains("[128, 64]"),
        "{e}"
    );
}

#[test]
fn sharded_checkpoint_loads() {
    let m = tiny(10);
    let dir = tempfile::tempdir().unwrap();
    common::save_sharded(&m, dir.path());
    let (back, _) = load::load_hf_dir(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let x = ids(&[4, 5, 6]);
    assert_eq!(
        max_abs_diff(
            &m.forward(&x, None).unwrap(),
            &back.forward(&x, None).unwrap()
        ),
        0.0
    );
}

#[test]
fn gguf_of_unsupported_architecture_is_named() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt2.gguf");
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let arch = Value::String("gpt2".into());
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(f);
    let e = load::load_gguf(&path, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpt2.gguf") && e.contains("general.architecture") && e.contains("`gpt2`"),
        "{e}"
    );
    // Not a GGUF at all.
    std::fs::write(&path, b"hello").unwrap();
    let e = load::load_gguf(&path, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("gpt2.gguf") && e.contains("GGUF"), "{e}");
}

#[test]
fn too_long_input_is_an_error_not_a_panic() {
    let m = tiny(11);
    let ctx = m.config().max_position_embeddings;
    let long: Vec<u32> = (0..(ctx as u32 + 1)).map(|i| i % 200).collect();
    let e = m.forward(&ids(&long), None).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{}", ctx + 1)) && e.contains("max_position_embeddings"),
        "{e}"
    );
    let e = m.forward(&ids(&[300]), None).unwrap_err().to_string();
    assert!(e.contains("300") && e.contains("vocabulary"), "{e}");
}

#[test]
fn memory_weights_check_shapes() {
    let m = tiny(12);
    let sd = load::state_dict(&m).unwrap();
    let mut tensors: HashMap<String, Tensor> = sd.into_iter().collect();
    let mut w = load::MemoryWeights {
        origin: "mem".into(),
        tensors: tensors.clone(),
    };
    let back = Llama::load(m.config(), &mut w, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.num_parameters(), m.num_parameters());
    tensors.remove("model.norm.weight");
    let mut w = load::MemoryWeights {
        origin: "mem".into(),
        tensors,
    };
    let e = Llama::load(m.config(), &mut w, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.norm.weight"), "{e}");
    // softmax sanity for the logits: finite everywhere.
    let l = back.forward(&ids(&[1, 2]), None).unwrap();
    let s = candle_nn::ops::softmax(&l, D::Minus1)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((s - 2.0).abs() < 1e-4);
}

/// A path that names no projection is an [`tunelab::Error::UnknownLayer`] carrying the path and
/// the number of layers, so a caller can match on it.
#[test]
fn unknown_layer_path_is_a_typed_error() {
    let m = tiny(0);
    let layers = m.config().num_hidden_layers;
    let path = format!("model.layers.{layers}.self_attn.q_proj");
    let err = m.linear(&path).unwrap_err();
    match &err {
        tunelab::Error::UnknownLayer { path: p, layers: n } => {
            assert_eq!(p, &path);
            assert_eq!(*n, layers);
        }
        other => panic!("expected Error::UnknownLayer, found {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&path) && msg.contains(&format!("layers 0..{layers}")),
        "{msg}"
    );
}
