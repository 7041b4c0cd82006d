//! PiSSA (Meng, Wang & Zhang 2024, *PiSSA: Principal Singular Values and Singular Vectors
//! Adaptation of Large Language Models*): start the adapter from the r largest singular
//! triplets of W and freeze the rest, instead of starting from ΔW = 0.
//!
//! ```text
//! W = U·S·Vᵀ                  (out × in)
//! A = diag(√(S_r / s)) · V_rᵀ     [r, in]        s = α/r (α/√r with rsLoRA)
//! B = U_r · diag(√(S_r / s))      [out, r]
//! W_res = W − s·B·A = W − U_r·S_r·V_rᵀ           the base weight is replaced by the residual
//! ```
//!
//! as peft's `pissa_init` does it (`tuners/lora/layer.py`), so the adapted model starts equal to
//! the base and training moves the principal directions. `"pissa_niter_N"` takes U_r, S_r, V_r
//! from torch's `svd_lowrank` algorithm (Halko, Martinsson & Tropp 2011): a Gaussian start, N
//! subspace iterations, QR, and the SVD of the small r × in matrix — fast on large layers,
//! approximate where the spectrum is flat. The exact SVD is the one-sided Jacobi of
//! `analysis.rs` after a Householder QR (f64 on the host): seconds for a 576×1536 layer.
//!
//! Signs of singular vectors are arbitrary: A and B may differ from peft's by the sign of a
//! rank-one pair, ΔW = s·B·A and W_res do not.
//!
//! Because the base changes, a PiSSA adapter saved as is needs the residual base: loading it
//! on the original model runs the (exact) SVD again, as peft does. To get a plain LoRA adapter
//! for the *original* base, save the initial adapter right after `get_peft_model` and convert
//! after training with [`save_adapter_as_lora`] (peft's
//! `path_initial_model_for_weight_conversion`): ΔW = s·(B·A − B₀·A₀) = s·[B | −B₀]·[A; A₀], a
//! rank-2r adapter with α doubled (×√2 with rsLoRA) so that the scaling stays s.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::analysis::{host_columns, householder_r, jacobi_rotate};
use super::config::InitLoraWeights;
use super::io::{adapter_tensors, write_adapter, AdapterConfig, ADAPTER_WEIGHTS};
use super::model::PeftModel;
use crate::{Error, Result};

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `[m, n]` f64 tensor from n columns of length m.
fn from_cols(cols: &[Vec<f64>], m: usize, device: &Device) -> Result<Tensor> {
    let flat: Vec<f64> = cols.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (cols.len(), m), device)?
        .t()?
        .contiguous()?)
}

/// Orthonormal columns spanning `cols` (Gram–Schmidt, twice: "CGS2").
fn orthonormal(mut cols: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    for j in 0..cols.len() {
        for _ in 0..2 {
            for i in 0..j {
                let (lo, hi) = cols.split_at_mut(j);
                let d = dot(&lo[i], &hi[0]);
                hi[0].iter_mut().zip(&lo[i]).for_each(|(x, q)| *x -= d * q);
            }
        }
        let norm = dot(&cols[j], &cols[j]).sqrt();
        if norm > 0.0 {
            cols[j].iter_mut().for_each(|x| *x /= norm);
        }
    }
    cols
}

/// σ and V (columns) of a matrix given by its columns (length m ≥ their count), descending.
fn sigma_v(cols: Vec<Vec<f64>>, m: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    let (g, v) = jacobi_rotate(householder_r(cols, m), true);
    let s: Vec<f64> = g.iter().map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    (
        order.iter().map(|&i| s[i]).collect(),
        order.iter().map(|&i| v[i].clone()).collect(),
    )
}

/// The r leading singular triplets of `w: [m, n]`: `(U_r [m, r], S_r, V_r [n, r])`, f64
/// tensors. `niter`: randomized with that many subspace iterations (seeded by `rng`).
pub fn truncated_svd(
    w: &Tensor,
    r: usize,
    niter: Option<usize>,
    rng: &mut impl Rng,
) -> Result<(Tensor, Vec<f64>, Tensor)> {
    let (m, n) = w.dims2()?;
    if r > m.min(n) {
        return Err(Error::config(
            "r",
            format!("PiSSA needs r ≤ min(out, in) = {}, got {r}", m.min(n)),
        ));
    }
    let dev = w.device().clone();
    let w = w.to_dtype(DType::F64)?;
    // Work on the tall side: M = W (m ≥ n) or Wᵀ; swap U and V back at the end.
    let tall = m >= n;
    let mt = if tall {
        w.clone()
    } else {
        w.t()?.contiguous()?
    };
    let (rows, cols_n) = mt.dims2()?;
    let (u, s, v) = match niter {
        None => {
            let (_, cols) = host_columns(&mt, "weight")?;
            let (s, v) = sigma_v(cols, rows);
            let v_r = from_cols(&v[..r], cols_n, &dev)?; // [n', r]
            let s_r = s[..r].to_vec();
            let inv: Vec<f64> = s_r
                .iter()
                .map(|&x| if x > 0.0 { 1.0 / x } else { 0.0 })
                .collect();
            let u_r = mt
                .matmul(&v_r)?
                .broadcast_mul(&Tensor::new(inv.as_slice(), &dev)?)?;
            (u_r, s_r, v_r)
        }
        Some(iters) => {
            // torch.svd_lowrank(M, q=r, niter): Q spans M·Ω, refined by (M·Mᵀ)^niter.
            let gauss: Vec<f64> = (0..cols_n * r)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random_range(1e-300..1.0), rng.random());
                    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
                })
                .collect();
            let omega = Tensor::from_vec(gauss, (cols_n, r), &dev)?;
            let orth = |t: Tensor| -> Result<Tensor> {
                let (len, _) = t.dims2()?;
                let (_, cols) = host_columns(&t, "basis")?;
                from_cols(&orthonormal(cols), len, &dev)
            };
            let mut q = orth(mt.matmul(&omega)?)?; // [rows, r]
            for _ in 0..iters {
                let z = orth(mt.t()?.matmul(&q)?)?; // [n', r]
                q = orth(mt.matmul(&z)?)?;
            }
            let b = q.t()?.matmul(&mt)?; // [r, n']
                                         // SVD of B through its tall transpose: Bᵀ = U'·S·V'ᵀ, so B = V'·S·U'ᵀ.
            let (_, bt_cols) = host_columns(&b.t()?.contiguous()?, "basis")?;
            let (s, vb) = sigma_v(bt_cols, cols_n);
            let vb = from_cols(&vb, r, &dev)?; // [r, r]
            let inv: Vec<f64> = s
                .iter()
                .map(|&x| if x > 0.0 { 1.0 / x } else { 0.0 })
                .collect();
            let right = b
                .t()?
                .matmul(&vb)?
                .broadcast_mul(&Tensor::new(inv.as_slice(), &dev)?)?;
            (q.matmul(&vb)?, s, right)
        }
    };
    Ok(if tall { (u, s, v) } else { (v, s, u) })
}

/// PiSSA's factors and residual for a weight `w: [out, in]`: `(A [r, in], B [out, r], W_res)`,
/// A and B in f32, W_res in `w`'s dtype.
pub fn pissa_init(
    w: &Tensor,
    r: usize,
    scaling: f64,
    niter: Option<usize>,
    rng: &mut impl Rng,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (u, s, v) = truncated_svd(w, r, niter, rng)?;
    let root: Vec<f64> = s.iter().map(|x| (x / scaling).sqrt()).collect();
    let root = Tensor::new(root.as_slice(), w.device())?;
    let a = v.broadcast_mul(&root)?.t()?.contiguous()?; // diag(√(S/s))·Vᵀ
    let b = u.broadcast_mul(&root)?; // U·diag(√(S/s))
    let w64 = w.to_dtype(DType::F64)?;
    let w_res = (w64 - (b.matmul(&a)? * scaling)?)?.to_dtype(w.dtype())?;
    Ok((a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?, w_res))
}

/// The subspace iterations of an `init_lora_weights`, `None` for the exact SVD.
pub(super) fn niter_of(init: InitLoraWeights) -> Option<usize> {
    match init {
        InitLoraWeights::PissaNiter(n) => Some(n),
        _ => None,
    }
}

/// Saves the PiSSA adapter `adapter` of `peft` into `dir` as a plain LoRA adapter for the
/// *original* base (peft's `save_pretrained(..., path_initial_model_for_weight_conversion=
/// initial)`): `initial` is the directory where the same adapter was saved right after
/// `get_peft_model`, before training. Writes `A' = [A; A₀]`, `B' = [B, −B₀]` with r and α
/// doubled (α·√2 with rsLoRA) and `init_lora_weights = true`; other tensors (biases,
/// `modules_to_save`) as they are. Errors: rsLoRA with rank or alpha patterns (peft refuses it
/// too), a missing initial tensor, shapes that do not fit.
pub fn save_adapter_as_lora(
    peft: &PeftModel,
    dir: impl AsRef<Path>,
    adapter: &str,
    initial: impl AsRef<Path>,
) -> Result<()> {
    let mut cfg = peft.peft_config(adapter)?.clone();
    if cfg.use_rslora && !(cfg.rank_pattern.is_empty() && cfg.alpha_pattern.is_empty()) {
        return Err(Error::config(
            "use_rslora",
            "converting a PiSSA adapter with rsLoRA and rank_pattern/alpha_pattern is not \
             supported (as in peft): the doubled rank changes α/√r per pattern",
        ));
    }
    let file = initial.as_ref().join(ADAPTER_WEIGHTS);
    let init = candle_core::safetensors::load(&file, peft.model.device())
        .map_err(|e| Error::format(&file, format!("cannot read safetensors: {e}")))?;
    let mut tensors = adapter_tensors(peft, adapter)?;
    for (key, t) in tensors.iter_mut() {
        let (is_a, is_b) = (
            key.ends_with(".lora_A.weight"),
            key.ends_with(".lora_B.weight"),
        );
        if !(is_a || is_b) {
            continue;
        }
        let t0 = init.get(key).ok_or_else(|| {
            Error::format(
                &file,
                format!("tensor `{key}` of the initial adapter is missing"),
            )
        })?;
        *t = if is_a {
            Tensor::cat(&[&*t, t0], 0)
        } else {
            Tensor::cat(&[&*t, &t0.neg()?], 1)
        }
        .map_err(|e| Error::format(&file, format!("tensor `{key}`: {e}")))?;
    }
    cfg.r *= 2;
    cfg.lora_alpha *= if cfg.use_rslora { 2f64.sqrt() } else { 2.0 };
    cfg.rank_pattern.values_mut().for_each(|r| *r *= 2);
    cfg.alpha_pattern.values_mut().for_each(|a| *a *= 2.0);
    cfg.init_lora_weights = InitLoraWeights::Default;
    let config = AdapterConfig {
        lora: cfg,
        base_model_name_or_path: None,
        extra: Default::default(),
    };
    write_adapter(dir.as_ref(), &tensors, &config)
}

/// The error for PiSSA on a layer at `path` whose base is not dense (`kind`).
pub(super) fn pissa_base_error(path: &str, kind: &str) -> Error {
    Error::config(
        "init_lora_weights",
        format!(
            "PiSSA needs a float weight, but `{path}` is {kind} (peft: \"Please initialize PiSSA \
             under float32, float16, or bfloat16. Subsequently, re-quantize the residual \
             model\"): initialise on the unquantized model"
        ),
    )
}
