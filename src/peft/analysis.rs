//! What a LoRA update looks like, for slides 31–35: how many parameters it has, its singular
//! values (is ΔW really low-rank, how much of it do the first k directions carry?) and its
//! gradients.
//!
//! ```text
//! parameters      r·(d + k)  vs  d·k                    (Hu et al. 2021, §4.1; slide 33)
//! spectrum        ΔW = s·B·A, rank ≤ r  ⇒  σ(ΔW) = |s|·σ(R_B·R_Aᵀ)   with B = Q_B·R_B, Aᵀ = Q_A·R_A
//! gradients       h = W·x + s·B·A·x:  ∂L/∂A = s·Bᵀ·(∂L/∂h)·xᵀ,  ∂L/∂B = s·(∂L/∂h)·(A·x)ᵀ  (slide 35)
//! ```
//!
//! The linear algebra runs on the host in f64 and needs no SVD library: a Householder QR to
//! shrink the problem to r×r (or n×n) and the one-sided Jacobi SVD of Hestenes (1958), as in
//! Demmel & Veselić 1992, *Jacobi's method is more accurate than QR* — it orthogonalises the
//! columns by plane rotations until they are orthogonal; their norms are the singular values.
//! It is accurate to a few ulps of σ_max, also for the small singular values that forming WᵀW
//! would lose.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::lora::LoraAdapter;
use crate::memory::{dense_params, lora_params};
use crate::{Error, Result};

/// LoRA's parameter count on one `d × k` weight beside the full matrix (slide 33).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoraParamCount {
    /// Rank r.
    pub r: u64,
    /// Output width d (B is d×r).
    pub d: u64,
    /// Input width k (A is r×k).
    pub k: u64,
    /// `r·(d + k)`: the adapter's trainable parameters.
    pub lora: u64,
    /// `d·k`: the full matrix's.
    pub full: u64,
    /// `lora / full`.
    pub ratio: f64,
}

/// [`lora_params`] and [`dense_params`] side by side: r = 16, d = k = 4096 gives 131,072
/// against 16,777,216 (ratio 1/128). Errors when a width or r is 0, naming it.
pub fn lora_param_count(d: u64, k: u64, r: u64) -> Result<LoraParamCount> {
    let lora = lora_params(d, k, r)?;
    let full = dense_params(d, k);
    Ok(LoraParamCount {
        r,
        d,
        k,
        lora,
        full,
        ratio: lora as f64 / full as f64,
    })
}

/// Singular values of ΔW = scaling·B·A, descending, without forming the `[out, in]` matrix:
/// with B = Q_B·R_B and Aᵀ = Q_A·R_A (thin QR, Q's columns orthonormal),
/// B·A = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ has the singular values of the small matrix R_B·R_Aᵀ.
///
/// Gives min(r, out, in) values — ΔW's others are exactly 0. The plain LoRA part only: a DoRA
/// adapter's magnitude vector rescales rows on top of it. At peft's default init (B = 0) all
/// values are 0.
pub fn delta_singular_values(adapter: &LoraAdapter) -> Result<Vec<f64>> {
    let (a, b) = (adapter.lora_a.as_tensor(), adapter.lora_b.as_tensor());
    let (r, _) = a.dims2()?;
    if r == 0 {
        return Ok(Vec::new());
    }
    if b.dims2()?.1 != r {
        return Err(Error::Shape {
            name: "lora_B".into(),
            expected: vec![b.dims()[0], r],
            found: b.dims().to_vec(),
        });
    }
    let (out, b_cols) = host_columns(b, "lora_B")?; // r columns of length out
    let (inp, at_cols) = host_columns(&a.t()?, "lora_A")?; // columns of Aᵀ, length in
    let rb = householder_r(b_cols, out); // [p, r], p = min(out, r)
    let ra = householder_r(at_cols, inp); // [q, r], q = min(in, r)
                                          // R_B·R_Aᵀ (p×q), or its transpose, so that the Jacobi sweep has min(p, q) columns.
    let m = if rb[0].len() >= ra[0].len() {
        times_transpose(&rb, &ra)
    } else {
        times_transpose(&ra, &rb)
    };
    let s = adapter.scaling.abs();
    Ok(jacobi_singular_values(m)
        .into_iter()
        .map(|v| v * s)
        .collect())
}

/// Singular values of a full matrix `w: [m, n]` (any float dtype), descending, min(m, n) of
/// them: Householder QR to an n×n R, then one-sided Jacobi on R, in f64. For a full
/// fine-tuning's ΔW = W_ft − W, to compare its spectrum with LoRA's. The cost grows as
/// m·n·min(m, n): a few hundred columns take seconds, a 4096×4096 matrix is too big for it.
pub fn singular_values_of(w: &Tensor) -> Result<Vec<f64>> {
    let (m, n) = w.dims2().map_err(|_| {
        Error::Input(format!(
            "singular_values_of takes a matrix [m, n], found shape {:?}",
            w.dims()
        ))
    })?;
    // Work on the side with fewer columns: σ(W) = σ(Wᵀ).
    let (rows, cols) = if m >= n {
        host_columns(w, "w")?
    } else {
        host_columns(&w.t()?, "w")?
    };
    if cols.is_empty() || rows == 0 {
        return Ok(Vec::new());
    }
    Ok(jacobi_singular_values(householder_r(cols, rows)))
}

/// How many singular values exceed `threshold_rel · σ_max` (0 for an all-zero spectrum): the
/// numerical rank at a relative tolerance, e.g. 1e-3.
pub fn effective_rank(sv: &[f64], threshold_rel: f64) -> usize {
    let max = sv.iter().cloned().fold(0.0, f64::max);
    if max == 0.0 {
        return 0;
    }
    sv.iter().filter(|&&s| s > threshold_rel * max).count()
}

/// The entropy-based effective rank of Roy & Vetterli 2007 (*The effective rank: a measure of
/// effective dimensionality*, EUSIPCO): `exp(−Σ p_i·ln p_i)` with `p_i = σ_i / Σσ` (0·ln 0 = 0).
/// Between 1 (one direction) and the number of non-zero σ (all equal); 0 for an all-zero
/// spectrum, where it is undefined.
pub fn entropy_effective_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().map(|s| s.abs()).sum();
    if total == 0.0 {
        return 0.0;
    }
    let h: f64 = sv
        .iter()
        .map(|s| s.abs() / total)
        .filter(|&p| p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    h.exp()
}

/// The share of ‖ΔW‖²_F that the k largest singular values carry:
/// `Σ_{i<k} σ_i² / Σ σ_i²` (σ sorted descending here; k past the end gives 1, an all-zero
/// spectrum gives 0). By Eckart–Young, this is how much of ΔW the best rank-k approximation
/// keeps.
pub fn energy_captured(sv: &[f64], k: usize) -> f64 {
    let mut sq: Vec<f64> = sv.iter().map(|s| s * s).collect();
    sq.sort_by(|a, b| b.total_cmp(a));
    let total: f64 = sq.iter().sum();
    if total == 0.0 {
        return 0.0;
    }
    sq.iter().take(k).sum::<f64>() / total
}

/// The gradients of slide 35 for `h = W·x + s·B·A·x`, given `grad_h = ∂L/∂h`:
///
/// ```text
/// ∂L/∂A = s · Bᵀ · (∂L/∂h) · xᵀ      [r, in]
/// ∂L/∂B = s · (∂L/∂h) · (A·x)ᵀ       [out, r]     (the slide prints ∂B/∂A; it means ∂L/∂B)
/// ```
///
/// summed over the rows of a batch. W gets no gradient and never appears: both need only
/// r-wide intermediates (G·B and x·Aᵀ, `[n, r]`), no `[out, in]` matrix — why LoRA's backward
/// is cheap.
///
/// # Shapes
/// `a: [r, in]`, `b: [out, r]`, `x: [.., in]`, `grad_h: [.., out]` (leading dims flattened to
/// n rows, the same n for both); the results are in `a`'s dtype.
pub fn lora_gradients(
    a: &Tensor,
    b: &Tensor,
    scaling: f64,
    x: &Tensor,
    grad_h: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (r, inp) = a.dims2()?;
    let (out, rb) = b.dims2()?;
    if rb != r {
        return Err(Error::Shape {
            name: "b (lora_B)".into(),
            expected: vec![out, r],
            found: b.dims().to_vec(),
        });
    }
    let rows = |t: &Tensor, name: &str, width: usize| -> Result<Tensor> {
        match t.dims().last() {
            Some(&w) if w == width && t.rank() >= 2 => {
                Ok(t.reshape(((), width))?.to_dtype(a.dtype())?)
            }
            _ => Err(Error::Input(format!(
                "`{name}` should have shape [.., {width}] but has {:?}",
                t.dims()
            ))),
        }
    };
    let x = rows(x, "x", inp)?; // (n, in)
    let g = rows(grad_h, "grad_h", out)?; // (n, out)
    if x.dim(0)? != g.dim(0)? {
        return Err(Error::Input(format!(
            "x has {} rows and grad_h has {}; they must be the same batch",
            x.dim(0)?,
            g.dim(0)?
        )));
    }
    let gb = g.matmul(b)?; // (n, r) = (∂L/∂h)·B, i.e. (Bᵀ·∂L/∂h)ᵀ per row
    let grad_a = (gb.t()?.matmul(&x)? * scaling)?; // (r, in)
    let ax = x.matmul(&a.t()?)?; // (n, r) = (A·x)ᵀ per row
    let grad_b = (g.t()?.matmul(&ax)? * scaling)?; // (out, r)
    Ok((grad_a, grad_b))
}

/// The columns of a 2-D tensor in f64 on the host: `(rows, columns)`. Errors on NaN or ∞,
/// naming the tensor.
pub(crate) fn host_columns(t: &Tensor, name: &str) -> Result<(usize, Vec<Vec<f64>>)> {
    let rows = t.dims2()?.0;
    let cols: Vec<Vec<f64>> = t.t()?.to_dtype(DType::F64)?.to_vec2()?;
    if cols.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "`{name}` contains NaN or infinite values; its singular values are undefined"
        )));
    }
    Ok((rows, cols))
}

/// R of the thin QR of an m×n matrix given by its columns (Householder reflections), as its n
/// columns of length min(m, n); R is upper triangular (trapezoidal when m < n).
pub(crate) fn householder_r(mut cols: Vec<Vec<f64>>, m: usize) -> Vec<Vec<f64>> {
    let p = m.min(cols.len());
    for j in 0..p {
        let norm = cols[j][j..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm == 0.0 {
            continue;
        }
        // v = x − α·e₁ with α = −sign(x₀)·‖x‖ (no cancellation); H = I − 2·v·vᵀ/(vᵀv).
        let alpha = if cols[j][j] > 0.0 { -norm } else { norm };
        let mut v = cols[j][j..].to_vec();
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        for c in cols[j..].iter_mut() {
            let f = 2.0 * dot(&v, &c[j..]) / vv;
            c[j..].iter_mut().zip(&v).for_each(|(ci, vi)| *ci -= f * vi);
        }
        cols[j][j + 1..].iter_mut().for_each(|x| *x = 0.0); // rounding residue below R's diagonal
    }
    cols.into_iter()
        .map(|mut c| {
            c.truncate(p);
            c
        })
        .collect()
}

/// `X·Yᵀ` for X `[x, k]` and Y `[y, k]` given by their k columns; returns the y columns (of
/// length x) of the product.
fn times_transpose(x: &[Vec<f64>], y: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (xr, yr) = (x[0].len(), y[0].len());
    (0..yr)
        .map(|j| {
            let mut col = vec![0.0; xr];
            for (xk, yk) in x.iter().zip(y) {
                col.iter_mut().zip(xk).for_each(|(c, v)| *c += yk[j] * v);
            }
            col
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// One-sided Jacobi SVD (Hestenes): rotate pairs of columns (p, q) until every pair is
/// orthogonal to working precision; the column norms are then the singular values, returned
/// descending. Each rotation zeroes `g_p·g_q` with the angle of the symmetric 2×2 Jacobi step
/// on `[[‖g_p‖², g_p·g_q], [g_p·g_q, ‖g_q‖²]]`.
fn jacobi_singular_values(g: Vec<Vec<f64>>) -> Vec<f64> {
    let (g, _) = jacobi_rotate(g, false);
    let mut sv: Vec<f64> = g.iter().map(|c| dot(c, c).sqrt()).collect();
    sv.sort_by(|a, b| b.total_cmp(a));
    sv
}

/// The rotations of [`jacobi_singular_values`] on the n columns `g` of a matrix G, returning
/// the rotated columns G·V (column i = σ_i·u_i, unsorted) and, with `with_v`, the n columns of
/// the accumulated rotation V (G = U·Σ·Vᵀ; empty otherwise). PiSSA uses V.
pub(crate) fn jacobi_rotate(mut g: Vec<Vec<f64>>, with_v: bool) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    const TOL: f64 = 1e-15;
    const MAX_SWEEPS: usize = 60;
    let n = g.len();
    let mut v: Vec<Vec<f64>> = if with_v {
        (0..n)
            .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
            .collect()
    } else {
        Vec::new()
    };
    let rotate = |cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64| {
        let (lo, hi) = cols.split_at_mut(q);
        for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
            let (xp, yq) = (*x, *y);
            *x = c * xp - s * yq;
            *y = s * xp + c * yq;
        }
    };
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) =
                    (dot(&g[p], &g[p]), dot(&g[q], &g[q]), dot(&g[p], &g[q]));
                if gamma.abs() <= TOL * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + 1f64.hypot(zeta));
                let c = 1.0 / 1f64.hypot(t);
                let s = c * t;
                rotate(&mut g, p, q, c, s);
                if with_v {
                    rotate(&mut v, p, q, c, s);
                }
            }
        }
        if !rotated {
            break;
        }
    }
    (g, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_on_a_diagonal_and_a_rotated_pair() {
        // diag(3, 1) rotated by 30°: singular values stay 3, 1.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let cols = vec![vec![3.0 * c, 3.0 * s], vec![-s, c]];
        let sv = jacobi_singular_values(cols);
        assert!(
            (sv[0] - 3.0).abs() < 1e-14 && (sv[1] - 1.0).abs() < 1e-14,
            "{sv:?}"
        );
    }

    #[test]
    fn householder_keeps_column_norms() {
        let cols = vec![vec![1.0, 2.0, 2.0], vec![0.5, -1.0, 4.0]];
        let r = householder_r(cols.clone(), 3);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0][1], 0.0);
        for (a, b) in cols.iter().zip(&r) {
            assert!((dot(a, a) - dot(b, b)).abs() < 1e-12);
        }
        assert!((dot(&r[0], &r[1]) - dot(&cols[0], &cols[1])).abs() < 1e-12);
    }
}
