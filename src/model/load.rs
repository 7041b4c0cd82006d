//! Loading and saving models: a Hugging Face directory (`config.json` + `model.safetensors`, or
//! shards listed in `model.safetensors.index.json`, memory-mapped) and GGUF files (every tensor
//! dequantized to the requested dtype, renamed to HF names, llama.cpp's rotary permutation of
//! `attn_q`/`attn_k` undone). Saving writes a HF directory that transformers loads.
//!
//! Every error names the file and the tensor: a missing `config.json`, a truncated safetensors
//! file, a tensor of the wrong shape, a GGUF of an unsupported architecture.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{Config, Family};
use crate::model::gguf::GgufFile;
use crate::model::llama::{Llama, WeightSource};
use crate::model::tokenizer::Tokenizer;

fn check_shape(path: &Path, name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.dims() != shape {
        return Err(Error::format(
            path,
            format!(
                "tensor `{name}`: expected shape {shape:?}, found {:?}",
                t.dims()
            ),
        ));
    }
    Ok(())
}

/// Memory-mapped safetensors files of a HF checkpoint (one file or shards).
pub struct SafetensorsWeights {
    /// Each file with its mapping, mapped once.
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// Tensor name -> index into `files`.
    routing: HashMap<String, usize>,
}

impl SafetensorsWeights {
    /// Maps the given safetensors files. A truncated or corrupt file is an error naming it.
    pub fn open(files: &[PathBuf]) -> Result<Self> {
        let mut routing = HashMap::new();
        let mut mapped = Vec::with_capacity(files.len());
        for (i, f) in files.iter().enumerate() {
            if !f.is_file() {
                return Err(Error::NotFound(format!(
                    "{}: safetensors file not found",
                    f.display()
                )));
            }
            // SAFETY: the mapped file is only read; as with every mmap, it must not be truncated
            // by another process while the model is loaded.
            let one = unsafe { MmapedSafetensors::new(f) }.map_err(|e| {
                Error::format(
                    f,
                    format!("not a valid safetensors file (truncated or corrupt?): {e}"),
                )
            })?;
            for (name, _) in one.tensors() {
                routing.insert(name, i);
            }
            mapped.push((f.clone(), one));
        }
        if mapped.is_empty() {
            return Err(Error::NotFound("no safetensors files were given".into()));
        }
        Ok(Self {
            files: mapped,
            routing,
        })
    }

    /// The files.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|(p, _)| p.as_path()).collect()
    }

    /// All tensor names.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.routing.keys().cloned().collect();
        v.sort();
        v
    }
}

impl WeightSource for SafetensorsWeights {
    fn get(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let Some(&i) = self.routing.get(name) else {
            return Err(Error::format(
                &self.files[0].0,
                format!("tensor `{name}` is missing from the checkpoint"),
            ));
        };
        let (path, st) = &self.files[i];
        let t = st
            .load(name, device)
            .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        check_shape(path, name, &t, shape)?;
        Ok(t.to_dtype(dtype)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }
}

/// Tensors already in memory, by HF name (e.g. loaded from a `.safetensors` buffer).
pub struct MemoryWeights {
    /// Where they came from, for messages.
    pub origin: PathBuf,
    /// The tensors.
    pub tensors: HashMap<String, Tensor>,
}

impl WeightSource for MemoryWeights {
    fn get(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::format(&self.origin, format!("tensor `{name}` is missing")))?;
        check_shape(&self.origin, name, t, shape)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// The GGUF tensor name of a HF tensor name (llama.cpp's naming).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{kind}"))
}

/// Undoes llama.cpp's rotary permutation of a q or k weight (`[heads·hd, in]`).
///
/// llama.cpp's converter stores `W.reshape(h, 2, hd/2, in).swapaxes(1, 2)` so that its RoPE can
/// rotate adjacent pairs; the HF layout rotates the two halves of each head. The inverse is
/// `W.reshape(h, hd/2, 2, in).swapaxes(1, 2)`.
pub fn unpermute_rotary(w: &Tensor, n_heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_heads;
    w.reshape((n_heads, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// The tensors of a GGUF file, dequantized on request and renamed to HF names.
pub struct GgufWeights {
    file: GgufFile,
    config: Config,
}

impl GgufWeights {
    /// Wraps an open GGUF file whose config was read with [`Config::from_gguf`].
    pub fn new(file: GgufFile, config: Config) -> Self {
        Self { file, config }
    }
}

impl WeightSource for GgufWeights {
    fn get(
        &mut self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let gname = gguf_name(name).ok_or_else(|| {
            Error::format(
                self.file.path(),
                format!("no GGUF name is known for tensor `{name}`"),
            )
        })?;
        let q = self.file.tensor(&gname, device)?;
        let mut t = q.dequantize(device).map_err(|e| {
            Error::format(
                self.file.path(),
                format!("tensor `{gname}`: cannot dequantize: {e}"),
            )
        })?;
        // llama.cpp permutes q/k only for the llama architecture (Qwen2 uses NeoX-style RoPE).
        if self.config.family == Family::Llama && name.ends_with(".weight") && t.rank() == 2 {
            if name.ends_with("self_attn.q_proj.weight") {
                t = unpermute_rotary(&t, self.config.num_attention_heads)?;
            } else if name.ends_with("self_attn.k_proj.weight") {
                t = unpermute_rotary(&t, self.config.num_key_value_heads)?;
            }
        }
        let path = self.file.path().to_path_buf();
        check_shape(&path, &format!("{gname}` (HF `{name}"), &t, shape)?;
        Ok(t.to_dtype(dtype)?)
    }
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.has_tensor(&g))
    }
}

/// Loads a GGUF file: its config, its tokenizer and the model dequantized to `dtype`.
pub fn load_gguf(
    path: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<(Llama, Tokenizer)> {
    let file = GgufFile::open(path.as_ref())?;
    let config = Config::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let mut w = GgufWeights::new(file, config.clone());
    let model = Llama::load(&config, &mut w, dtype, device)?;
    Ok((model, tokenizer))
}

/// The safetensors files of a HF directory: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(Error::NotFound(format!(
            "{}: neither model.safetensors nor model.safetensors.index.json is there",
            dir.display()
        )));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::format(
                &index,
                "field `weight_map` (an object of tensor -> file) is missing",
            )
        })?;
    let mut files: Vec<PathBuf> = Vec::new();
    for (tensor, f) in map {
        let f = f.as_str().ok_or_else(|| {
            Error::format(
                &index,
                format!("weight_map[`{tensor}`] should be a file name, found {f}"),
            )
        })?;
        let p = dir.join(f);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Loads a HF directory: `config.json`, the safetensors weights (mmapped) and, if present,
/// `tokenizer.json` (+ `tokenizer_config.json`).
pub fn load_hf_dir(
    dir: impl AsRef<Path>,
    dtype: DType,
    device: &Device,
) -> Result<(Llama, Option<Tokenizer>)> {
    let dir = dir.as_ref();
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(Error::NotFound(format!(
            "{}: config.json is missing; a Hugging Face model directory needs config.json and model.safetensors",
            dir.display()
        )));
    }
    let config = Config::from_file(&config_path)?;
    let files = safetensors_files(dir)?;
    let mut w = SafetensorsWeights::open(&files)?;
    let model = Llama::load(&config, &mut w, dtype, device)?;
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() {
        Some(Tokenizer::from_file(&tok_path)?)
    } else {
        None
    };
    Ok((model, tokenizer))
}

/// The model's tensors by HF name, as a checkpoint holds them (a tied `lm_head` is left out;
/// a non-dense projection contributes its effective dense weight).
pub fn state_dict(model: &Llama) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    out.insert(
        "model.embed_tokens.weight".to_string(),
        model.embed_tokens.clone(),
    );
    for (i, b) in model.layers.iter().enumerate() {
        out.insert(
            format!("model.layers.{i}.input_layernorm.weight"),
            b.input_layernorm.weight.clone(),
        );
        out.insert(
            format!("model.layers.{i}.post_attention_layernorm.weight"),
            b.post_attention_layernorm.weight.clone(),
        );
    }
    out.insert("model.norm.weight".to_string(), model.norm.weight.clone());
    for (path, lin) in model.linears() {
        if path == "lm_head" && model.config().tie_word_embeddings {
            continue;
        }
        out.insert(
            format!("{path}.weight"),
            lin.layer().dense_weight()?.to_dtype(model.dtype())?,
        );
        if let Some(b) = lin.layer().bias() {
            out.insert(format!("{path}.bias"), b.clone());
        }
    }
    Ok(out)
}

/// The library's one atomic write (temporary file in the same directory, then a rename),
/// re-exported here where the savers have always found it.
pub use crate::fs::write_atomic;

/// Saves tensors as a safetensors file with `{"format": "pt"}` metadata (what transformers
/// expects), atomically.
pub fn save_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let data: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(data, Some(metadata), tmp)
            .map_err(|e| Error::format(tmp, format!("cannot write safetensors: {e}")))?;
        // The safetensors crate creates its files private (0600); a checkpoint is shared like
        // the config.json beside it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io(tmp, e))?;
        }
        Ok(())
    })
}

/// The torch dtype name of a candle dtype.
pub fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Saves the model (and its tokenizer, if given) as a HF directory: `config.json`,
/// `model.safetensors` and the tokenizer files. transformers' `from_pretrained` loads it.
pub fn save_pretrained(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors = state_dict(model)?;
    save_safetensors(&tensors, &dir.join("model.safetensors"))?;
    let cfg = model.config().to_hf_json(torch_dtype(model.dtype()));
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Input(e.to_string()))?;
    let cfg_path = dir.join("config.json");
    crate::fs::write_bytes_atomic(&cfg_path, text)?;
    if let Some(t) = tokenizer {
        t.save(dir)?;
    }
    Ok(())
}
