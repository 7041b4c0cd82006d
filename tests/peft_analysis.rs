//! Slides 31–35 in numbers: LoRA's parameter count, the spectrum of ΔW = s·B·A (against
//! matrices built with known singular values, numpy, and a merged model) and the gradients of
//! slide 35 against candle's autograd.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use tunelab::peft::{
    delta_singular_values, effective_rank, energy_captured, entropy_effective_rank,
    get_peft_model_seeded, lora_gradients, lora_param_count, singular_values_of, InitLoraWeights,
    LoraAdapter, LoraConfig, LoraLayer, TargetModules,
};
use tunelab::{Dense, Linear, LinearLayer};

/// `k` orthonormal columns of length `m` (modified Gram–Schmidt, twice), row-major `[m, k]`.
fn orthonormal(m: usize, k: usize, rng: &mut rand::rngs::StdRng) -> Vec<Vec<f64>> {
    let mut cols: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..m).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    for _pass in 0..2 {
        for j in 0..k {
            for i in 0..j {
                let (lo, hi) = cols.split_at_mut(j);
                let d: f64 = lo[i].iter().zip(&hi[0]).map(|(a, b)| a * b).sum();
                hi[0].iter_mut().zip(&lo[i]).for_each(|(c, q)| *c -= d * q);
            }
            let n = cols[j].iter().map(|v| v * v).sum::<f64>().sqrt();
            cols[j].iter_mut().for_each(|v| *v /= n);
        }
    }
    (0..m)
        .map(|t| (0..k).map(|j| cols[j][t]).collect())
        .collect()
}

/// A row-major f64 matrix as a tensor.
fn mat(rows: &[Vec<f64>]) -> Tensor {
    let (m, n) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (m, n), &Device::Cpu).unwrap()
}

/// `[m, n]` with singular values `s` (descending, length k ≤ min(m, n)): U·diag(s)·Vᵀ.
fn with_singular_values(m: usize, n: usize, s: &[f64], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let k = s.len();
    let u = mat(&orthonormal(m, k, &mut rng));
    let v = mat(&orthonormal(n, k, &mut rng));
    let sd = Tensor::new(s, &Device::Cpu).unwrap();
    u.broadcast_mul(&sd)
        .unwrap()
        .matmul(&v.t().unwrap())
        .unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol, "{what}: {got:?} vs {want:?}");
    }
}

#[test]
fn slide33_parameter_count() {
    let c = lora_param_count(4096, 4096, 16).unwrap();
    assert_eq!((c.lora, c.full), (131_072, 16_777_216));
    assert_eq!(c.ratio, 1.0 / 128.0);
    // A non-square weight: SmolLM2's up_proj, 576 → 1536, at r = 8.
    let c = lora_param_count(1536, 576, 8).unwrap();
    assert_eq!((c.lora, c.full), (8 * (1536 + 576), 1536 * 576));
    let e = lora_param_count(4096, 4096, 0).unwrap_err().to_string();
    assert!(e.contains("`r`"), "{e}");
}

#[test]
fn singular_values_of_constructed_matrices() {
    // (m, n, σ): tall, wide, rank-deficient, and σ spanning six decades (which forming WᵀW
    // would lose).
    let cases: [(usize, usize, Vec<f64>); 4] = [
        (12, 7, vec![5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.25]),
        (7, 12, vec![9.0, 1.0, 1e-3]),
        (20, 20, vec![1.0, 1e-2, 1e-4, 1e-6]),
        (30, 5, vec![2.0, 2.0, 2.0, 1.0, 1.0]),
    ];
    for (i, (m, n, s)) in cases.iter().enumerate() {
        let w = with_singular_values(*m, *n, s, i as u64);
        let mut want = s.clone();
        want.resize((*m).min(*n), 0.0);
        let got = singular_values_of(&w).unwrap();
        assert_close(&got, &want, 1e-9, &format!("{m}x{n}"));
    }
}

#[test]
fn singular_values_match_numpy() {
    // W = np.array([[2., -1., 0.5], [0., 3., 1.], [1., 1., -2.], [4., 0., 0.25], [-1., 2., 1.5]])
    // np.linalg.svd(W, compute_uv=False)   (numpy 2, LAPACK gesdd)
    let w = mat(&[
        vec![2., -1., 0.5],
        vec![0., 3., 1.],
        vec![1., 1., -2.],
        vec![4., 0., 0.25],
        vec![-1., 2., 1.5],
    ]);
    let numpy = [4.854015970077064, 3.8512586439322356, 2.4837141179640727];
    assert_close(&singular_values_of(&w).unwrap(), &numpy, 1e-12, "5x3");
    assert_close(
        &singular_values_of(&w.t().unwrap()).unwrap(),
        &numpy,
        1e-12,
        "3x5",
    );
    // f32 input is read as is and computed in f64.
    let w32 = w.to_dtype(DType::F32).unwrap();
    assert_close(&singular_values_of(&w32).unwrap(), &numpy, 1e-6, "f32");
    assert!(singular_values_of(&Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap()).is_err());
}

/// An adapter with B = U·diag(σ)·Q·diag(d) and A = diag(1/d)·Qᵀ·Vᵀ (Q a rotation of ℝʳ, d
/// positive scales), so that B·A = U·diag(σ)·Vᵀ while neither B nor A is orthogonal.
fn adapter_with_spectrum(out: usize, inp: usize, r: usize, s: &[f64], scaling: f64) -> LoraAdapter {
    let mut rng = rand::rngs::StdRng::seed_from_u64(out as u64 * 1000 + inp as u64);
    let k = s.len();
    let u = orthonormal(out, k, &mut rng);
    let v = orthonormal(inp, k, &mut rng);
    let q = orthonormal(r, r, &mut rng);
    let d: Vec<f64> = (0..r).map(|i| 0.5 + i as f64).collect();
    // B[o][j] = Σ_i u[o][i]·σ_i·q[i][j]·d_j  (rows of Q beyond k unused: B has rank k)
    let b: Vec<Vec<f64>> = (0..out)
        .map(|o| {
            (0..r)
                .map(|j| (0..k).map(|i| u[o][i] * s[i] * q[i][j]).sum::<f64>() * d[j])
                .collect()
        })
        .collect();
    // A[j][c] = (1/d_j)·Σ_i q[i][j]·v[c][i]
    let a: Vec<Vec<f64>> = (0..r)
        .map(|j| {
            (0..inp)
                .map(|c| (0..k).map(|i| q[i][j] * v[c][i]).sum::<f64>() / d[j])
                .collect()
        })
        .collect();
    LoraAdapter {
        r,
        alpha: scaling * r as f64,
        scaling,
        dropout: 0.0,
        lora_a: Var::from_tensor(&mat(&a)).unwrap(),
        lora_b: Var::from_tensor(&mat(&b)).unwrap(),
        magnitude: None,
    }
}

#[test]
fn delta_singular_values_of_constructed_adapters() {
    // (out, in, r, σ of B·A): full rank r, rank below r, and r larger than out.
    let cases: [(usize, usize, usize, Vec<f64>); 3] = [
        (40, 24, 4, vec![3.0, 2.0, 1.0, 0.1]),
        (16, 50, 8, vec![1.0, 1e-3]),
        (3, 10, 5, vec![2.0, 1.0, 0.5]),
    ];
    for (out, inp, r, s) in cases {
        let scaling = 2.5;
        let ad = adapter_with_spectrum(out, inp, r, &s, scaling);
        let mut want: Vec<f64> = s.iter().map(|v| v * scaling).collect();
        want.resize(r.min(out).min(inp), 0.0);
        let got = delta_singular_values(&ad).unwrap();
        assert_close(&got, &want, 1e-9, &format!("{out}x{inp} r={r}"));
        // The same spectrum from the full ΔW = s·B·A.
        let mut full = singular_values_of(&ad.delta_weight().unwrap()).unwrap();
        full.truncate(want.len());
        assert_close(&full, &want, 1e-9, &format!("{out}x{inp} r={r} full"));
        assert_eq!(effective_rank(&got, 1e-6), s.len());
    }
}

#[test]
fn merged_minus_base_has_the_adapters_spectrum() {
    let mut cfg = LoraConfig::new(4, 8.0, TargetModules::all_linear());
    cfg.init_lora_weights = InitLoraWeights::Random;
    let peft = get_peft_model_seeded(common::tiny(8), &cfg, 21).unwrap();
    // q_proj 64→64, k_proj 64→32 (GQA), down_proj 128→64.
    let paths = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.k_proj",
        "model.layers.1.mlp.down_proj",
    ];
    let before: Vec<(Tensor, Vec<f64>)> = paths
        .iter()
        .map(|p| {
            let l = peft.lora_layer(p).unwrap();
            let sv = delta_singular_values(&l.adapters()["default"]).unwrap();
            (l.base().dense_weight().unwrap(), sv)
        })
        .collect();
    let merged = peft.merge_and_unload(true).unwrap();
    for (p, (w, sv)) in paths.iter().zip(before) {
        assert_eq!(sv.len(), 4);
        let dw = (merged.linear(p).unwrap().dense_weight().unwrap() - w).unwrap();
        let full = singular_values_of(&dw).unwrap();
        assert_close(&full[..4], &sv, 1e-5, p);
        assert!(
            full[4..].iter().all(|&v| v < 1e-5),
            "{p}: rank ≤ r: {full:?}"
        );
        assert!(
            sv[3] > 1e-2,
            "{p}: a random adapter has full rank r: {sv:?}"
        );
    }
}

#[test]
fn zero_b_init_has_a_zero_spectrum() {
    let cfg = LoraConfig::new(8, 16.0, TargetModules::names(["q_proj", "v_proj"]));
    let peft = get_peft_model_seeded(common::tiny(1), &cfg, 2).unwrap();
    for (path, l) in peft.lora_layers() {
        let sv = delta_singular_values(&l.adapters()["default"]).unwrap();
        assert_eq!(sv, vec![0.0; 8], "{path}");
        assert_eq!(effective_rank(&sv, 1e-3), 0);
        assert_eq!(entropy_effective_rank(&sv), 0.0);
        assert_eq!(energy_captured(&sv, 4), 0.0);
    }
}

#[test]
fn effective_ranks_and_energy() {
    // np.exp(-(p*np.log(p)).sum()) with p = [3,2,1]/6
    assert!((entropy_effective_rank(&[3.0, 2.0, 1.0]) - 2.749459273997205).abs() < 1e-12);
    assert!((entropy_effective_rank(&[1.0; 5]) - 5.0).abs() < 1e-12);
    assert!((entropy_effective_rank(&[7.0, 0.0, 0.0]) - 1.0).abs() < 1e-15);
    assert_eq!(effective_rank(&[1.0, 0.5, 1e-4], 1e-3), 2);
    assert_eq!(effective_rank(&[1.0, 0.5, 1e-4], 1e-5), 3);
    assert!((energy_captured(&[3.0, 2.0, 1.0], 1) - 9.0 / 14.0).abs() < 1e-15);
    assert!((energy_captured(&[1.0, 3.0, 2.0], 2) - 13.0 / 14.0).abs() < 1e-15);
    assert_eq!(energy_captured(&[3.0, 2.0, 1.0], 10), 1.0);
}

/// L and ∂L/∂h for h `[n, out]`.
type Loss = fn(&Tensor) -> (Tensor, Tensor);

fn sum_of_squares(h: &Tensor) -> (Tensor, Tensor) {
    (h.sqr().unwrap().sum_all().unwrap(), (h * 2.0).unwrap())
}

/// Mean cross-entropy of the rows of h against targets `i mod out`:
/// ∂L/∂h = (softmax(h) − onehot) / n.
fn cross_entropy(h: &Tensor) -> (Tensor, Tensor) {
    let (n, out) = h.dims2().unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| i % out as u32).collect();
    let t = Tensor::new(targets.as_slice(), h.device()).unwrap();
    let loss = candle_nn::loss::cross_entropy(h, &t).unwrap();
    let onehot: Vec<f32> = (0..n * out)
        .map(|i| f32::from(i % out == (i / out) % out))
        .collect();
    let onehot = Tensor::from_vec(onehot, (n, out), h.device()).unwrap();
    let p = candle_nn::ops::softmax_last_dim(&h.detach()).unwrap();
    (loss, ((p - onehot).unwrap() / n as f64).unwrap())
}

#[test]
fn lora_gradients_match_autograd() {
    let losses: [(&str, Loss); 2] = [("Σ h²", sum_of_squares), ("cross-entropy", cross_entropy)];
    let dev = Device::Cpu;
    let (out, inp, r, alpha) = (6, 10, 3, 5.0);
    for (name, loss_fn) in losses {
        let w = Tensor::randn(0f32, 0.5, (out, inp), &dev).unwrap();
        let mut layer = LoraLayer::new(Linear::new(Dense::new(w, None).unwrap()));
        let a = Var::randn(0f32, 0.3, (r, inp), &dev).unwrap();
        let b = Var::randn(0f32, 0.3, (out, r), &dev).unwrap();
        let adapter = LoraAdapter {
            r,
            alpha,
            scaling: alpha / r as f64,
            dropout: 0.0,
            lora_a: a.clone(),
            lora_b: b.clone(),
            magnitude: None,
        };
        layer.add_adapter("default", adapter).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4, inp), &dev).unwrap(); // (B, T, in)
        let h = layer.forward(&x).unwrap().reshape((8, out)).unwrap(); // (B·T, out)
        let (loss, grad_h) = loss_fn(&h);
        let grads = loss.backward().unwrap();
        let (ga, gb) =
            lora_gradients(a.as_tensor(), b.as_tensor(), alpha / r as f64, &x, &grad_h).unwrap();
        let auto_a = grads.get(a.as_tensor()).unwrap();
        let auto_b = grads.get(b.as_tensor()).unwrap();
        assert_eq!(ga.dims(), [r, inp]);
        assert_eq!(gb.dims(), [out, r]);
        let (da, db) = (
            common::max_rel_diff(&ga, auto_a),
            common::max_rel_diff(&gb, auto_b),
        );
        assert!(da < 1e-5 && db < 1e-5, "{name}: ∂L/∂A {da}, ∂L/∂B {db}");
    }
}

#[test]
fn lora_gradients_name_a_bad_shape() {
    let dev = Device::Cpu;
    let a = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
    let b = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
    let x = Tensor::zeros((4, 6), DType::F32, &dev).unwrap();
    let g = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
    let e = lora_gradients(&a, &b, 1.0, &x, &g).unwrap_err().to_string();
    assert!(e.contains("`x`") && e.contains("[4, 6]"), "{e}");
    let x = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
    let g = Tensor::zeros((5, 3), DType::F32, &dev).unwrap();
    let e = lora_gradients(&a, &b, 1.0, &x, &g).unwrap_err().to_string();
    assert!(e.contains("rows"), "{e}");
}
