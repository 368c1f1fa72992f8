//! The error type of siam-eval.

/// Errors of siam-eval.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The inputs cannot be evaluated.
    #[error("{0}")]
    Invalid(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A model operation failed.
    #[error(transparent)]
    Model(#[from] siam_model::ModelError),
}

/// Result alias of siam-eval.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
