//! A model with its tokenizer, as `from_pretrained` gives it: the one-line entry point of the
//! notebooks and the CLI.
//!
//! ```no_run
//! use tunelab::model::pretrained::Pretrained;
//! use tunelab::model::chat_template::Message;
//! use tunelab::model::generate::GenerationConfig;
//! let lm = Pretrained::from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")?;
//! let answer = lm.chat(&[Message::user("What is the capital of France?")], &GenerationConfig::greedy(32))?;
//! println!("{}", answer.text);
//! # Ok::<(), tunelab::Error>(())
//! ```

use std::path::Path;

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::model::chat_template::Message;
use crate::model::generate::{self, Generation, GenerationConfig};
use crate::model::hub::{self, ModelSource, Resolved};
use crate::model::llama::Llama;
use crate::model::load;
use crate::model::tokenizer::Tokenizer;

/// Where and how to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Dtype of the weights (GGUF tensors are dequantized to it). Default f32.
    pub dtype: DType,
    /// Device. Default CPU.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

impl LoadOptions {
    /// Sets the dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets the device.
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
}

/// A loaded model, its tokenizer and where they came from.
#[derive(Debug)]
pub struct Pretrained {
    /// The decoder.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// What the spec resolved to.
    pub resolved: Resolved,
}

impl Pretrained {
    /// Loads a model and its tokenizer as transformers' `AutoModelForCausalLM.from_pretrained`
    /// and `AutoTokenizer.from_pretrained` do, in f32 on the CPU: `model` is a hub id
    /// (`"HuggingFaceTB/SmolLM2-135M-Instruct"`: the hub cache first, then a download), a HF
    /// model directory or a GGUF file. [`Pretrained::from_pretrained_with`] takes the dtype
    /// and device.
    ///
    /// ```no_run
    /// use tunelab::Pretrained;
    /// let lm = Pretrained::from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")?;
    /// # Ok::<(), tunelab::Error>(())
    /// ```
    pub fn from_pretrained(model: impl AsRef<Path>) -> Result<Self> {
        Self::from_pretrained_with(model, &LoadOptions::default())
    }

    /// [`Pretrained::from_pretrained`] with a dtype and device
    /// (`LoadOptions::default().with_dtype(DType::BF16)`, transformers' `torch_dtype=` and
    /// `device_map=`).
    pub fn from_pretrained_with(model: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let model = model.as_ref();
        let spec = model.to_str().ok_or_else(|| {
            Error::NotFound(format!(
                "{}: the model path is not valid UTF-8",
                model.display()
            ))
        })?;
        Self::load(Some(spec), opts)
    }

    /// Resolves `spec` (path, hub id, or `None` for the default model: `TUNELAB_MODEL`, the
    /// hub, the offline fallback; see [`hub::resolve`]) and loads it.
    pub fn load(spec: Option<&str>, opts: &LoadOptions) -> Result<Self> {
        let resolved = hub::resolve(spec)?;
        Self::load_resolved(resolved, opts)
    }

    /// Loads a model from a local path (HF directory or GGUF file).
    pub fn load_path(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let p = path.as_ref().to_path_buf();
        let source = if p.is_dir() {
            ModelSource::HfDir(p)
        } else {
            ModelSource::Gguf(p)
        };
        Self::load_resolved(
            Resolved {
                source,
                via: "path".into(),
            },
            opts,
        )
    }

    fn load_resolved(resolved: Resolved, opts: &LoadOptions) -> Result<Self> {
        let (model, tokenizer) = match &resolved.source {
            ModelSource::Gguf(p) => load::load_gguf(p, opts.dtype, &opts.device)?,
            ModelSource::HfDir(d) => {
                let (m, t) = load::load_hf_dir(d, opts.dtype, &opts.device)?;
                let t = t.ok_or_else(|| {
                    Error::NotFound(format!("{}: tokenizer.json is missing", d.display()))
                })?;
                (m, t)
            }
        };
        Ok(Self {
            model,
            tokenizer,
            resolved,
        })
    }

    /// Generates a continuation of `prompt`.
    pub fn generate(&self, prompt: &str, cfg: &GenerationConfig) -> Result<Generation> {
        generate::generate(&self.model, &self.tokenizer, prompt, cfg, None)
    }

    /// Generates, streaming the text to `on_text` as it comes.
    pub fn generate_stream(
        &self,
        prompt: &str,
        cfg: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        generate::generate(&self.model, &self.tokenizer, prompt, cfg, Some(on_text))
    }

    /// Answers `messages` through the model's chat template.
    pub fn chat(&self, messages: &[Message], cfg: &GenerationConfig) -> Result<Generation> {
        generate::chat(&self.model, &self.tokenizer, messages, cfg, None)
    }

    /// [`Pretrained::chat`], streaming the answer to `on_text`.
    pub fn chat_stream(
        &self,
        messages: &[Message],
        cfg: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        generate::chat(&self.model, &self.tokenizer, messages, cfg, Some(on_text))
    }

    /// Saves model and tokenizer as a HF directory.
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        load::save_pretrained(&self.model, Some(&self.tokenizer), dir)
    }
}
