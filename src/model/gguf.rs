//! Reading GGUF files: metadata with errors that name the key, and tensors by name.
//!
//! GGUF is llama.cpp's single-file format: a header of typed key/value metadata
//! (`general.architecture`, `llama.block_count`, `tokenizer.ggml.tokens`, ...) followed by
//! tensors in GGML block formats (F32, F16, Q8_0, Q4_1, Q4_K, ...). candle's
//! `gguf_file::Content` parses it; this module wraps it so that a missing or mistyped key gives
//! an error naming the file, the key and the expected type.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;

use crate::error::{Error, Result};

/// An open GGUF file: its parsed header and a reader for its tensors.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("metadata_keys", &self.content.metadata.len())
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens `path` and parses its header (metadata and tensor table); tensor data is read on
    /// demand by [`GgufFile::tensor`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| Error::format(&path, format!("not a readable GGUF file: {e}")))?;
        Ok(Self {
            path,
            content,
            reader,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// candle's parsed header.
    pub fn content(&self) -> &Content {
        &self.content
    }

    /// The raw metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| {
            Error::format(&self.path, format!("GGUF metadata key `{key}` is missing"))
        })
    }

    fn wrong_type(&self, key: &str, expected: &str, v: &Value) -> Error {
        Error::format(
            &self.path,
            format!(
                "GGUF metadata key `{key}`: expected {expected}, found {:?}",
                v.value_type()
            ),
        )
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            Value::String(s) => Ok(s),
            v => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// An optional string value (absent is `None`, a wrong type is an error).
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    /// An unsigned integer value of any width.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        value_as_u64(v)
            .map(|x| x as usize)
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// An optional unsigned integer value.
    pub fn get_usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => value_as_u64(v)
                .map(|x| Some(x as usize))
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v)),
        }
    }

    /// An optional float value (f32 or f64).
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(self.wrong_type(key, "a float", v)),
        }
    }

    /// An optional boolean value.
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        match self.require(key)? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.as_str()),
                    v => Err(self.wrong_type(&format!("{key}[{i}]"), "a string", v)),
                })
                .collect(),
            v => Err(self.wrong_type(key, "an array of strings", v)),
        }
    }

    /// An optional array of integers (e.g. `tokenizer.ggml.token_type`).
    pub fn get_int_array_opt(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    value_as_i64(v)
                        .ok_or_else(|| self.wrong_type(&format!("{key}[{i}]"), "an integer", v))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(self.wrong_type(key, "an array of integers", v)),
        }
    }

    /// Names of all tensors in the file, sorted.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .content
            .tensor_infos
            .keys()
            .map(|s| s.as_str())
            .collect();
        names.sort();
        names
    }

    /// Whether the file holds tensor `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads tensor `name` in its stored GGML format.
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(Error::format(
                &self.path,
                format!("GGUF tensor `{name}` is missing"),
            ));
        }
        self.content
            .tensor(&mut self.reader, name, device)
            .map_err(|e| Error::format(&self.path, format!("GGUF tensor `{name}`: {e}")))
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(*x as u64),
        Value::U16(x) => Some(*x as u64),
        Value::U32(x) => Some(*x as u64),
        Value::U64(x) => Some(*x),
        Value::I8(x) if *x >= 0 => Some(*x as u64),
        Value::I16(x) if *x >= 0 => Some(*x as u64),
        Value::I32(x) if *x >= 0 => Some(*x as u64),
        Value::I64(x) if *x >= 0 => Some(*x as u64),
        _ => None,
    }
}

fn value_as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(*x as i64),
        Value::U16(x) => Some(*x as i64),
        Value::U32(x) => Some(*x as i64),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I8(x) => Some(*x as i64),
        Value::I16(x) => Some(*x as i64),
        Value::I32(x) => Some(*x as i64),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}
