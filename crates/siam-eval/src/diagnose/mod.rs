//! Diagnosis: why a Siamese network outputs what it does. [`measure`] probes a model on a set
//! of images (embedding geometry, consistency of its outputs, verification and retrieval
//! against baselines); [`findings`] turns those measurements, with the training context and
//! run history when known, into [`Finding`]s that each carry a stable [`Kind`], a severity,
//! the figures that show it, and a fix.
//!
//! [`findings`] is a pure function of [`Measurements`], so every rule is testable without a
//! model.
//!
//! The map: this file holds the types (findings, measurements, the probe); `measure.rs`
//! probes a model; `findings/` holds the rules, one block per kind; `inputs.rs` the input
//! check over the data and its rule; `data/` the data's quality (suspected wrong labels,
//! duplicates, degenerate images), whose rules are in `findings/data.rs`.

use candle_core::{DType, Device, Tensor};
use siam_model::{Distance, SiameseModel};

use crate::error::{EvalError, Result};
use crate::retrieval::{RetrievalReport, retrieval};
use crate::stats::{DistanceStats, distance_stats};
use crate::verification::{
    Calibration, Roc, VerificationReport, accuracy_at, calibrate, roc, verification,
};

/// How serious a finding is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Worth knowing; the model works.
    Info,
    /// The model works worse than it should.
    Warning,
    /// The model's outputs cannot be trusted.
    Error,
}

/// The stable name of each kind of finding (`kind` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Embeddings crowd together.
    Collapse,
    /// The margin does not fit the embedding scale.
    MarginScale,
    /// Same pairs lie farther apart than different pairs.
    InvertedLabels,
    /// Skewed same/different pair frequencies, or a verdict that is always the same.
    PairImbalance,
    /// Skewed class frequencies.
    ClassImbalance,
    /// Training figures far better than validation figures.
    Overfitting,
    /// Inconsistent outputs: batch-dependent, non-deterministic, asymmetric, stale BatchNorm.
    EvalMode,
    /// NaN or infinity in weights, embeddings or the loss history.
    NonFinite,
    /// Retrieval no better than raw pixels or an untrained encoder.
    WeakFeatures,
    /// Training made the encoder worse than untrained (or than pixels) on this data — on
    /// classes it never saw — while its figures on the training classes are good.
    OverSpecialised,
    /// The stored threshold is far from the best threshold on this data.
    StaleThreshold,
    /// Much of the data falls outside the input check stored with the model.
    UnfamiliarInputs,
    /// The learning rate was too high: the weights ran away, the loss stalled.
    LrTooHigh,
    /// The learning rate was too low: tiny updates, the loss still falling at the end.
    LrTooLow,
    /// Many ReLU units never fire on the data: they pass no gradient and learn nothing.
    DeadUnits,
    /// Many images sit among images of another class: suspected wrong labels.
    LabelNoise,
    /// Duplicate images: with conflicting labels, across the run's splits, or within a class.
    Duplicates,
    /// Blank, saturated or out-of-range images.
    DegenerateImages,
}

impl Kind {
    /// Every kind, in the order reports list them.
    pub const ALL: [Kind; 18] = [
        Kind::NonFinite,
        Kind::InvertedLabels,
        Kind::Collapse,
        Kind::EvalMode,
        Kind::MarginScale,
        Kind::LrTooHigh,
        Kind::LrTooLow,
        Kind::DeadUnits,
        Kind::OverSpecialised,
        Kind::WeakFeatures,
        Kind::Overfitting,
        Kind::UnfamiliarInputs,
        Kind::LabelNoise,
        Kind::Duplicates,
        Kind::DegenerateImages,
        Kind::StaleThreshold,
        Kind::PairImbalance,
        Kind::ClassImbalance,
    ];

    /// The name used in JSON and docs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Collapse => "collapse",
            Kind::MarginScale => "margin-scale",
            Kind::InvertedLabels => "inverted-labels",
            Kind::PairImbalance => "pair-imbalance",
            Kind::ClassImbalance => "class-imbalance",
            Kind::Overfitting => "overfitting",
            Kind::EvalMode => "eval-mode",
            Kind::NonFinite => "non-finite",
            Kind::WeakFeatures => "weak-features",
            Kind::OverSpecialised => "over-specialised",
            Kind::StaleThreshold => "stale-threshold",
            Kind::UnfamiliarInputs => "unfamiliar-inputs",
            Kind::LrTooHigh => "lr-too-high",
            Kind::LrTooLow => "lr-too-low",
            Kind::DeadUnits => "dead-units",
            Kind::LabelNoise => "label-noise",
            Kind::Duplicates => "duplicates",
            Kind::DegenerateImages => "degenerate-images",
        }
    }
}

/// One named figure of evidence.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Figure {
    /// What was measured (kebab-case).
    pub name: String,
    /// Its value (null in JSON when not finite).
    pub value: f64,
}

/// One finding: what is wrong, the figures that show it, and what to do.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// Stable kind.
    pub kind: Kind,
    /// How serious it is.
    pub severity: Severity,
    /// One line saying what was found.
    pub summary: String,
    /// The figures that show it.
    pub evidence: Vec<Figure>,
    /// Why this happens and what it does to the outputs.
    pub explanation: String,
    /// What to change.
    pub fix: String,
}

fn finding(kind: Kind, severity: Severity, summary: String) -> Finding {
    Finding {
        kind,
        severity,
        summary,
        evidence: Vec::new(),
        explanation: String::new(),
        fix: String::new(),
    }
}

impl Finding {
    fn with(mut self, name: &str, value: f64) -> Self {
        self.evidence.push(Figure {
            name: name.into(),
            value,
        });
        self
    }
    fn explain(mut self, why: impl Into<String>, fix: impl Into<String>) -> Self {
        self.explanation = why.into();
        self.fix = fix.into();
        self
    }
}

/// What is known about how the model was trained (from its file and its run folder).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Context {
    /// The loss kind (`contrastive`, `triplet`, `bce`), when known.
    pub loss: Option<String>,
    /// The loss margin, when known.
    pub margin: Option<f64>,
    /// Whether embeddings are L2-normalised.
    pub normalized: bool,
    /// The distance the model compares with.
    pub distance: Distance,
    /// The share of same pairs the pair sampler drew (pair samplers only).
    pub positive_fraction: Option<f64>,
    /// The share of different pairs among a training batch's pairs (what a collapsed
    /// contrastive loss converges to, divided by margin²).
    pub different_share: Option<f64>,
    /// Whether the model file says it was trained.
    pub trained: bool,
    /// Images per class in the diagnosed data.
    pub class_counts: Vec<(String, usize)>,
    /// Images per class in the training split, when the run folder is known.
    pub train_class_counts: Option<Vec<(String, usize)>>,
    /// The optimizer's peak learning rate, when the run config is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
}

/// One logged training step of the run.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryStep {
    /// Global step.
    pub step: u64,
    /// Mean training loss of the window (None when not finite).
    pub loss: Option<f64>,
    /// The learning rate of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Mean gradient norm over the window (runs logged before siam logged it: None).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Largest gradient norm over the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm_max: Option<f64>,
    /// Norm of all trainable weights after the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_norm: Option<f64>,
    /// `‖Δθ‖ / ‖θ‖` of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_ratio: Option<f64>,
}

/// One validation of the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryValidation {
    /// Global step.
    pub step: u64,
    /// Validation loss, when logged.
    pub loss: Option<f64>,
    /// The selection metric.
    pub metric: f64,
    /// Validation ROC-AUC.
    pub roc_auc: f64,
    /// Validation precision@1.
    pub precision_at_1: f64,
}

/// A run's history from its metrics log.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct History {
    /// Logged training steps.
    pub steps: Vec<HistoryStep>,
    /// Validations.
    pub validations: Vec<HistoryValidation>,
    /// The selection metric's name.
    pub metric: String,
    /// Whether larger values of the metric are better.
    pub higher_is_better: bool,
    /// The run stopped on a non-finite loss or gradient: the message it logged.
    pub diverged: Option<String>,
    /// The norm of the trainable weights before the first step, when logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_weight_norm: Option<f64>,
}

/// Training versus validation figures of the diagnosed model, when the run is known.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Generalization {
    /// Precision@1 on a sample of the training split.
    pub train_precision_at_1: f64,
    /// Precision@1 on the validation split.
    pub val_precision_at_1: f64,
    /// ROC-AUC on pairs from the training split.
    pub train_roc_auc: f64,
    /// ROC-AUC on pairs from the validation split.
    pub val_roc_auc: f64,
    /// Precision@1 of an untrained encoder of the same shape on the same training sample: did
    /// training help where it trained?
    #[serde(default)]
    pub train_untrained_precision_at_1: Option<f64>,
}

/// The shape of the embedding cloud.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// Embeddings measured.
    pub points: usize,
    /// Embedding dimension.
    pub dims: usize,
    /// Mean L2 norm of an embedding.
    pub mean_norm: f64,
    /// Mean distance between two different embeddings (model distance).
    pub mean_pairwise_distance: f64,
    /// Mean per-dimension variance.
    pub mean_dim_variance: f64,
    /// Dimensions whose variance is below 1e-10 of the largest.
    pub dead_dims: usize,
    /// Effective rank of the covariance (1 = a line, `dims` = isotropic).
    pub effective_rank: f64,
    /// Share of the variance along the first principal component.
    pub top_component_share: f64,
}

/// Whether the model answers consistently.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consistency {
    /// Largest |embedding alone − embedding inside a batch|, relative to the mean norm.
    pub alone_vs_batch: f64,
    /// Largest |first − second embedding of the same batch|, relative to the mean norm.
    pub repeat: f64,
    /// Largest |d(a, b) − d(b, a)|, relative to the mean pair distance.
    pub asymmetry: f64,
    /// BatchNorm layers in the encoder.
    pub batchnorm_layers: usize,
    /// BatchNorm layers whose running statistics are exactly their initial values.
    pub batchnorm_at_init: usize,
    /// Mean |batch-statistics embedding − stored-statistics embedding| relative to the mean
    /// pairwise distance (BatchNorm models): how far the stored statistics are from this data.
    pub train_eval_shift: Option<f64>,
}

/// Everything [`findings`] looks at.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurements {
    /// The training context.
    pub context: Context,
    /// Verification on balanced pairs at the stored threshold (else the best one here).
    pub verification: VerificationReport,
    /// The threshold with the best balanced accuracy on these pairs.
    pub best_threshold: f32,
    /// That best balanced accuracy.
    pub best_balanced_accuracy: f64,
    /// The threshold stored in the model file.
    pub stored_threshold: Option<f32>,
    /// Share of same pairs called same at the threshold used.
    pub true_accept_rate: f64,
    /// Share of different pairs called different at the threshold used.
    pub true_reject_rate: f64,
    /// Leave-one-out retrieval of the model's embeddings.
    pub retrieval: RetrievalReport,
    /// Distance statistics against the margin (1 when unknown).
    pub stats: DistanceStats,
    /// Median distance of different pairs.
    pub different_median: f64,
    /// 95th percentile of same-pair distances.
    pub same_p95: f64,
    /// Embedding geometry.
    pub geometry: Geometry,
    /// Output consistency probes.
    pub consistency: Consistency,
    /// Precision@1 of raw (normalised) pixels, leave-one-out.
    pub pixels_precision_at_1: Option<f64>,
    /// Precision@1 of an untrained encoder of the same shape.
    pub untrained_precision_at_1: Option<f64>,
    /// ROC-AUC of an untrained encoder of the same shape on the same pairs.
    pub untrained_roc_auc: Option<f64>,
    /// Weight tensors holding NaN or infinity.
    pub non_finite_weights: Vec<String>,
    /// Embeddings holding NaN or infinity.
    pub non_finite_embeddings: usize,
    /// The run's history, when known.
    pub history: Option<History>,
    /// Train versus validation figures, when the run is known.
    pub generalization: Option<Generalization>,
    /// Figures split by the classes the model trained on and those it never saw, when known.
    #[serde(default)]
    pub classes: Option<ClassBreakdown>,
    /// The model's input check over the data, when the model file has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_check: Option<InputCheck>,
    /// How often each ReLU layer of the encoder fires on the data (dead units).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relu_activity: Vec<siam_model::ReluActivity>,
    /// Suspected wrong labels, duplicates and degenerate images in the data, when measured
    /// ([`data_quality`], which siam-train's diagnose runs on the data it loads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_quality: Option<DataQuality>,
}

/// Retrieval on the diagnosed data split by whether the model trained on the class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassBreakdown {
    /// Classes of the data the model trained on.
    pub seen_classes: usize,
    /// Classes of the data it never saw.
    pub unseen_classes: usize,
    /// Precision@1 within the seen classes' images (None with fewer than two such classes).
    pub seen_precision_at_1: Option<f64>,
    /// The untrained encoder's precision@1 within the seen classes' images.
    pub seen_untrained_precision_at_1: Option<f64>,
    /// Precision@1 within the unseen classes' images.
    pub unseen_precision_at_1: Option<f64>,
    /// The untrained encoder's precision@1 within the unseen classes' images.
    pub unseen_untrained_precision_at_1: Option<f64>,
    /// Raw pixels' precision@1 within the unseen classes' images.
    pub unseen_pixels_precision_at_1: Option<f64>,
}

/// A full diagnosis: the measurements and the findings, worst first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Diagnosis {
    /// The model file.
    pub model: String,
    /// The data diagnosed.
    pub data: String,
    /// The findings, worst first (empty for a healthy model).
    pub findings: Vec<Finding>,
    /// What they are based on.
    pub measurements: Measurements,
    /// Checks that could not be made, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl Diagnosis {
    /// Whether any finding is a warning or an error.
    pub fn healthy(&self) -> bool {
        self.findings.iter().all(|f| f.severity == Severity::Info)
    }

    /// The findings' kinds, worst first.
    pub fn kinds(&self) -> Vec<Kind> {
        self.findings.iter().map(|f| f.kind).collect()
    }
}

/// The raw material of the pictures: embeddings, labels, pair distances and the ROC.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// Row-major embeddings (`labels.len()` × `dims`).
    pub embeddings: Vec<f32>,
    /// Embedding dimension.
    pub dims: usize,
    /// Class of each embedding.
    pub labels: Vec<u32>,
    /// Class names by label.
    pub class_names: Vec<String>,
    /// Pair distances.
    pub distances: Vec<f32>,
    /// Pair `same` flags.
    pub same: Vec<f32>,
    /// The ROC curve of the pairs.
    pub roc: Roc,
}

/// What [`measure`] probes: a model, preprocessed images with labels, and balanced pairs.
pub struct Probe<'a> {
    /// The model.
    pub model: &'a SiameseModel,
    /// Preprocessed (N, C, H, W) images, as the model takes them.
    pub images: &'a Tensor,
    /// Class of each image.
    pub labels: &'a [u32],
    /// Class names by label.
    pub class_names: &'a [String],
    /// Pairs: indices into `images` and `same` flags.
    pub pairs: (&'a [usize], &'a [usize], &'a [f32]),
    /// Weight tensors holding NaN or infinity (from loading).
    pub non_finite_weights: Vec<String>,
    /// Measure retrieval of raw pixels and of an untrained encoder (the weak-features check).
    pub baselines: bool,
    /// The labels (of `labels`' numbering) of the classes the model was trained on, when its
    /// file records them (a run with a class split): figures are then split by seen and unseen
    /// classes.
    pub seen_labels: Option<&'a [u32]>,
}

mod data;
mod findings;
mod inputs;
mod measure;

pub use data::{
    DataInput, DataQuality, Degenerate, Duplicate, LISTED, NEIGHBOURS, OtherSplit, SHOWN, Suspect,
    data_quality, image_hash,
};

pub use findings::{LrEvidence, data_findings, findings, lr_evidence};
pub use inputs::{InputCheck, input_check, tally};
pub use measure::{consistency, geometry, measure};
