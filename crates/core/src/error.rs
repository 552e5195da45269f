//! The one error type of metal-marlin. Every variant says what failed and why.

use std::path::PathBuf;

/// Result alias used across the workspace.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of loading, parsing, running and serving models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not what its format requires.
    #[error("{path}: invalid {format} file: {reason}")]
    Format {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    /// A model configuration is missing a field or has an unusable value.
    #[error("model config: {0}")]
    Config(String),
    /// The model's architecture is not one we implement.
    #[error("unsupported architecture '{0}' (supported: {1})")]
    UnsupportedArch(String, String),
    /// A tensor the model needs is absent from the checkpoint.
    #[error("tensor '{0}' not found in the checkpoint")]
    MissingTensor(String),
    /// A tensor has the wrong shape for where it is used.
    #[error("tensor '{name}': expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    /// The prompt does not fit the model's context.
    #[error("prompt has {prompt} tokens, which with {requested} new tokens exceeds the context length {context}")]
    ContextOverflow {
        prompt: usize,
        requested: usize,
        context: usize,
    },
    /// A backend was asked for something it cannot do and no fallback exists.
    #[error("backend {backend}: {reason}")]
    Backend { backend: String, reason: String },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an io::Error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error for `path` with a reason.
    pub fn format(
        path: impl Into<PathBuf>,
        format: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Error::Format {
            path: path.into(),
            format,
            reason: reason.into(),
        }
    }
}
