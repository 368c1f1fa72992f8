//! The error type of siam-train: config errors name the key, data and model errors keep their
//! file, and a diverged run says where and why.

use std::path::PathBuf;

/// Errors of siam-train.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration cannot work.
    #[error("config: {0}")]
    Config(String),
    /// Data could not be read or sampled.
    #[error(transparent)]
    Data(#[from] siam_data::DataError),
    /// A model problem.
    #[error(transparent)]
    Model(#[from] siam_model::ModelError),
    /// A metric could not be computed.
    #[error(transparent)]
    Eval(#[from] siam_eval::EvalError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The run folder or a checkpoint could not be used.
    #[error("{path}: {msg}")]
    Run {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The loss or a gradient stopped being finite.
    #[error("{0}")]
    Diverged(String),
    /// The run was stopped on request after writing a checkpoint.
    #[error("stopped at step {step}; resume with the checkpoint {checkpoint}")]
    Interrupted {
        /// The last step done.
        step: u64,
        /// The checkpoint written.
        checkpoint: PathBuf,
    },
}

impl TrainError {
    pub(crate) fn run(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Run {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Result alias of siam-train.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
