//! The router's auxiliary losses. With `P` the router probabilities `(N, E)`, `P̄_e` their mean
//! over the real tokens, and `m` the mask of real tokens:
//!
//! ```text
//! guide   = E · mean_e(P̄_e²)  = Σ_e P̄_e²               1/E at perfect balance, 1 at collapse
//! switch  = E · Σ_j Σ_e f_je · P̄_e                       k at perfect balance, E at collapse
//!           f_je = share of tokens whose j-th choice is expert e (no gradient)
//! z-loss  = mean_n (log Σ_e exp(logits_ne))²             ST-MoE: keeps the logits small
//! ```
//!
//! `guide` is the seminar guide's `load_balancing_loss` (`torch.mean(P̄ * P̄) * num_experts`).
//! It only pushes the *mean probability* towards uniform, which a router can satisfy while
//! sending every token to the same experts with confident but varying scores; `switch` (Fedus
//! et al. 2021, *Switch Transformers*, eq. 4; the form of transformers'
//! `load_balancing_loss_func`, summed over the k slots) also counts where the tokens go.
//! `z-loss` is Zoph et al. 2022, *ST-MoE*, eq. 5.

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// `(N, 1)` f32 weights of the real tokens and their count, from an optional `(N,)` mask.
fn token_weights(n: usize, mask: Option<&Tensor>, like: &Tensor) -> Result<(Tensor, f64)> {
    let m = match mask {
        None => Tensor::ones((n, 1), DType::F32, like.device())?,
        Some(m) => {
            if m.dims() != [n] {
                return Err(Error::Shape {
                    name: "router mask".into(),
                    expected: vec![n],
                    found: m.dims().to_vec(),
                });
            }
            m.to_dtype(DType::F32)?.reshape((n, 1))?
        }
    };
    let count = m.sum_all()?.to_scalar::<f32>()? as f64;
    if count <= 0.0 {
        return Err(Error::Input(
            "the router mask has no real token: nothing to balance".into(),
        ));
    }
    Ok((m, count))
}

/// `P̄`: the mean router probability per expert over the real tokens, `(E,)`.
pub fn mean_probs(probs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (n, _) = probs.dims2()?;
    let (m, count) = token_weights(n, mask, probs)?;
    Ok((probs.broadcast_mul(&m)?.sum(0)? / count)?)
}

/// The guide's load-balancing loss, `E · mean_e(P̄_e²)`, a scalar (f32).
pub fn guide_balance_loss(probs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let p = mean_probs(probs, mask)?;
    Ok(p.sqr()?.sum_all()?) // E · mean = sum
}

/// Switch/Mixtral's load-balancing loss, `E · Σ_j Σ_e f_je · P̄_e`, a scalar (f32);
/// `indices: (N, k)` are the chosen experts.
pub fn switch_balance_loss(
    probs: &Tensor,
    indices: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, e) = probs.dims2()?;
    let (n2, k) = indices.dims2()?;
    if n2 != n {
        return Err(Error::Shape {
            name: "router indices".into(),
            expected: vec![n, k],
            found: indices.dims().to_vec(),
        });
    }
    let (m, count) = token_weights(n, mask, probs)?;
    let experts = Tensor::arange(0u32, e as u32, probs.device())?.reshape((1, 1, e))?;
    let chosen = indices
        .to_dtype(DType::U32)?
        .unsqueeze(2)?
        .broadcast_eq(&experts)?
        .to_dtype(DType::F32)?; // (N, k, E)
    let f = (chosen.broadcast_mul(&m.unsqueeze(2)?)?.sum(0)? / count)?; // (k, E)
    let p = mean_probs(probs, mask)?; // (E,)
    Ok((f.sum(0)?.detach().mul(&p)?.sum_all()? * e as f64)?)
}

/// ST-MoE's router z-loss, `mean_n (logsumexp_e logits_ne)²` over the real tokens (f32).
pub fn router_z_loss(logits: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    let (m, count) = token_weights(n, mask, logits)?;
    let x = logits.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let lse = (x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?; // (N, 1)
    Ok((lse.sqr()?.mul(&m)?.sum_all()? / count)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    const E: usize = 4;
    const K: usize = 2;

    fn scalar(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    /// N = E tokens, token n routed to experts (n, n+1 mod E) with uniform probabilities.
    fn balanced() -> (Tensor, Tensor) {
        let p = Tensor::full(1.0f32 / E as f32, (E, E), &Device::Cpu).unwrap();
        let idx: Vec<u32> = (0..E)
            .flat_map(|n| [n as u32, ((n + 1) % E) as u32])
            .collect();
        (p, Tensor::from_vec(idx, (E, K), &Device::Cpu).unwrap())
    }

    /// Every token sends all its probability to expert 0 and picks experts (0, 1).
    fn collapsed() -> (Tensor, Tensor) {
        let mut p = vec![0f32; E * E];
        for n in 0..E {
            p[n * E] = 1.0;
        }
        let idx: Vec<u32> = (0..E).flat_map(|_| [0u32, 1]).collect();
        (
            Tensor::from_vec(p, (E, E), &Device::Cpu).unwrap(),
            Tensor::from_vec(idx, (E, K), &Device::Cpu).unwrap(),
        )
    }

    #[test]
    fn closed_forms_at_balance_and_collapse() -> Result<()> {
        let (p, idx) = balanced();
        assert!((scalar(&guide_balance_loss(&p, None)?) - 1.0 / E as f32).abs() < 1e-6);
        assert!((scalar(&switch_balance_loss(&p, &idx, None)?) - K as f32).abs() < 1e-6);
        let (p, idx) = collapsed();
        assert!((scalar(&guide_balance_loss(&p, None)?) - 1.0).abs() < 1e-6);
        assert!((scalar(&switch_balance_loss(&p, &idx, None)?) - E as f32).abs() < 1e-6);
        // Zero logits: logsumexp = ln E for every token.
        let z = Tensor::zeros((3, E), DType::F32, &Device::Cpu)?;
        let want = (E as f32).ln().powi(2);
        assert!((scalar(&router_z_loss(&z, None)?) - want).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn padding_does_not_count() -> Result<()> {
        // The balanced batch plus two padding tokens that would collapse it.
        let (pb, ib) = balanced();
        let (pc, ic) = collapsed();
        let p = Tensor::cat(&[&pb, &pc.narrow(0, 0, 2)?], 0)?;
        let idx = Tensor::cat(&[&ib, &ic.narrow(0, 0, 2)?], 0)?;
        let mask = Tensor::new(&[1u32, 1, 1, 1, 0, 0], &Device::Cpu)?;
        assert!((scalar(&guide_balance_loss(&p, Some(&mask))?) - 1.0 / E as f32).abs() < 1e-6);
        assert!((scalar(&switch_balance_loss(&p, &idx, Some(&mask))?) - K as f32).abs() < 1e-6);
        let none = Tensor::zeros(6, DType::U32, &Device::Cpu)?;
        assert!(guide_balance_loss(&p, Some(&none)).is_err());
        Ok(())
    }

    #[test]
    fn switch_gradient_is_e_times_the_dispatch_share() -> Result<()> {
        // ∂/∂P_ne of E·Σ_e F_e·P̄_e (F = Σ_j f_je, no gradient) is E·F_e/N.
        let (p, idx) = collapsed();
        let v = candle_core::Var::from_tensor(&p)?;
        let g = switch_balance_loss(v.as_tensor(), &idx, None)?.backward()?;
        let g = g.get(v.as_tensor()).expect("a gradient").to_vec2::<f32>()?;
        // Experts 0 and 1 each take one of the two slots of every token: F = (1, 1, 0, 0).
        for row in &g {
            assert_eq!(row.len(), E);
            for (e, &ge) in row.iter().enumerate() {
                let f = if e < 2 { 1.0 } else { 0.0 };
                assert!((ge - E as f32 * f / E as f32).abs() < 1e-6, "{row:?}");
            }
        }
        Ok(())
    }
}
