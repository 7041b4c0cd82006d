//! One error type for the whole library.
//!
//! Every variant that a user can cause carries what is needed to act on it: the file, the
//! record or tensor, and what was expected versus what was found. The library never panics on
//! input; a bad file, shape or config comes back as one of these.

use std::path::PathBuf;

/// The library's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what it should be (bad JSON, truncated
    /// safetensors, a GGUF without a needed key, ...).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field, tensor or record and the expected value.
        msg: String,
    },

    /// A tensor has the wrong shape or dtype for where it goes.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The tensor's name (HF path).
        name: String,
        /// The expected dims.
        expected: Vec<usize>,
        /// The dims found.
        found: Vec<usize>,
    },

    /// A configuration value is invalid.
    #[error("config field `{field}`: {msg}")]
    Config {
        /// The field.
        field: String,
        /// What was expected and what was found.
        msg: String,
    },

    /// The model cannot be found or fetched.
    #[error("{0}")]
    NotFound(String),

    /// An input (prompt, message list, argument) is invalid.
    #[error("{0}")]
    Input(String),

    /// A tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// Training had to stop (a NaN or infinite loss or gradient norm); says at which step and
    /// which checkpoint is the last good one.
    #[error("training stopped: {0}")]
    Training(String),

    /// An error from candle (tensor ops).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The library's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A [`Error::Format`] for `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Config`] for `field`.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
}
