//! One error type for the whole library.
//!
//! Every variant that a user can cause carries what is needed to act on it: the file, the
//! record or tensor, and what was expected versus what was found. The library never panics on
//! input; a bad file, shape or config comes back as one of these.

use std::path::PathBuf;

/// The library's error.
///
/// `#[non_exhaustive]`: new variants may come in any release, so a `match` needs a `_` arm. The
/// variants that callers match on carry their facts as fields (the path of a layer, the record's
/// file and line, the step training stopped at); the older string-carrying ones (`Input`, ...)
/// stay for the rest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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

    /// A hub model is not in the local cache and offline mode (`HF_HUB_OFFLINE=1` or
    /// `TUNELAB_OFFLINE=1`) forbids downloading it.
    #[error(
        "`{repo_id}` is not in the local hub cache ({}) and offline mode (HF_HUB_OFFLINE=1) forbids downloading it",
        .cache_dir.display()
    )]
    Offline {
        /// The hub id asked for.
        repo_id: String,
        /// The hub cache that was searched.
        cache_dir: PathBuf,
    },

    /// No linear layer (projection) sits at this HF module path.
    #[error(
        "no linear layer at `{path}`; paths look like `model.layers.0.self_attn.q_proj` (layers 0..{layers}) or `lm_head`"
    )]
    UnknownLayer {
        /// The path asked for.
        path: String,
        /// How many decoder layers the model has (valid indices are `0..layers`).
        layers: usize,
    },

    /// A PEFT model has no adapter of this name.
    #[error("no adapter named `{name}`; the model has {}", list_or_none(.available))]
    UnknownAdapter {
        /// The name asked for.
        name: String,
        /// The adapters the model has.
        available: Vec<String>,
    },

    /// One record of a dataset file is bad, or a later step (chat template, tokenizer,
    /// truncation) failed on it: the file, the line (JSONL) or index (JSON array), and what.
    #[error("{}: {location}: {source}", .file.display())]
    Record {
        /// The file (or the virtual name given to a string).
        file: PathBuf,
        /// The line or index in it.
        location: Location,
        /// What is wrong (often [`Error::Field`]).
        #[source]
        source: Box<Error>,
    },

    /// A field of a record or message is missing or has the wrong type or value.
    #[error("field `{field}`: {msg}")]
    Field {
        /// The field, e.g. `messages[2].role`.
        field: String,
        /// What was expected and what was found.
        msg: String,
    },

    /// Something failed on one example of a list (0-based index in that list), e.g. in the
    /// batcher; `train::sft` turns it into an [`Error::Record`] naming the file and line.
    #[error("example {index}: {source}")]
    Example {
        /// The example's index in the list given.
        index: usize,
        /// What went wrong.
        #[source]
        source: Box<Error>,
    },

    /// An input (prompt, message list, argument) is invalid.
    #[error("{0}")]
    Input(String),

    /// A tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// Training cannot go on (a setting the model does not support, a lost activation).
    #[error("training stopped: {0}")]
    Training(String),

    /// Training stopped at `step` (1-based) because its loss or gradient norm was not finite;
    /// the weights were not updated at that step.
    #[error("training stopped: {msg}")]
    TrainingStopped {
        /// The step (1-based) whose update was refused.
        step: usize,
        /// The last checkpoint written before it, the one to resume from.
        last_checkpoint: Option<PathBuf>,
        /// What happened, with the step, the value and what to try.
        msg: String,
    },

    /// An error from candle (tensor ops).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Where a record sits in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// A JSONL line, 1-based.
    Line(usize),
    /// An index in a JSON array, 0-based.
    Index(usize),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Index(i) => write!(f, "index {i}"),
        }
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
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

    /// This error, as having happened on example `index` of a list ([`Error::Example`]).
    pub fn at_example(self, index: usize) -> Self {
        Error::Example {
            index,
            source: Box::new(self),
        }
    }

    /// The innermost error under [`Error::Record`] and [`Error::Example`] wrappers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Record { source, .. } | Error::Example { source, .. } => source.root(),
            other => other,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_errors_read_file_line_field() {
        let e = Error::Record {
            file: "data/chats.jsonl".into(),
            location: Location::Line(7),
            source: Box::new(Error::Field {
                field: "messages[1].role".into(),
                msg: "expected one of system, user, assistant; found `bot`".into(),
            }),
        };
        assert_eq!(
            e.to_string(),
            "data/chats.jsonl: line 7: field `messages[1].role`: expected one of system, user, \
             assistant; found `bot`"
        );
        assert!(matches!(e.root(), Error::Field { field, .. } if field == "messages[1].role"));
        let e = Error::Input("no assistant turn".into()).at_example(3);
        assert_eq!(e.to_string(), "example 3: no assistant turn");
        assert!(matches!(e.root(), Error::Input(_)));
    }

    #[test]
    fn unknown_adapter_lists_what_there_is() {
        let e = Error::UnknownAdapter {
            name: "b".into(),
            available: vec![],
        };
        assert_eq!(e.to_string(), "no adapter named `b`; the model has none");
    }
}
