//! The key/value cache of incremental decoding: per layer the keys (already rotated) and values
//! of every position seen so far, `(B, KV, S, D)`; a new token attends to all of them.

use candle_core::Tensor;

/// Per-layer keys and values of the tokens seen so far, for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions cached.
    pub fn seq_len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.layers.clear();
    }

    /// A cache that starts with `layers[i] = (keys, values)`, each `(B, KV, P, D)`, as if `P`
    /// tokens had been run: new tokens get positions `P..` and attend to all `P`. This is how
    /// transformers serves prefix tuning's `past_key_values` during generation (the keys are
    /// used as they are, no RoPE is applied to them).
    pub fn from_prefix(layers: Vec<(Tensor, Tensor)>) -> Self {
        Self {
            layers: layers.into_iter().map(Some).collect(),
        }
    }

    /// Number of layers with an entry.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s cached `(keys, values)`, each `(B, KV, S, D)`, keys already rotated.
    pub fn layer(&self, i: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(i)?.as_ref().map(|(k, v)| (k, v))
    }

    pub(super) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (k, v) = match &self.layers[layer] {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn appends_along_the_positions() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let kv = |s: usize| Tensor::zeros((1, 2, s, 4), DType::F32, &dev);
        let mut c = KvCache::new();
        assert_eq!((c.seq_len(), c.num_layers()), (0, 0));
        let (k, _) = c.append(1, &kv(3)?, &kv(3)?)?;
        assert_eq!(k.dims(), [1, 2, 3, 4]);
        assert_eq!(c.num_layers(), 2, "layer 0 is an empty slot");
        assert!(c.layer(0).is_none() && c.layer(1).is_some());
        let (k, v) = c.append(1, &kv(1)?, &kv(1)?)?;
        assert_eq!((k.dims()[2], v.dims()[2]), (4, 4));
        let p = KvCache::from_prefix(vec![(kv(5)?, kv(5)?)]);
        assert_eq!(p.seq_len(), 5);
        c.clear();
        assert_eq!(c.num_layers(), 0);
        Ok(())
    }
}
