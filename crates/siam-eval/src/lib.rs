//! siam-eval: honest numbers for Siamese networks. It works on distances, `same` flags,
//! embeddings and labels; it probes models only through siam-model's public API.
//!
//! - [`verification`](mod@verification): ROC-AUC (ties handled), EER, TAR at FAR, accuracy and balanced accuracy,
//!   and [`calibrate`] for the decision threshold.
//! - [`retrieval`](mod@retrieval): precision@1, R-precision, MAP@R (pytorch-metric-learning's conventions),
//!   leave-one-out or query versus gallery, in bounded memory.
//! - [`stats`]: same/different distance statistics against the margin, quantiles.
//! - [`diagnose`]: probes a model and explains what is wrong with it ([`Finding`]s with
//!   evidence and a fix); [`plot`] draws the pictures (SVG and PNG), [`report`] the HTML page.
//! - [`project`]: covariance, eigen-decomposition, effective rank, PCA and t-SNE.
//!
//! ```
//! use siam_eval::verification::{verification, calibrate, Calibration};
//! let d = [0.1f32, 0.4, 0.35, 0.8];
//! let same = [1.0f32, 1.0, 0.0, 0.0];
//! let r = verification(&d, &same, None)?;
//! assert_eq!(r.roc_auc, 0.75);
//! let t = calibrate(&d, &same, Calibration::BalancedAccuracy)?;
//! assert!(t > 0.1 && t < 0.35);
//! # Ok::<(), siam_eval::EvalError>(())
//! ```

pub mod diagnose;
pub mod error;
pub mod plot;
pub mod project;
pub mod report;
pub mod retrieval;
pub mod stats;
pub mod verification;

pub use diagnose::{Diagnosis, Finding, Kind, Severity};
pub use error::{EvalError, Result};
pub use retrieval::{RetrievalReport, retrieval};
pub use stats::{DistanceStats, distance_quantiles, distance_stats};
pub use verification::{
    Calibration, KFoldReport, Roc, VerificationReport, calibrate, kfold, roc, verification,
};
