//! The additive attention mask: causal, with padding and packed documents.

use candle_core::{DType, Tensor};

use super::*;

impl Llama {
    /// Additive mask `(B|1, 1, T, S)`: 0 where query `i` may attend key `j`, the lowest f32
    /// elsewhere. Not −∞, as in transformers: a padding query that may attend nothing then gets
    /// a uniform (finite, ignored) row instead of NaNs that would leak into real rows through
    /// `0 · NaN` in the value product.
    ///
    /// `offset` positions come before the `t` new ones (`cached` of them in a KvCache, the rest
    /// a key/value prefix); every new token may attend to all of them.
    pub(super) fn attention_mask(
        &self,
        b: usize,
        t: usize,
        offset: usize,
        cached: usize,
        opts: &ForwardOptions,
    ) -> Result<Option<Tensor>> {
        let s = offset + t;
        if t == 1 && opts.attention_mask.is_none() {
            return Ok(None);
        }
        let dev = &self.device;
        let qi = Tensor::arange(offset as u32, s as u32, dev)?.reshape((t, 1))?;
        let kj = Tensor::arange(0u32, s as u32, dev)?.reshape((1, s))?;
        let mut keep = kj
            .broadcast_le(&qi)?
            .unsqueeze(0)?
            .unsqueeze(0)?
            .to_dtype(DType::U8)?; // (1, 1, T, S)
        if let Some(am) = &opts.attention_mask {
            if am.dims() != [b, s] {
                return Err(Error::Input(format!(
                    "attention_mask must have shape (batch, cached + new) = ({b}, {s}), found {:?}",
                    am.dims()
                )));
            }
            let pad = am.ne(0u32)?.reshape((b, 1, 1, s))?;
            keep = keep.broadcast_mul(&pad)?;
        }
        if let Some(seg) = &opts.segment_ids {
            if cached != 0 || seg.dims() != [b, t] {
                return Err(Error::Input(format!(
                    "segment_ids must have shape (batch, seq_len) = ({b}, {t}) and no cache, found {:?}",
                    seg.dims()
                )));
            }
            let seg = seg.to_dtype(DType::U32)?;
            let same = seg
                .unsqueeze(2)?
                .broadcast_eq(&seg.unsqueeze(1)?)?
                .unsqueeze(1)?; // (B, 1, T, T)
            let same = if offset > 0 {
                // A key/value prefix is seen by every document.
                let prefix = Tensor::ones((b, 1, t, offset), DType::U8, dev)?;
                Tensor::cat(&[&prefix, &same], 3)? // (B, 1, T, S)
            } else {
                same
            };
            keep = keep.broadcast_mul(&same)?;
        }
        let zeros = Tensor::zeros(keep.shape(), DType::F32, dev)?;
        let neg = Tensor::full(f32::MIN, keep.shape(), dev)?;
        Ok(Some(keep.where_cond(&zeros, &neg)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Llama {
        let c = Config::preset("tiny").unwrap();
        Llama::init_random(&c, DType::F32, &candle_core::Device::Cpu, 0).unwrap()
    }

    fn allowed(m: &Tensor) -> Vec<Vec<bool>> {
        let m = m.squeeze(0).unwrap().squeeze(0).unwrap();
        m.to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|v| v == 0.0).collect())
            .collect()
    }

    #[test]
    fn causal_with_an_offset_and_padding() -> Result<()> {
        let m = tiny();
        let o = ForwardOptions::default();
        let mask = m
            .attention_mask(1, 3, 0, 0, &o)?
            .expect("a mask for 3 tokens");
        let (y, n) = (true, false);
        assert_eq!(
            allowed(&mask),
            vec![vec![y, n, n], vec![y, y, n], vec![y, y, y]]
        );
        // Two positions before (a cache or a prefix): every new token sees them.
        let mask = m.attention_mask(1, 2, 2, 2, &o)?.expect("a mask");
        assert_eq!(allowed(&mask), vec![vec![y, y, y, n], vec![y, y, y, y]]);
        // One new token and no padding: no mask at all.
        assert!(m.attention_mask(1, 1, 5, 5, &o)?.is_none());
        // Padding: key 0 is masked for every query.
        let pad = ForwardOptions {
            attention_mask: Some(Tensor::new(&[[0u32, 1, 1]], &candle_core::Device::Cpu)?),
            ..Default::default()
        };
        let mask = m.attention_mask(1, 3, 0, 0, &pad)?.expect("a mask");
        let a = allowed(&mask);
        assert!(a.iter().skip(1).all(|row| !row[0]), "{a:?}");
        assert!(a[2][1] && a[2][2]);
        Ok(())
    }
}
