//! Diagnosis: why a Siamese network outputs what it does. [`measure`] probes a model on a set
//! of images (embedding geometry, consistency of its outputs, verification and retrieval
//! against baselines); [`findings`] turns those measurements, with the training context and
//! run history when known, into [`Finding`]s that each carry a stable [`Kind`], a severity,
//! the figures that show it, and a fix.
//!
//! [`findings`] is a pure function of [`Measurements`], so every rule is testable without a
//! model.

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
}

impl Kind {
    /// Every kind, in the order reports list them.
    pub const ALL: [Kind; 11] = [
        Kind::NonFinite,
        Kind::InvertedLabels,
        Kind::Collapse,
        Kind::EvalMode,
        Kind::MarginScale,
        Kind::OverSpecialised,
        Kind::WeakFeatures,
        Kind::Overfitting,
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
}

/// One logged training step of the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryStep {
    /// Global step.
    pub step: u64,
    /// Mean training loss of the window (None when not finite).
    pub loss: Option<f64>,
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

fn to_vec2(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, |m, v| if v.is_nan() || v > m { v } else { m })
}

/// The geometry of `emb` (N, D) under `distance`, over at most its first 2,000 rows.
pub fn geometry(emb: &Tensor, distance: Distance) -> Result<Geometry> {
    let n = emb.dim(0)?.min(2000);
    let d = emb.dim(1)?;
    let e = emb.narrow(0, 0, n)?;
    let x = to_vec2(&e)?;
    let mean_norm = x
        .chunks_exact(d)
        .map(|r| r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n.max(1) as f64;
    let m = n.min(1000);
    let sub = e.narrow(0, 0, m)?;
    let pd = to_vec2(&distance.pairwise(&sub, &sub)?)?;
    let mean_pairwise_distance = if m > 1 {
        pd.iter().map(|v| f64::from(*v)).sum::<f64>() / (m * (m - 1)) as f64
    } else {
        0.0
    };
    let (cov, _) = crate::project::covariance(&x, n, d);
    let vars: Vec<f64> = (0..d).map(|i| cov[i * d + i]).collect();
    let max_var = vars.iter().copied().fold(0.0, f64::max);
    let (eig, _) = crate::project::sym_eigen(&cov, d);
    let total: f64 = eig.iter().map(|l| l.max(0.0)).sum();
    Ok(Geometry {
        points: n,
        dims: d,
        mean_norm,
        mean_pairwise_distance,
        mean_dim_variance: vars.iter().sum::<f64>() / d as f64,
        dead_dims: vars.iter().filter(|&&v| v <= 1e-10 * max_var).count(),
        effective_rank: crate::project::effective_rank(&eig),
        top_component_share: if total > 0.0 {
            eig[0].max(0.0) / total
        } else {
            1.0
        },
    })
}

/// Probes whether `model` answers consistently on `images` (at least 2): alone versus in a
/// batch, twice in a row, symmetric distances, and its BatchNorm statistics. The model is left
/// as it was found.
pub fn consistency(model: &SiameseModel, images: &Tensor) -> Result<Consistency> {
    let n = images.dim(0)?.min(64);
    if n < 2 {
        return Err(EvalError::Invalid(
            "consistency probes need at least 2 images".into(),
        ));
    }
    let x = images.narrow(0, 0, n)?;
    let batch = model.embed(&x)?;
    let again = model.embed(&x)?;
    let bv = to_vec2(&batch)?;
    let d = batch.dim(1)?;
    let norm = bv
        .chunks_exact(d)
        .map(|r| r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        .sum::<f64>()
        / n as f64;
    let scale = norm.max(1e-12);
    let mut alone = 0f64;
    for i in 0..n.min(8) {
        let e = to_vec2(&model.embed(&x.narrow(0, i, 1)?)?)?;
        alone = alone.max(max_abs_diff(&e, &bv[i * d..(i + 1) * d]));
    }
    let repeat = max_abs_diff(&to_vec2(&again)?, &bv);
    let half = n / 2;
    let (a, b) = (batch.narrow(0, 0, half)?, batch.narrow(0, half, half)?);
    let dab = to_vec2(&model.distance(&a, &b)?)?;
    let dba = to_vec2(&model.distance(&b, &a)?)?;
    let mean_d = dab.iter().map(|v| f64::from(v.abs())).sum::<f64>() / half as f64;
    let asymmetry = max_abs_diff(&dab, &dba) / mean_d.max(1e-12);

    // BatchNorm: which layers still hold their initial statistics, and how far batch
    // statistics move the embedding (restoring the running statistics afterwards, since a
    // training-mode forward updates them).
    let stats: Vec<(String, Tensor)> = {
        let data = model.varmap().data().lock().expect("var map lock");
        data.iter()
            .filter(|(k, _)| k.ends_with(".running_mean") || k.ends_with(".running_var"))
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect::<candle_core::Result<Vec<_>>>()?
    };
    let mut layers = 0;
    let mut at_init = 0;
    for (k, t) in &stats {
        if let Some(prefix) = k.strip_suffix(".running_mean") {
            layers += 1;
            let mean = to_vec2(t)?;
            let var_key = format!("{prefix}.running_var");
            let var = match stats.iter().find(|(k2, _)| *k2 == var_key) {
                Some((_, v)) => to_vec2(v)?,
                None => continue,
            };
            if mean.iter().all(|&v| v == 0.0) && var.iter().all(|&v| v == 1.0) {
                at_init += 1;
            }
        }
    }
    let train_eval_shift = if layers > 0 {
        let t = model.forward_t(&x, true);
        {
            let data = model.varmap().data().lock().expect("var map lock");
            for (k, v) in &stats {
                if let Some(var) = data.get(k) {
                    var.set(v)?;
                }
            }
        }
        let tv = to_vec2(&t?)?;
        let shift = tv
            .chunks_exact(d)
            .zip(bv.chunks_exact(d))
            .map(|(p, q)| {
                p.iter()
                    .zip(q)
                    .map(|(u, v)| f64::from(u - v).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / n as f64;
        let g = geometry(&batch, model.distance_kind())?;
        Some(shift / g.mean_pairwise_distance.max(1e-12))
    } else {
        None
    };
    Ok(Consistency {
        alone_vs_batch: alone / scale,
        repeat: repeat / scale,
        asymmetry,
        batchnorm_layers: layers,
        batchnorm_at_init: at_init,
        train_eval_shift,
    })
}

fn quantile(v: &[f32], same: &[f32], want_same: bool, q: f64) -> f64 {
    let mut s: Vec<f64> = v
        .iter()
        .zip(same)
        .filter(|(_, s)| (**s == 1.0) == want_same)
        .map(|(d, _)| f64::from(*d))
        .collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (pos - lo as f64) * (s[hi] - s[lo])
}

/// Leave-one-out precision@1 within the rows of `emb` whose `is_seen` flag equals `want`;
/// `None` when they hold fewer than two classes.
fn subset_precision_at_1(
    emb: &Tensor,
    labels: &[u32],
    is_seen: &[bool],
    want: bool,
    distance: Distance,
) -> Result<Option<f64>> {
    let rows: Vec<u32> = (0..labels.len() as u32)
        .filter(|&i| is_seen[i as usize] == want)
        .collect();
    let sub_labels: Vec<u32> = rows.iter().map(|&i| labels[i as usize]).collect();
    let mut distinct = sub_labels.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 2 {
        return Ok(None);
    }
    let idx = Tensor::from_vec(rows.clone(), rows.len(), emb.device())?;
    let sub = emb.index_select(&idx, 0)?;
    Ok(Some(
        retrieval(&sub, &sub_labels, None, distance, 256)?.precision_at_1,
    ))
}

/// Measures everything [`findings`] needs. `context` says how the model was trained;
/// `history` and `generalization` come from its run folder when known.
pub fn measure(
    probe: &Probe<'_>,
    context: Context,
    history: Option<History>,
    generalization: Option<Generalization>,
) -> Result<(Measurements, Evidence)> {
    let model = probe.model;
    let n = probe.images.dim(0)?;
    if n != probe.labels.len() {
        return Err(EvalError::Invalid(format!(
            "{n} images for {} labels",
            probe.labels.len()
        )));
    }
    let emb = model.embed_chunked(probe.images, 512)?;
    let ev = to_vec2(&emb)?;
    let dims = emb.dim(1)?;
    let non_finite_embeddings = ev
        .chunks_exact(dims)
        .filter(|r| r.iter().any(|v| !v.is_finite()))
        .count();
    let (pa, pb, same) = probe.pairs;
    // Non-finite distances would stop every metric: they become the largest distance here and
    // the `non-finite` finding reports them.
    let finite = pair_distances(&emb, pa, pb, model.distance_kind())?;
    let stored_threshold = model.meta().threshold;
    let best_threshold = calibrate(&finite, same, Calibration::BalancedAccuracy)?;
    let best_balanced_accuracy = accuracy_at(&finite, same, best_threshold)?.1;
    let used = stored_threshold.unwrap_or(best_threshold);
    let verification = verification(&finite, same, Some(used))?;
    let (mut ta, mut tr, mut pos, mut neg) = (0usize, 0usize, 0usize, 0usize);
    for (&d, &s) in finite.iter().zip(same) {
        if s == 1.0 {
            pos += 1;
            ta += usize::from(d <= used);
        } else {
            neg += 1;
            tr += usize::from(d > used);
        }
    }
    let margin = context.margin.unwrap_or(1.0);
    let stats = distance_stats(&finite, same, margin)?;
    let clean = if non_finite_embeddings > 0 {
        Tensor::from_vec(
            ev.iter()
                .map(|v| if v.is_finite() { *v } else { 0.0 })
                .collect::<Vec<_>>(),
            (n, dims),
            &Device::Cpu,
        )?
    } else {
        emb.to_device(&Device::Cpu)?
    };
    let retrieval_report = retrieval(&clean, probe.labels, None, model.distance_kind(), 256)?;
    let geometry = geometry(&clean, model.distance_kind())?;
    let consistency = consistency(model, probe.images)?;
    let mut baseline_embeddings = None;
    let (pixels, untrained, untrained_auc) = if probe.baselines {
        let flat = probe.images.flatten_from(1)?.to_device(&Device::Cpu)?;
        let px = retrieval(&flat, probe.labels, None, Distance::Euclidean, 256)?;
        let fresh = SiameseModel::new(model.config(), 0, model.device())?;
        let ue = fresh.embed_chunked(probe.images, 512)?;
        let un = retrieval(&ue, probe.labels, None, model.distance_kind(), 256)?;
        let ud = pair_distances(&ue, pa, pb, model.distance_kind())?;
        baseline_embeddings = Some((flat, ue.to_device(&Device::Cpu)?));
        (
            Some(px.precision_at_1),
            Some(un.precision_at_1),
            Some(roc(&ud, same)?.auc()),
        )
    } else {
        (None, None, None)
    };
    let classes = match probe.seen_labels {
        Some(seen) => {
            let is_seen: Vec<bool> = probe.labels.iter().map(|l| seen.contains(l)).collect();
            let p1 = |e: &Tensor, want: bool, d: Distance| -> Result<Option<f64>> {
                subset_precision_at_1(e, probe.labels, &is_seen, want, d)
            };
            let count = |want: bool| {
                let mut c: Vec<u32> = probe
                    .labels
                    .iter()
                    .zip(&is_seen)
                    .filter(|(_, s)| **s == want)
                    .map(|(l, _)| *l)
                    .collect();
                c.sort_unstable();
                c.dedup();
                c.len()
            };
            let dk = model.distance_kind();
            let (upx, uun, sun) = match &baseline_embeddings {
                Some((flat, ue)) => (
                    p1(flat, false, Distance::Euclidean)?,
                    p1(ue, false, dk)?,
                    p1(ue, true, dk)?,
                ),
                None => (None, None, None),
            };
            Some(ClassBreakdown {
                seen_classes: count(true),
                unseen_classes: count(false),
                seen_precision_at_1: p1(&clean, true, dk)?,
                seen_untrained_precision_at_1: sun,
                unseen_precision_at_1: p1(&clean, false, dk)?,
                unseen_untrained_precision_at_1: uun,
                unseen_pixels_precision_at_1: upx,
            })
        }
        None => None,
    };
    let roc = roc(&finite, same)?;
    let m = Measurements {
        context,
        verification,
        best_threshold,
        best_balanced_accuracy,
        stored_threshold,
        true_accept_rate: ta as f64 / pos.max(1) as f64,
        true_reject_rate: tr as f64 / neg.max(1) as f64,
        retrieval: retrieval_report,
        stats,
        different_median: quantile(&finite, same, false, 0.5),
        same_p95: quantile(&finite, same, true, 0.95),
        geometry,
        consistency,
        pixels_precision_at_1: pixels,
        untrained_precision_at_1: untrained,
        untrained_roc_auc: untrained_auc,
        non_finite_weights: probe.non_finite_weights.clone(),
        non_finite_embeddings,
        history,
        generalization,
        classes,
    };
    let evidence = Evidence {
        embeddings: ev,
        dims,
        labels: probe.labels.to_vec(),
        class_names: probe.class_names.to_vec(),
        distances: finite,
        same: same.to_vec(),
        roc,
    };
    Ok((m, evidence))
}

/// Distances of the pairs (`a[k]`, `b[k]`) of rows of `emb` under `kind`, with non-finite
/// values replaced by `f32::MAX`.
fn pair_distances(emb: &Tensor, a: &[usize], b: &[usize], kind: Distance) -> Result<Vec<f32>> {
    let index = |v: &[usize]| {
        Tensor::from_vec(
            v.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            v.len(),
            emb.device(),
        )
    };
    let (ea, eb) = (
        emb.index_select(&index(a)?, 0)?,
        emb.index_select(&index(b)?, 0)?,
    );
    Ok(to_vec2(&kind.rowwise(&ea, &eb)?)?
        .into_iter()
        .map(|d| if d.is_finite() { d } else { f32::MAX })
        .collect())
}

/// The largest distance two unit vectors can have under `kind`.
fn sphere_diameter(kind: Distance) -> f64 {
    match kind {
        Distance::Euclidean | Distance::Cosine => 2.0,
        Distance::SquaredEuclidean => 4.0,
    }
}

fn round2(x: f64) -> f64 {
    if !(x > 0.0) || !x.is_finite() {
        return x;
    }
    let p = 10f64.powf(x.log10().floor() - 1.0);
    (x / p).round() * p
}

/// The loss a collapsed model (every distance ≈ 0) sits at, when it can be told.
fn collapsed_loss(c: &Context) -> Option<f64> {
    let m = c.margin?;
    match c.loss.as_deref()? {
        "triplet" => Some(m),
        "contrastive" => Some(c.different_share? * m * m),
        _ => None,
    }
}

/// The findings the measurements support, worst first. A healthy model gets none.
pub fn findings(m: &Measurements) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = &m.context;
    let g = &m.geometry;
    let v = &m.verification;

    // non-finite
    let history_nan = m.history.as_ref().map_or(0, |h| {
        h.steps.iter().filter(|s| s.loss.is_none()).count() + usize::from(h.diverged.is_some())
    });
    if !m.non_finite_weights.is_empty() || m.non_finite_embeddings > 0 || history_nan > 0 {
        let mut what = Vec::new();
        if !m.non_finite_weights.is_empty() {
            what.push(format!(
                "weights {}",
                m.non_finite_weights
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if m.non_finite_embeddings > 0 {
            what.push(format!("{} embeddings", m.non_finite_embeddings));
        }
        if let Some(d) = m.history.as_ref().and_then(|h| h.diverged.as_ref()) {
            what.push(format!("the run log ({d})"));
        } else if history_nan > 0 {
            what.push("the run's loss history".into());
        }
        out.push(
            finding(
                Kind::NonFinite,
                Severity::Error,
                format!("NaN or infinity in {}", what.join("; ")),
            )
            .with("non-finite-weight-tensors", m.non_finite_weights.len() as f64)
            .with("non-finite-embeddings", m.non_finite_embeddings as f64)
            .with("non-finite-loss-records", history_nan as f64)
            .explain(
                "Training diverged: a learning rate too high for the model, a margin far from the embedding scale, \
                 unnormalised inputs, or a square root of zero in a hand-written distance (siam's distances add ε under \
                 the root, so their gradient at d = 0 is finite). Once a weight is NaN every output it touches is NaN.",
                "Retrain from the last good checkpoint with a 10x lower learning rate (--lr), normalised inputs and \
                 embeddings (model.normalize = true), and a margin that fits the scale; never use this file for decisions.",
            ),
        );
    }

    // inverted-labels: same pairs farther apart than different ones, or training that took
    // the distances from informative (untrained) to uninformative. A network trained with the
    // convention flipped cannot push every class apart from itself on unseen images; it ends
    // near ROC-AUC 0.5, below where an untrained encoder of its shape starts.
    let unlearned = c.trained
        && m.untrained_roc_auc
            .is_some_and(|u| v.roc_auc < 0.6 && v.roc_auc < u - 0.1);
    if unlearned && v.roc_auc >= 0.45 {
        let u = m.untrained_roc_auc.unwrap_or(f64::NAN);
        out.push(
            finding(
                Kind::InvertedLabels,
                Severity::Error,
                format!(
                    "training destroyed the same/different signal: ROC-AUC {:.3}, where an untrained encoder of this shape reaches {u:.3}",
                    v.roc_auc
                ),
            )
            .with("roc-auc", v.roc_auc)
            .with("untrained-roc-auc", u)
            .with("same-mean-distance", m.stats.same_mean)
            .with("different-mean-distance", m.stats.different_mean)
            .explain(
                "Training pushed same pairs apart and pulled different pairs together until distances said nothing:                  the signature of the similar/dissimilar convention flipped between the pair labels and the loss                  (a loss written for label 1 = dissimilar fed with 1 = same). Labels that are pure noise end the same way.",
                "Check the pair labels against the loss: siam's convention is same = 1.0 for a same-class pair, and the                  contrastive loss is same·d² + (1 − same)·max(0, m − d)². Fix one of them and retrain.",
            ),
        );
    }
    if v.roc_auc < 0.45 {
        out.push(
            finding(
                Kind::InvertedLabels,
                Severity::Error,
                format!(
                    "same pairs lie farther apart than different pairs (ROC-AUC {:.3} < 0.5)",
                    v.roc_auc
                ),
            )
            .with("roc-auc", v.roc_auc)
            .with("same-mean-distance", m.stats.same_mean)
            .with("different-mean-distance", m.stats.different_mean)
            .explain(
                "The model learned the opposite of what it should: the similar/dissimilar convention was flipped \
                 somewhere (a loss written for label 1 = dissimilar fed with 1 = same, or labels inverted when building \
                 pairs). Reading its distances the other way round would give ROC-AUC 1 − AUC.",
                "Check the pair labels: siam's convention is same = 1.0 for a same-class pair; the contrastive loss is \
                 same·d² + (1 − same)·max(0, m − d)². Fix the labels or the loss and retrain.",
            ),
        );
    }

    // collapse
    let diameter = if c.normalized {
        sphere_diameter(c.distance)
    } else {
        f64::NAN
    };
    let single_point = g.mean_pairwise_distance <= 1e-6 * g.mean_norm.max(1.0)
        || (c.normalized && g.mean_pairwise_distance < 0.02 * diameter);
    let below_margin = c
        .margin
        .is_some_and(|mg| m.stats.different_mean < 0.1 * mg && c.loss.as_deref() != Some("bce"));
    let line = g.dims >= 4 && g.effective_rank < 1.5;
    let stuck = match (collapsed_loss(c), m.history.as_ref()) {
        (Some(cl), Some(h)) => {
            let tail: Vec<f64> = h
                .steps
                .iter()
                .rev()
                .take(5)
                .filter_map(|s| s.loss)
                .collect();
            !tail.is_empty() && tail.iter().all(|l| (l - cl).abs() <= 0.05 * cl)
        }
        _ => false,
    };
    if single_point || below_margin || line || (stuck && g.effective_rank < 4.0) {
        let mut f = finding(
            Kind::Collapse,
            if single_point || below_margin {
                Severity::Error
            } else {
                Severity::Warning
            },
            if single_point {
                format!(
                    "embeddings crowd into one point: mean pairwise distance {:.3e}",
                    g.mean_pairwise_distance
                )
            } else if below_margin {
                format!(
                    "the embedding space collapsed: different pairs lie {:.3} apart on average, {:.1}% of the margin {}",
                    m.stats.different_mean,
                    100.0 * m.stats.different_mean / c.margin.unwrap_or(1.0),
                    c.margin.unwrap_or(1.0)
                )
            } else {
                format!(
                    "embeddings lie along a line: effective rank {:.2} of {} dimensions",
                    g.effective_rank, g.dims
                )
            },
        )
        .with("mean-pairwise-distance", g.mean_pairwise_distance)
        .with("mean-dim-variance", g.mean_dim_variance)
        .with("effective-rank", g.effective_rank)
        .with("dead-dims", g.dead_dims as f64)
        .with("different-mean-distance", m.stats.different_mean);
        if let Some(mg) = c.margin {
            f = f.with("margin", mg);
        }
        if stuck {
            f = f.with("collapsed-loss", collapsed_loss(c).unwrap_or(f64::NAN));
        }
        out.push(f.explain(
            "Every image maps to nearly the same embedding, so distances carry little information and the verdict \
             flips on noise. Causes: a learning rate that drove the ReLUs dead, batch-hard mining from a random start \
             (the loss settles at the margin with all distances ≈ 0), or a margin the network cannot reach.",
            "Lower the learning rate (10x) and add warmup; use semi-hard or batch-all mining, or the contrastive loss \
             with P×K batches, before batch-hard; normalise embeddings (model.normalize = true) with a margin of about \
             1 (contrastive) or 0.2 (triplet).",
        ));
    }

    // eval-mode
    let k = &m.consistency;
    let stale_bn = c.trained && k.batchnorm_layers > 0 && k.batchnorm_at_init == k.batchnorm_layers;
    let shifted = k.train_eval_shift.is_some_and(|s| s > 1.0);
    if k.alone_vs_batch > 1e-3 || k.repeat > 1e-5 || k.asymmetry > 1e-4 || stale_bn || shifted {
        let summary = if k.alone_vs_batch > 1e-3 {
            format!(
                "an image embedded alone differs from the same image inside a batch (by {:.2e} of the norm)",
                k.alone_vs_batch
            )
        } else if k.repeat > 1e-5 {
            format!(
                "embedding the same batch twice gives different results (by {:.2e})",
                k.repeat
            )
        } else if k.asymmetry > 1e-4 {
            format!("d(a, b) ≠ d(b, a) (by {:.2e})", k.asymmetry)
        } else if stale_bn {
            format!(
                "the {} BatchNorm layers hold their initial statistics (mean 0, variance 1): they were never updated",
                k.batchnorm_layers
            )
        } else {
            format!(
                "BatchNorm's stored statistics do not match this data: batch statistics move embeddings by {:.2}× the mean pairwise distance",
                k.train_eval_shift.unwrap_or(0.0)
            )
        };
        let mut f = finding(
            Kind::EvalMode,
            if stale_bn || k.alone_vs_batch > 1e-3 || k.repeat > 1e-5 || k.asymmetry > 1e-4 {
                Severity::Error
            } else {
                Severity::Warning
            },
            summary,
        )
        .with("alone-vs-batch", k.alone_vs_batch)
        .with("repeat", k.repeat)
        .with("asymmetry", k.asymmetry)
        .with("batchnorm-layers", k.batchnorm_layers as f64)
        .with("batchnorm-at-init", k.batchnorm_at_init as f64);
        if let Some(s) = k.train_eval_shift {
            f = f.with("train-eval-shift", s);
        }
        out.push(f.explain(
            "Inference in training mode normalises each image with the statistics of its batch and applies dropout, \
             so the same pair gets a different distance depending on what else is in the batch; BatchNorm statistics \
             that were never updated (or come from other data) shift every embedding the same wrong way.",
            "Embed in eval mode (siam's embed and compare always do); make sure training updates BatchNorm's running \
             statistics (train with batches of at least 16 images), or recompute them on training data before export.",
        ));
    }

    // margin-scale
    if let (Some(mg), Some(loss)) = (c.margin, c.loss.as_deref())
        && loss != "bce"
        && !single_point
        && !below_margin
    {
        let suggested = if c.normalized {
            if loss == "triplet" { 0.2 } else { 1.0 }
        } else {
            round2(m.different_median)
        };
        if c.normalized && mg >= diameter {
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Error,
                    format!(
                        "margin {mg} cannot be reached: normalised embeddings are at most {diameter} apart"
                    ),
                )
                .with("margin", mg)
                .with("largest-possible-distance", diameter)
                .with("different-beyond-margin", m.stats.different_beyond_margin)
                .with("suggested-margin", suggested)
                .explain(
                    "Every different pair stays inside the margin and keeps pushing, so the loss never settles and the \
                     push dominates the pull of same pairs.",
                    format!("Set the margin to about {suggested} (loss.margin = {suggested}, or --margin {suggested})."),
                ),
            );
        } else if loss == "contrastive"
            && (m.stats.different_beyond_margin < 0.02
                || (!c.normalized && m.stats.different_beyond_margin < 0.2))
        {
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Warning,
                    format!(
                        "margin {mg} is far beyond the embedding scale: only {:.1}% of different pairs reach it (median different distance {:.3})",
                        100.0 * m.stats.different_beyond_margin,
                        m.different_median
                    ),
                )
                .with("margin", mg)
                .with("different-beyond-margin", m.stats.different_beyond_margin)
                .with("different-median-distance", m.different_median)
                .with("same-p95-distance", m.same_p95)
                .with("mean-embedding-norm", g.mean_norm)
                .with("suggested-margin", suggested)
                .explain(
                    "Nearly all different pairs still violate the margin, so the loss is dominated by pushing them apart; \
                     the scale of the embeddings keeps growing and same pairs are pulled together weakly.",
                    format!("Set the margin near the different pairs' median distance: about {suggested}; or normalise embeddings with margin 1."),
                ),
            );
        } else if loss == "contrastive"
            && m.stats.different_beyond_margin > 0.995
            && m.stats.same_inside_margin > 0.995
            && !c.normalized
        {
            let sugg = round2(0.5 * (m.same_p95 + m.different_median));
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Info,
                    format!(
                        "margin {mg} is easy for this model: {:.1}% of different pairs are beyond it and {:.1}% of same pairs inside",
                        100.0 * m.stats.different_beyond_margin,
                        100.0 * m.stats.same_inside_margin
                    ),
                )
                .with("margin", mg)
                .with("different-beyond-margin", m.stats.different_beyond_margin)
                .with("same-inside-margin", m.stats.same_inside_margin)
                .with("suggested-margin", sugg)
                .explain(
                    "Different pairs beyond the margin no longer contribute to the loss; further training only pulls same \
                     pairs together.",
                    format!("Nothing to fix if the figures are good; a margin of about {sugg} keeps more pairs teaching."),
                ),
            );
        } else if loss == "contrastive"
            && !c.normalized
            && mg <= 2.0
            && m.different_median > 20.0 * mg
        {
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Warning,
                    format!(
                        "margin {mg} looks chosen for the unit sphere but embeddings are not normalised: different pairs are {:.1}× the margin apart",
                        m.different_median / mg
                    ),
                )
                .with("margin", mg)
                .with("different-median-distance", m.different_median)
                .with("suggested-margin", suggested)
                .explain(
                    "A margin of about 1 fits L2-normalised embeddings; on an unnormalised space the scale is free and the \
                     margin only fixes it, which leaves distances far from the margin in either direction.",
                    format!("Normalise embeddings (model.normalize = true) and keep margin 1, or set the margin to about {suggested}."),
                ),
            );
        }
    }

    // over-specialised: worse than a baseline where training figures are good
    if let (Some(px), Some(un)) = (m.pixels_precision_at_1, m.untrained_precision_at_1) {
        let p1 = m.retrieval.precision_at_1;
        let cb = m.classes.as_ref();
        let unseen = cb.and_then(|c| {
            let b = c
                .unseen_untrained_precision_at_1?
                .max(c.unseen_pixels_precision_at_1?);
            Some((c.unseen_precision_at_1?, b))
        });
        let worse_here = p1 + 0.005 < px.max(un);
        let worse_unseen = unseen.is_some_and(|(u, b)| u + 0.005 < b);
        let train_p1 = m.generalization.as_ref().map(|g| g.train_precision_at_1);
        // Training helped where it trained, and far more than where it did not: the seen
        // classes against the untrained encoder on the same images (P@1 of different class
        // subsets is not comparable), gaining at least 3 points more than the unseen ones.
        let helped_seen = cb.is_some_and(|c| {
            match (
                c.seen_precision_at_1,
                c.seen_untrained_precision_at_1,
                c.unseen_precision_at_1,
                c.unseen_untrained_precision_at_1,
            ) {
                (Some(s), Some(su), Some(u), Some(uu)) => s >= su && (s - su) - (u - uu) > 0.03,
                _ => false,
            }
        });
        let good_in_training = helped_seen
            || (cb.is_none() && train_p1.is_some_and(|t| t > px.max(un).max(p1) + 0.02));
        if (worse_here || worse_unseen) && good_in_training {
            let (what, have, base) = match unseen {
                Some((u, b)) if worse_unseen => ("on the classes it never saw", u, b),
                _ => ("on this data", p1, px.max(un)),
            };
            let mut f = finding(
                Kind::OverSpecialised,
                Severity::Warning,
                format!(
                    "training made the encoder worse than {} {what}: precision@1 {have:.3} against {base:.3}, while it \
                     separates its training classes well",
                    if px >= un { "raw pixels" } else { "untrained" },
                ),
            )
            .with("precision-at-1", p1)
            .with("pixels-precision-at-1", px)
            .with("untrained-precision-at-1", un)
            .with("roc-auc", m.verification.roc_auc);
            if let Some(a) = m.untrained_roc_auc {
                f = f.with("untrained-roc-auc", a);
            }
            if let Some(t) = train_p1 {
                f = f.with("train-precision-at-1", t);
            }
            if let Some(c) = cb {
                for (name, v) in [
                    ("seen-classes", Some(c.seen_classes as f64)),
                    ("unseen-classes", Some(c.unseen_classes as f64)),
                    ("seen-precision-at-1", c.seen_precision_at_1),
                    (
                        "seen-untrained-precision-at-1",
                        c.seen_untrained_precision_at_1,
                    ),
                    ("unseen-precision-at-1", c.unseen_precision_at_1),
                    (
                        "unseen-untrained-precision-at-1",
                        c.unseen_untrained_precision_at_1,
                    ),
                    (
                        "unseen-pixels-precision-at-1",
                        c.unseen_pixels_precision_at_1,
                    ),
                ] {
                    if let Some(v) = v {
                        f = f.with(name, v);
                    }
                }
            }
            if let Some(h) = m.history.as_ref().filter(|h| !h.validations.is_empty()) {
                let sign = if h.higher_is_better { 1.0 } else { -1.0 };
                let best = h
                    .validations
                    .iter()
                    .enumerate()
                    .max_by(|a, b| (sign * a.1.metric).total_cmp(&(sign * b.1.metric)))
                    .map_or(0, |(i, _)| i);
                f = f
                    .with("best-validation", (best + 1) as f64)
                    .with("validations", h.validations.len() as f64);
            }
            out.push(f.explain(
                "The supervised loss learned only what tells the training classes apart and discarded what the \
                 untrained network already separated: the encoder is specialised to its training classes. Training \
                 longer, or a deeper encoder, specialises it further.",
                "Stop earlier: hold classes out with data.class-split so that validation measures classes the model \
                 never trains on, validate every epoch and keep the best (validation.patience = 1); train on more, or \
                 more varied, classes. Stronger augmentation (augment.resized-crop-min, augment.erase-probability) or a \
                 self-supervised term ([self-supervised] weight = 0.3) may help; measure them on held-out classes.",
            ));
        }
    }

    // weak-features
    if let (Some(px), Some(un)) = (m.pixels_precision_at_1, m.untrained_precision_at_1)
        && !out.iter().any(|f| f.kind == Kind::OverSpecialised)
    {
        let p1 = m.retrieval.precision_at_1;
        let best = px.max(un);
        if p1 <= best + 0.005 {
            out.push(
                finding(
                    Kind::WeakFeatures,
                    Severity::Warning,
                    format!(
                        "retrieval is no better than {}: precision@1 {:.3} against {:.3}",
                        if px >= un { "raw pixels" } else { "an untrained encoder of the same shape" },
                        p1,
                        best
                    ),
                )
                .with("precision-at-1", p1)
                .with("pixels-precision-at-1", px)
                .with("untrained-precision-at-1", un)
                .explain(
                    "The encoder does not extract features more discriminative than its input: too weak a network, too \
                     little or too easy training (random pairs are mostly trivially different), or a loss that teaches \
                     only a verifier.",
                    "Train longer with P×K batches (sampler kind = \"pk\") and mining, augmentation, and a deeper encoder \
                     (encoder kind = \"convnet\"); check the learning rate is not too low.",
                ),
            );
        }
    }

    // overfitting
    if let Some(gz) = &m.generalization {
        let gap_p1 = gz.train_precision_at_1 - gz.val_precision_at_1;
        let gap_auc = gz.train_roc_auc - gz.val_roc_auc;
        if gap_p1 > 0.08 || gap_auc > 0.05 {
            out.push(
                finding(
                    Kind::Overfitting,
                    Severity::Warning,
                    format!(
                        "training figures are far better than validation: precision@1 {:.3} vs {:.3}, ROC-AUC {:.3} vs {:.3}",
                        gz.train_precision_at_1, gz.val_precision_at_1, gz.train_roc_auc, gz.val_roc_auc
                    ),
                )
                .with("train-precision-at-1", gz.train_precision_at_1)
                .with("val-precision-at-1", gz.val_precision_at_1)
                .with("train-roc-auc", gz.train_roc_auc)
                .with("val-roc-auc", gz.val_roc_auc)
                .explain(
                    "The network memorised its training images instead of learning what makes two images alike.",
                    "Add augmentation, weight decay and early stopping (validation.patience); use more data or a smaller \
                     encoder; keep the model from the best validation, which siam does by default.",
                ),
            );
        }
    }
    if let Some(h) = &m.history
        && h.validations.len() >= 3
        && !out.iter().any(|f| f.kind == Kind::Overfitting)
    {
        let sign = if h.higher_is_better { 1.0 } else { -1.0 };
        let (bi, best) = h
            .validations
            .iter()
            .enumerate()
            .max_by(|a, b| (sign * a.1.metric).total_cmp(&(sign * b.1.metric)))
            .map(|(i, v)| (i, v.metric))
            .unwrap_or((0, 0.0));
        let last = h.validations.last().map_or(best, |v| v.metric);
        let drop = sign * (best - last);
        let loss_at = |step: u64| {
            h.steps
                .iter()
                .filter(|s| s.step <= step)
                .filter_map(|s| s.loss)
                .next_back()
        };
        let train_fell = match (
            loss_at(h.validations[bi].step),
            h.steps.last().and_then(|s| s.loss),
        ) {
            (Some(a), Some(b)) => b < 0.9 * a,
            _ => false,
        };
        if bi + 1 < h.validations.len() && drop > 0.02 * best.abs().max(0.1) && train_fell {
            out.push(
                finding(
                    Kind::Overfitting,
                    Severity::Warning,
                    format!(
                        "validation {} fell from {:.3} (step {}) to {:.3} while the training loss kept falling",
                        h.metric, best, h.validations[bi].step, last
                    ),
                )
                .with("best-validation-metric", best)
                .with("last-validation-metric", last)
                .with("best-step", h.validations[bi].step as f64)
                .explain(
                    "After its best validation the network fits the training pairs better and generalises worse.",
                    "Keep the best model (siam does), and set validation.patience to stop early; add augmentation or \
                     weight decay.",
                ),
            );
        }
    }

    // stale-threshold
    match m.stored_threshold {
        Some(t) => {
            let at_stored = m.verification.balanced_accuracy;
            if m.best_balanced_accuracy - at_stored > 0.03 {
                out.push(
                    finding(
                        Kind::StaleThreshold,
                        Severity::Warning,
                        format!(
                            "the stored threshold {t:.4} gives balanced accuracy {at_stored:.3} here; {:.4} would give {:.3}",
                            m.best_threshold, m.best_balanced_accuracy
                        ),
                    )
                    .with("stored-threshold", f64::from(t))
                    .with("best-threshold", f64::from(m.best_threshold))
                    .with("balanced-accuracy-at-stored", at_stored)
                    .with("best-balanced-accuracy", m.best_balanced_accuracy)
                    .explain(
                        "The threshold was calibrated on other data (or before the weights changed); distances on this \
                         data sit on another scale, so the verdicts are biased to one side.",
                        "Recalibrate on validation pairs from this data: `siam calibrate --model M --data D --out M2` \
                         (do not tune it on the test pairs you report).",
                    ),
                );
            }
        }
        None => out.push(
            finding(
                Kind::StaleThreshold,
                Severity::Warning,
                "the model file stores no threshold, so it cannot give verdicts".into(),
            )
            .with("best-threshold", f64::from(m.best_threshold))
            .explain(
                "Without a calibrated threshold a distance cannot be turned into same/different.",
                "Calibrate on validation pairs: `siam calibrate --model M --data D --out M2`.",
            ),
        ),
    }

    // pair-imbalance
    let one_sided = m.true_accept_rate < 0.1 || m.true_reject_rate < 0.1;
    if let Some(p) = c.positive_fraction
        && !(0.2..=0.8).contains(&p)
    {
        out.push(
            finding(
                Kind::PairImbalance,
                Severity::Warning,
                format!(
                    "the training pairs were {:.0}% same pairs",
                    100.0 * p
                ),
            )
            .with("positive-fraction", p)
            .with("true-accept-rate", m.true_accept_rate)
            .with("true-reject-rate", m.true_reject_rate)
            .explain(
                "With skewed pairs the loss is dominated by one kind, and accuracy rewards always answering the common \
                 verdict.",
                "Draw balanced pairs (sampler positive-fraction = 0.5) or P×K batches; judge by ROC-AUC and balanced \
                 accuracy, which siam reports.",
            ),
        );
    } else if one_sided && v.roc_auc >= 0.45 {
        let says = if m.true_accept_rate < 0.1 {
            "different"
        } else {
            "same"
        };
        out.push(
            finding(
                Kind::PairImbalance,
                Severity::Warning,
                format!(
                    "at its threshold the model nearly always answers \"{says}\": true-accept rate {:.3}, true-reject rate {:.3}",
                    m.true_accept_rate, m.true_reject_rate
                ),
            )
            .with("true-accept-rate", m.true_accept_rate)
            .with("true-reject-rate", m.true_reject_rate)
            .with("balanced-accuracy", v.balanced_accuracy)
            .explain(
                format!("Its accuracy is no better than always answering \"{says}\"; the threshold or the training pairs were skewed toward one verdict."),
                "Recalibrate the threshold on balanced validation pairs and train on balanced pairs or P×K batches.",
            ),
        );
    }

    // class-imbalance
    for (counts, which) in [
        (Some(&c.class_counts), "the diagnosed data"),
        (c.train_class_counts.as_ref(), "the training split"),
    ] {
        let Some(counts) = counts else { continue };
        let present: Vec<usize> = counts.iter().map(|x| x.1).collect();
        let (lo, hi) = (
            present.iter().copied().min().unwrap_or(0),
            present.iter().copied().max().unwrap_or(0),
        );
        if counts.len() >= 2 && (lo < 2 || hi as f64 > 5.0 * lo as f64) {
            let small = counts
                .iter()
                .min_by_key(|x| x.1)
                .map_or(String::new(), |x| x.0.clone());
            out.push(
                finding(
                    Kind::ClassImbalance,
                    Severity::Warning,
                    format!(
                        "class sizes in {which} range from {lo} ({small}) to {hi} images"
                    ),
                )
                .with("smallest-class", lo as f64)
                .with("largest-class", hi as f64)
                .with("classes", counts.len() as f64)
                .explain(
                    "Large classes dominate random pairs and retrieval averages; small classes get few same pairs and \
                     their embeddings stay loose.",
                    "Use P×K batches (each batch takes P classes uniformly), collect more images of the small classes, \
                     and read per-class figures before trusting the averages.",
                ),
            );
        }
    }

    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}
