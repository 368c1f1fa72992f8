//! Evaluation of a model on a set: fixed balanced pairs for verification, leave-one-out
//! retrieval, distance statistics. Used for validation, the final test, and `siam eval`.

use candle_core::{Device, Tensor};
use siam_data::{ImageSet, PairIndices, PairSampler, Transform};
use siam_eval::{Calibration, DistanceStats, RetrievalReport, VerificationReport};
use siam_model::loss::{self, Mining};
use siam_model::{DistanceQuantiles, InputProfile, SiameseModel};

use crate::config::LossConfig;
use crate::error::Result;

/// Every figure of one evaluation.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalReport {
    /// Images embedded.
    pub images: usize,
    /// Verification on balanced pairs.
    pub verification: VerificationReport,
    /// Leave-one-out retrieval within the set.
    pub retrieval: RetrievalReport,
    /// Same/different distance statistics against the margin.
    pub stats: DistanceStats,
    /// The loss on the pairs (or on a P×K-like sample for triplet losses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Quantiles of the pair distances (stored in the model file).
    #[serde(skip)]
    pub quantiles: Option<DistanceQuantiles>,
}

/// The evaluation transform of a model's input: no augmentation, its normalisation.
pub fn eval_transform(input: &siam_model::InputSpec) -> Transform {
    Transform::eval(Some(siam_data::Normalize {
        mean: input.mean.clone(),
        std: input.std.clone(),
    }))
}

/// `n` balanced pairs over `set`, fixed by `seed`.
pub fn eval_pairs(set: &ImageSet, n: usize, seed: u64) -> Result<PairIndices> {
    Ok(PairSampler::new(
        set,
        n,
        0.5,
        siam_data::rng::derive_seed(seed, &[siam_data::rng::stream::EVAL_PAIRS]),
    )?
    .batch(0, 0))
}

/// Embeds every image of `set` in eval mode, `chunk` at a time: (N, D).
pub fn embed_set(
    model: &SiameseModel,
    set: &ImageSet,
    transform: &Transform,
    chunk: usize,
) -> Result<Tensor> {
    let mut parts = Vec::new();
    let idx: Vec<usize> = (0..set.len()).collect();
    for c in idx.chunks(chunk.max(1)) {
        let x = transform.tensor(set, c, 0, 0, model.device())?;
        parts.push(model.embed(&x)?);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// Fits the input profile ([`siam_model::ood`]) of `model` on `set` (the validation split):
/// intensity bounds and reference embeddings. None for a set under 20 images.
pub fn fit_input_profile(
    model: &SiameseModel,
    set: &ImageSet,
    transform: &Transform,
    seed: u64,
) -> Result<Option<InputProfile>> {
    let (stats, emb) = stats_and_embeddings(model, set, transform)?;
    Ok(InputProfile::fit(
        &stats,
        &emb,
        model.distance_kind(),
        siam_data::rng::derive_seed(seed, &[siam_data::rng::stream::EVAL_PAIRS, 0x00d]),
    )?)
}

fn stats_and_embeddings(
    model: &SiameseModel,
    set: &ImageSet,
    transform: &Transform,
) -> Result<(Vec<siam_model::ood::ImageStats>, Tensor)> {
    let mut stats = Vec::with_capacity(set.len());
    let mut parts = Vec::new();
    let idx: Vec<usize> = (0..set.len()).collect();
    for c in idx.chunks(512) {
        let x = transform.tensor(set, c, 0, 0, model.device())?;
        let (e, norms) = model.embed_with_norms(&x)?;
        stats.extend(siam_model::ood::image_stats(
            &x,
            &model.config().input,
            &norms,
        )?);
        parts.push(e);
    }
    Ok((stats, Tensor::cat(&parts, 0)?))
}

pub use siam_eval::diagnose::InputCheck;

/// Runs the model's input check over every image of `set`; None for a model without an
/// input profile.
pub fn input_check(
    model: &SiameseModel,
    set: &ImageSet,
    transform: &Transform,
) -> Result<Option<InputCheck>> {
    let Some(p) = &model.meta().input_profile else {
        return Ok(None);
    };
    let (stats, emb) = stats_and_embeddings(model, set, transform)?;
    let near = p.nearest(&emb, model.distance_kind())?;
    Ok(Some(siam_eval::diagnose::tally(p, &stats, &near)))
}

/// What to evaluate with.
pub struct EvalSpec<'a> {
    /// The loss, for the loss figure and the margin (None: no loss figure, margin 1).
    pub loss: Option<&'a LossConfig>,
    /// How the threshold is calibrated when `threshold` is None.
    pub calibration: Calibration,
    /// Measure accuracies at this threshold (the stored one), else calibrate on these pairs.
    pub threshold: Option<f32>,
}

/// Evaluates `model` on `set` with the given `pairs`.
pub fn evaluate(
    model: &SiameseModel,
    set: &ImageSet,
    pairs: &PairIndices,
    transform: &Transform,
    spec: &EvalSpec<'_>,
) -> Result<EvalReport> {
    let emb = embed_set(model, set, transform, 512)?;
    let dev = emb.device().clone();
    let ia = Tensor::from_vec(
        pairs.a.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        pairs.a.len(),
        &dev,
    )?;
    let ib = Tensor::from_vec(
        pairs.b.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        pairs.b.len(),
        &dev,
    )?;
    let (ea, eb) = (emb.index_select(&ia, 0)?, emb.index_select(&ib, 0)?);
    let d_t = model.distance(&ea, &eb)?;
    let d: Vec<f32> = d_t.to_device(&Device::Cpu)?.to_vec1()?;
    let threshold = match spec.threshold {
        Some(t) => t,
        None => siam_eval::calibrate(&d, &pairs.same, spec.calibration)?,
    };
    let verification = siam_eval::verification(&d, &pairs.same, Some(threshold))?;
    let labels = set.labels();
    let retrieval = siam_eval::retrieval(&emb, &labels, None, model.distance_kind(), 256)?;
    let margin = spec.loss.and_then(LossConfig::margin).unwrap_or(1.0);
    let stats = siam_eval::distance_stats(&d, &pairs.same, margin)?;
    let same_t = Tensor::from_slice(&pairs.same, pairs.same.len(), &dev)?;
    let loss = match spec.loss {
        None => None,
        Some(LossConfig::Contrastive { margin, pos_margin }) => Some(
            loss::contrastive_with(&d_t, &same_t, *margin, *pos_margin)?.to_scalar::<f32>()? as f64,
        ),
        Some(LossConfig::Bce) => Some(
            loss::bce_with_logits(&model.pair_logits(&ea, &eb)?, &same_t)?.to_scalar::<f32>()?
                as f64,
        ),
        Some(LossConfig::Triplet { margin, .. }) => {
            let n = emb.dim(0)?.min(512);
            let r = loss::mined_triplet(
                &emb.narrow(0, 0, n)?,
                &labels[..n],
                *margin,
                model.distance_kind(),
                Mining::BatchAll,
            )?;
            Some(r.loss.to_scalar::<f32>()? as f64)
        }
        // The batch losses on the first 512 images (as the triplet loss); the proxy losses
        // have none (their proxies are the training classes').
        Some(l) if l.takes_classes() && !l.has_proxies() => {
            let n = emb.dim(0)?.min(512);
            let batch =
                crate::trainer::class_batch_loss(l, &emb.narrow(0, 0, n)?, &labels[..n], None)?;
            Some(f64::from(
                batch
                    .to_dtype(candle_core::DType::F32)?
                    .to_scalar::<f32>()?,
            ))
        }
        Some(_) => None,
    };
    Ok(EvalReport {
        images: set.len(),
        verification,
        retrieval,
        stats,
        loss,
        quantiles: Some(siam_eval::distance_quantiles(&d, &pairs.same)?),
    })
}

/// Which of a set's classes a model saw in training: known when the model was trained with a
/// class split (its training record lists the training classes), by class name.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeenClasses {
    /// Classes of the set the model was trained on.
    pub seen: Vec<String>,
    /// Classes of the set it never saw.
    pub unseen: Vec<String>,
}

/// The set's classes split into those the model was trained on and those it never saw, or
/// `None` when the model was trained on every class of its data (no class split recorded).
pub fn seen_classes(model: &SiameseModel, set: &ImageSet) -> Option<SeenClasses> {
    let trained: Vec<String> = model.meta().training.as_ref()?["classes"]["train"]
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let counts = set.class_counts();
    let present = set
        .class_names()
        .iter()
        .enumerate()
        .filter(|(c, _)| counts.get(*c).is_some_and(|&n| n > 0))
        .map(|(_, n)| n.clone());
    let (seen, unseen) = present.partition(|n| trained.contains(n));
    Some(SeenClasses { seen, unseen })
}
