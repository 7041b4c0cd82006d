//! The model's projections by HF module path (`model.layers.0.self_attn.q_proj`, ...,
//! `lm_head`): enumerating them, reaching one, and replacing it — all-or-nothing — which is the
//! seam quantization and PEFT go through.

use super::*;

impl Llama {
    /// All projections with their HF module paths, in checkpoint order, `lm_head` last.
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, b) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &b.self_attn.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &b.self_attn.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &b.self_attn.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &b.self_attn.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &b.mlp.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &b.mlp.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &b.mlp.down_proj));
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// All projections, mutably, with their paths (the order of [`Llama::linears`]).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, b) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let (a, m) = (&mut b.self_attn, &mut b.mlp);
            out.push((format!("{p}.self_attn.q_proj"), &mut a.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut a.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut a.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut a.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }

    /// HF module paths of all projections (see [`Llama::linears`]).
    pub fn linear_paths(&self) -> Vec<String> {
        self.linears().into_iter().map(|(p, _)| p).collect()
    }

    fn slot_mut(&mut self, path: &str) -> Option<&mut Linear> {
        if path == "lm_head" {
            return Some(&mut self.lm_head);
        }
        let rest = path.strip_prefix("model.layers.")?;
        let (idx, name) = rest.split_once('.')?;
        let block = self.layers.get_mut(idx.parse::<usize>().ok()?)?;
        Some(match name {
            "self_attn.q_proj" => &mut block.self_attn.q_proj,
            "self_attn.k_proj" => &mut block.self_attn.k_proj,
            "self_attn.v_proj" => &mut block.self_attn.v_proj,
            "self_attn.o_proj" => &mut block.self_attn.o_proj,
            "mlp.gate_proj" => &mut block.mlp.gate_proj,
            "mlp.up_proj" => &mut block.mlp.up_proj,
            "mlp.down_proj" => &mut block.mlp.down_proj,
            _ => return None,
        })
    }

    fn unknown_path(&self, path: &str) -> Error {
        Error::UnknownLayer {
            path: path.into(),
            layers: self.layers.len(),
        }
    }

    /// The projection at `path`.
    pub fn linear(&self, path: &str) -> Result<&Linear> {
        self.linears()
            .into_iter()
            .find(|(p, _)| p == path)
            .map(|(_, l)| l)
            .ok_or_else(|| self.unknown_path(path))
    }

    /// The projection at `path`, mutably.
    pub fn linear_mut(&mut self, path: &str) -> Result<&mut Linear> {
        let err = self.unknown_path(path);
        self.slot_mut(path).ok_or(err)
    }

    /// Puts `new` at `path` and returns the layer that was there. The replacement must keep the
    /// layer's input and output widths.
    pub fn replace_linear(&mut self, path: &str, new: Linear) -> Result<Linear> {
        let slot = self.linear_mut(path)?;
        if (slot.in_features(), slot.out_features()) != (new.in_features(), new.out_features()) {
            return Err(Error::Shape {
                name: path.to_string(),
                expected: vec![slot.out_features(), slot.in_features()],
                found: vec![new.out_features(), new.in_features()],
            });
        }
        Ok(std::mem::replace(slot, new))
    }

    /// Replaces the layer at `path` by `f(layer)`, e.g. to wrap it in an adapter. `f` gets a
    /// copy of the layer (cheap: its tensors are shared); the slot changes only when `f`
    /// succeeds and its result has the layer's widths, so on an error the model is exactly as
    /// it was.
    pub fn map_linear(
        &mut self,
        path: &str,
        f: impl FnOnce(Linear) -> Result<Linear>,
    ) -> Result<()> {
        let old = self.linear(path)?.clone();
        let new = f(old)?;
        self.replace_linear(path, new)?;
        Ok(())
    }

    /// Runs `f` on the model all-or-nothing: if it fails, the model is put back exactly as it
    /// was before the call (every layer, weight and hook), and the error is returned. A
    /// snapshot is a clone, which shares the tensors, so this costs no weight memory; it relies
    /// on edits replacing tensors rather than writing into them, which every edit of the seam
    /// does.
    pub fn edit<T>(&mut self, f: impl FnOnce(&mut Llama) -> Result<T>) -> Result<T> {
        let before = self.clone();
        match f(self) {
            Ok(v) => Ok(v),
            Err(e) => {
                *self = before;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_hf_module_paths() -> Result<()> {
        let c = Config::preset("tiny")?;
        let mut m = Llama::init_random(&c, DType::F32, &Device::Cpu, 0)?;
        let paths = m.linear_paths();
        assert_eq!(paths.len(), 7 * c.num_hidden_layers + 1);
        assert_eq!(paths[0], "model.layers.0.self_attn.q_proj");
        assert_eq!(paths[6], "model.layers.0.mlp.down_proj");
        assert_eq!(paths.last().map(String::as_str), Some("lm_head"));
        for p in &paths {
            assert!(m.linear(p).is_ok() && m.linear_mut(p).is_ok(), "{p}");
        }
        let e = m.linear("model.layers.9.self_attn.q_proj").unwrap_err();
        assert!(e.to_string().contains("layers 0..2"), "{e}");
        // A replacement must keep the widths; the error names the path and both shapes.
        let w = Tensor::zeros((3, 3), DType::F32, &Device::Cpu)?;
        let e = m
            .replace_linear("lm_head", Linear::new(Dense::new(w, None)?))
            .unwrap_err();
        assert!(e.to_string().contains("lm_head"), "{e}");
        Ok(())
    }
}
