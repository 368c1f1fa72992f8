//! The error type of siam-data: every variant names the file or the parameter at fault.

use std::path::PathBuf;

/// Errors raised while reading, splitting, sampling or loading data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file's content is not what its format promises.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset or value when known.
        msg: String,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {msg}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        msg: String,
    },
    /// A dataset, split or sampler cannot be built from what it was given.
    #[error("{0}")]
    Invalid(String),
    /// A tensor could not be built.
    #[error("building a tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Result alias of siam-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
