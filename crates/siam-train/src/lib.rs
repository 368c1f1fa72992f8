//! siam-train: the training loop of siam. A [`TrainConfig`] (TOML or a preset) becomes a run
//! folder holding the resolved config, a metrics log, checkpoints, the best model with its
//! calibrated threshold, and a test summary. Runs are seeded, reproducible on CPU and
//! resumable exactly; the library emits [`Event`]s and prints nothing.
//!
//! - [`config`]: `TrainConfig` and presets (`default`, `seed`, `quick`).
//! - [`data`]: data sources (embedded fixtures, downloaded datasets, IDX dirs, image folders).
//! - [`denormals`]: flushing denormal floats to zero while training on the CPU.
//! - [`optim`]: AdamW and SGD with momentum with saveable state; LR schedules with warmup.
//! - [`evaluate`](mod@evaluate): verification, retrieval and distance statistics of a model on a set.
//! - [`calibrate`]: a new threshold, quantiles and input check for a trained model.
//! - [`pairs`]: the user's pair lists: evaluation, the k-fold protocol, batch verdicts.
//! - [`trainer`]: [`train`], [`resume`], and the learning-rate range test [`lr_find`].
//! - [`sweep`]: short runs over a grid of margins and learning rates, side by side.
//! - [`fuzz`]: the harnesses `cargo xtask fuzz` and the fuzz regression test share.
//! - [`diagnose`]: loads a model, its data and its run folder for [`siam_eval::diagnose`].
//!
//! ```no_run
//! use siam_train::{TrainConfig, TrainOptions, train};
//! let cfg = TrainConfig::preset("quick")?;
//! let summary = train(&cfg, "runs/quick".as_ref(), &TrainOptions::default(), &mut |event| {
//!     if let siam_train::Event::Validation(v) = event {
//!         eprintln!("step {}: MAP@R {:.3}", v.step, v.report.retrieval.map_at_r);
//!     }
//! })?;
//! println!("test ROC-AUC {:.4}", summary.test.verification.roc_auc);
//! # Ok::<(), siam_train::TrainError>(())
//! ```

pub mod calibrate;
pub mod config;
pub mod data;
pub mod denormals;
pub mod diagnose;
pub mod error;
pub mod evaluate;
pub mod fuzz;
pub mod optim;
pub mod pairs;
pub mod sweep;
pub mod trainer;

pub use config::{Metric, TrainConfig};
pub use error::{Result, TrainError};
pub use evaluate::{EvalReport, evaluate};
pub use trainer::{
    Event, LrFind, LrFindOptions, StepRecord, Summary, TrainOptions, ValidationRecord, lr_find,
    pretrained_file, resume, train, write_lr_find,
};
