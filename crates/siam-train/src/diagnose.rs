//! `siam diagnose` minus the terminal: loads a model (even one with NaN weights), the data it
//! is diagnosed on, and its run folder when given (resolved config, metrics log, training
//! split), and hands them to [`siam_eval::diagnose`].

use std::path::{Path, PathBuf};

use candle_core::Device;
use siam_data::{ImageSet, SamplerConfig};
use siam_eval::diagnose::{
    self, Context, Diagnosis, Evidence, Generalization, History, HistoryStep, HistoryValidation,
    Probe,
};
use siam_model::SiameseModel;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::evaluate::{EvalSpec, eval_pairs, evaluate};

/// What to diagnose with.
#[derive(Debug, Clone)]
pub struct DiagnoseOptions {
    /// The data: fixtures, fashion-mnist, mnist, an IDX directory (its test split) or an
    /// image folder.
    pub data: String,
    /// The model's run folder (config, metrics log, training split), when known.
    pub run: Option<PathBuf>,
    /// Balanced pairs for the verification figures.
    pub pairs: usize,
    /// Seed of the pairs and the image sample.
    pub seed: u64,
    /// At most this many images (a class-stratified sample).
    pub max_images: usize,
    /// Compare retrieval with raw pixels and an untrained encoder.
    pub baselines: bool,
}

impl Default for DiagnoseOptions {
    fn default() -> Self {
        Self {
            data: "fixtures".into(),
            run: None,
            pairs: 4000,
            seed: 42,
            max_images: 5000,
            baselines: true,
        }
    }
}

/// Reads a run folder's `metrics.jsonl` into a [`History`].
pub fn read_history(run: &Path, cfg: Option<&TrainConfig>) -> Result<History> {
    let p = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&p).map_err(|e| TrainError::run(&p, e.to_string()))?;
    let mut h = History {
        metric: cfg.map_or("map-at-r".into(), |c| {
            serde_json::to_value(c.validation.metric)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        }),
        higher_is_better: cfg.is_none_or(|c| c.validation.metric.higher_is_better()),
        ..History::default()
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| TrainError::run(&p, format!("line {}: not a JSON record: {e}", i + 1)))?;
        let step = v["step"].as_u64().unwrap_or(0);
        match v["kind"].as_str() {
            Some("step") => h.steps.push(HistoryStep {
                step,
                loss: v["loss"].as_f64().filter(|l| l.is_finite()),
                lr: v["lr"].as_f64(),
                grad_norm: v["grad_norm"].as_f64(),
                grad_norm_max: v["grad_norm_max"].as_f64(),
                weight_norm: v["weight_norm"].as_f64(),
                update_ratio: v["update_ratio"].as_f64(),
            }),
            Some("validation") => h.validations.push(HistoryValidation {
                step,
                loss: v["report"]["loss"].as_f64(),
                metric: v["metric"].as_f64().unwrap_or(f64::NAN),
                roc_auc: v["report"]["verification"]["roc_auc"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                precision_at_1: v["report"]["retrieval"]["precision_at_1"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            }),
            Some("init") => h.initial_weight_norm = v["weight_norm"].as_f64(),
            Some("diverged") => {
                h.diverged = Some(v["message"].as_str().unwrap_or("diverged").to_string())
            }
            _ => {}
        }
    }
    Ok(h)
}

fn class_counts(set: &ImageSet) -> Vec<(String, usize)> {
    set.class_names()
        .iter()
        .cloned()
        .zip(set.class_counts())
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The training context from the run config, else from the model file's training record
/// (read leniently: older files spell some keys with underscores).
fn context(model: &SiameseModel, cfg: Option<&TrainConfig>) -> Context {
    let meta = model.meta();
    let rec = |key: &str| {
        meta.training
            .as_ref()
            .map(|t| t[key].clone())
            .unwrap_or_default()
    };
    let (loss, margin) = match cfg {
        Some(c) => (Some(c.loss.kind().to_string()), c.loss.margin()),
        None => {
            let l = rec("loss");
            (l["kind"].as_str().map(String::from), l["margin"].as_f64())
        }
    };
    let sampler = match cfg {
        Some(c) => Some(c.sampler.clone()),
        None => {
            let s = rec("sampler");
            match s["kind"].as_str() {
                Some("pairs") => Some(SamplerConfig::Pairs {
                    positive_fraction: s["positive-fraction"]
                        .as_f64()
                        .or_else(|| s["positive_fraction"].as_f64())
                        .unwrap_or(0.5),
                }),
                Some("pk") => match (s["p"].as_u64(), s["k"].as_u64()) {
                    (Some(p), Some(k)) => Some(SamplerConfig::Pk {
                        p: p as usize,
                        k: k as usize,
                    }),
                    _ => None,
                },
                Some("triplets") => Some(SamplerConfig::Triplets),
                _ => None,
            }
        }
    };
    let (positive_fraction, different_share) = match sampler {
        Some(SamplerConfig::Pairs { positive_fraction }) => {
            (Some(positive_fraction), Some(1.0 - positive_fraction))
        }
        Some(SamplerConfig::Pk { p, k }) if p * k > 1 => {
            // Of the B(B−1)/2 pairs of a batch of B = P·K images, P·K(K−1)/2 are same pairs.
            (None, Some(1.0 - (k as f64 - 1.0) / (p * k - 1) as f64))
        }
        _ => (None, None),
    };
    Context {
        loss,
        margin,
        normalized: model.config().normalize,
        distance: model.distance_kind(),
        positive_fraction,
        different_share,
        trained: meta.training.is_some(),
        class_counts: Vec::new(),
        train_class_counts: None,
        lr: cfg.map(|c| c.optimizer.lr()),
    }
}

/// A class-stratified sample of at most `max` images.
fn sample(set: ImageSet, max: usize) -> Result<ImageSet> {
    if set.len() <= max {
        return Ok(set);
    }
    let classes = set.class_counts().iter().filter(|&&n| n > 0).count().max(1);
    Ok(set.take_per_class((max / classes).max(2))?)
}

/// Diagnoses the model in `model_path` on `opts.data`. Returns the diagnosis, the raw
/// material of its pictures, and the run history when a run folder was given.
pub fn diagnose(
    model_path: &Path,
    device: &Device,
    opts: &DiagnoseOptions,
) -> Result<(Diagnosis, Evidence, Option<History>)> {
    let (model, non_finite_weights) = SiameseModel::load_allowing_non_finite(model_path, device)?;
    let input = model.config().input.clone();
    let (description, set) = crate::data::eval_set(&opts.data, &input)?;
    let set = sample(set, opts.max_images)?;
    let transform = crate::evaluate::eval_transform(&input);
    let idx: Vec<usize> = (0..set.len()).collect();
    let images = transform.tensor(&set, &idx, 0, 0, device)?;
    let pairs = eval_pairs(&set, opts.pairs, opts.seed)?;
    let labels = set.labels();

    let mut notes = Vec::new();
    let cfg = match &opts.run {
        Some(run) => {
            let p = run.join("config.toml");
            Some(TrainConfig::from_file(&p)?)
        }
        None => None,
    };
    let history = match &opts.run {
        Some(run) => Some(read_history(run, cfg.as_ref())?),
        None => None,
    };
    let mut ctx = context(&model, cfg.as_ref());
    ctx.class_counts = class_counts(&set);
    let mut generalization = None;
    // The run's training and validation images by hash: a diagnosed image among them is
    // leakage. Not when the data is the image folder the run split (it holds them by design).
    let mut other_splits = Vec::new();
    if let Some(cfg) = &cfg {
        match crate::data::load(&cfg.data, cfg.seed) {
            Ok(ds) => {
                ctx.train_class_counts = Some(class_counts(&ds.train));
                generalization = Some(train_vs_val(&model, &ds.train, &ds.val, opts)?);
                if opts.data == cfg.data.source && description.starts_with("image folder") {
                    notes.push(
                        "the data is the image folder the run was split from, so duplicates across its splits were not looked for"
                            .into(),
                    );
                } else {
                    for (name, s) in [("training", &ds.train), ("validation", &ds.val)] {
                        other_splits.push(diagnose::OtherSplit {
                            name,
                            pixels: std::borrow::Cow::Owned(s.pixels().into_owned()),
                            names: (0..s.len()).map(|i| s.describe(i)).collect(),
                        });
                    }
                }
            }
            Err(e) => notes.push(format!(
                "the run's training data could not be loaded, so the training/validation gap was not measured: {e}"
            )),
        }
    }
    // The classes the model trained on, when its file records a class split.
    let seen_labels: Option<Vec<u32>> = crate::evaluate::seen_classes(&model, &set).map(|s| {
        set.class_names()
            .iter()
            .enumerate()
            .filter(|(_, n)| s.seen.contains(n))
            .map(|(c, _)| c as u32)
            .collect()
    });
    let probe = Probe {
        model: &model,
        images: &images,
        labels: &labels,
        class_names: set.class_names(),
        pairs: (&pairs.a, &pairs.b, &pairs.same),
        non_finite_weights,
        baselines: opts.baselines,
        seen_labels: seen_labels.as_deref(),
    };
    let (mut measurements, evidence) =
        diagnose::measure(&probe, ctx, history.clone(), generalization)?;
    let pixels: Vec<u8> = (0..set.len()).flat_map(|i| set.image(i).to_vec()).collect();
    let names: Vec<String> = (0..set.len()).map(|i| set.describe(i)).collect();
    let bounds = model.meta().input_profile.as_ref().map(|p| {
        (
            f64::from(p.intensity_mean[0]),
            f64::from(p.intensity_mean[1]),
        )
    });
    measurements.data_quality = Some(diagnose::data_quality(&diagnose::DataInput {
        pixels: &pixels,
        numel: set.shape().numel(),
        labels: &labels,
        class_names: set.class_names(),
        names: &names,
        embeddings: &evidence.embeddings,
        dims: evidence.dims,
        other_splits,
        intensity_bounds: bounds,
        shape: (set.shape().channels, set.shape().height, set.shape().width),
    })?);
    let findings = diagnose::findings(&measurements);
    Ok((
        Diagnosis {
            model: model_path.display().to_string(),
            data: description,
            findings,
            measurements,
            notes,
        },
        evidence,
        history,
    ))
}

/// P@1 and ROC-AUC on (a sample of) the training split against the validation split.
fn train_vs_val(
    model: &SiameseModel,
    train: &ImageSet,
    val: &ImageSet,
    opts: &DiagnoseOptions,
) -> Result<Generalization> {
    let input = &model.config().input;
    let transform = crate::evaluate::eval_transform(input);
    // Same size on both sides: retrieval figures depend on the gallery size.
    let n = val.len().min(train.len()).min(opts.max_images);
    let tr = sample(train.clone(), n)?;
    let va = sample(val.clone(), n)?;
    let spec = EvalSpec {
        loss: None,
        calibration: Default::default(),
        threshold: None,
    };
    let pairs = opts.pairs.min(2000);
    let rt = evaluate(
        model,
        &tr,
        &eval_pairs(&tr, pairs, opts.seed)?,
        &transform,
        &spec,
    )?;
    let rv = evaluate(
        model,
        &va,
        &eval_pairs(&va, pairs, opts.seed)?,
        &transform,
        &spec,
    )?;
    // The untrained encoder on the same training sample (seed 0, as diagnose's baseline).
    let untrained = if opts.baselines {
        let fresh = SiameseModel::new(model.config(), 0, model.device())?;
        let idx: Vec<usize> = (0..tr.len()).collect();
        let images = transform.tensor(&tr, &idx, 0, 0, model.device())?;
        let e = fresh.embed_chunked(&images, 512)?;
        Some(
            siam_eval::retrieval(&e, &tr.labels(), None, fresh.distance_kind(), 256)?
                .precision_at_1,
        )
    } else {
        None
    };
    Ok(Generalization {
        train_untrained_precision_at_1: untrained,
        train_precision_at_1: rt.retrieval.precision_at_1,
        val_precision_at_1: rv.retrieval.precision_at_1,
        train_roc_auc: rt.verification.roc_auc,
        val_roc_auc: rv.verification.roc_auc,
    })
}
