//! The error type of siam-model: model-file problems name the file and what is wrong.

use std::path::PathBuf;

/// Errors of siam-model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model file could not be read, written or understood.
    #[error("{path}: {msg}")]
    File {
        /// The model file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An image given for embedding could not be used.
    #[error("{path}: {msg}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A device name could not be used.
    #[error("device '{name}': {why}")]
    Device {
        /// The name given.
        name: String,
        /// Why it cannot be used.
        why: String,
    },
    /// A model cannot be built from this configuration.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Result alias of siam-model.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
