//! The training loop: one run folder, seeded and resumable. It emits [`Event`]s and prints
//! nothing; the CLI renders them.
//!
//! Run folder: `config.toml` (resolved), `metrics.jsonl` (a record per log step and per
//! validation), `checkpoints/step-NNNNNNNN.safetensors` (weights, optimizer state, counters),
//! `model.safetensors` (best model with its calibrated threshold), `summary.json` (final test).
//!
//! The map:
//! - this file: the records and events a run emits, [`train`] and [`resume`];
//! - `folder.rs`: the run folder — its lock, `metrics.jsonl`, checkpoints written and read;
//! - `losses.rs`: the loss of a batch for every loss kind (mining, all pairs, the batch losses,
//!   the two-view self-supervised term) and the loss's own variables (class proxies);
//! - `run.rs`: one run's loop — steps, logging, validation and model selection, the final test;
//! - `step.rs`: one step (loss, backward, gradient norm, update) on a rayon worker, and the
//!   parallel norms of gradients and weights;
//! - [`lr_find`]: the learning-rate range test, a short run that writes nothing.

mod folder;
mod losses;
mod lr_find;
mod run;
mod step;

pub use lr_find::{
    LrFind, LrFindOptions, LrFindPoint, chart as lr_find_chart, lr_find, range_lr, suggest,
    write_lr_find,
};

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use siam_data::rng::{derive_seed, stream};
use siam_data::{
    Batch, ImageSet, Loader, LoaderConfig, Normalize, PairIndices, SamplerConfig, Transform,
};
use siam_model::loss;
use siam_model::model::write_atomic;
use siam_model::{InputSpec, ModelConfig, SiameseModel};

use crate::config::{LossConfig, Metric, TrainConfig};
use crate::data::{self, Datasets};
use crate::error::{Result, TrainError};
use crate::evaluate::{EvalReport, EvalSpec, eval_pairs, evaluate, fit_input_profile, input_check};
use crate::optim::{Optimizer, learning_rate};

use folder::{RunLock, append_record, checkpoint_dir, load_checkpoint, remove_stale_temp_files};
pub use folder::{checkpoints, load_checkpoint_weights};
pub(crate) use losses::class_batch_loss;
use losses::{frozen_steps, loss_state};
use run::model_config;
use step::{StepOutcome, weight_and_update_norms};

/// A training-step record (also a line of `metrics.jsonl`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// Epoch, from 1.
    pub epoch: u64,
    /// Global step, from 1.
    pub step: u64,
    /// Mean training loss since the previous record.
    pub loss: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Share of active triplets or pairs the miner reported (P×K batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_fraction: Option<f64>,
    /// Mean L2 norm of the whole gradient over the steps since the previous record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The largest gradient norm over those steps (a spike shows here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm_max: Option<f64>,
    /// L2 norm of all trainable weights after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_norm: Option<f64>,
    /// Size of this step's update relative to the weights, `‖Δθ‖ / ‖θ‖` (about 1e-3 is
    /// healthy; 1e-5 and below learns slowly, 1e-1 and above jumps around).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_ratio: Option<f64>,
    /// Training pairs (or triplets, or images for P×K) per second since the previous record.
    pub pairs_per_s: f64,
    /// Estimated seconds to the end of training.
    pub eta_s: f64,
}

/// A validation record (also a line of `metrics.jsonl`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ValidationRecord {
    /// Epoch, from 1.
    pub epoch: u64,
    /// Global step.
    pub step: u64,
    /// The figures.
    pub report: EvalReport,
    /// The selection metric's value.
    pub metric: f64,
    /// True when this validation is the best so far (the model was saved).
    pub best: bool,
    /// Seconds of training before this validation: the steps only (validations, checkpoints
    /// and the test excluded), counted across resumes — the clock to put beside another
    /// framework's training time.
    #[serde(default)]
    pub train_s: f64,
}

/// What the trainer reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// The run starts (or resumes at `start_step`).
    Started {
        /// The run folder.
        run_dir: &'a Path,
        /// What data was loaded.
        data: &'a str,
        /// Images in each split.
        sizes: [usize; 3],
        /// Trainable parameters.
        parameters: usize,
        /// Steps in the run.
        total_steps: u64,
        /// The first step to run (0 unless resuming).
        start_step: u64,
    },
    /// A logged training step.
    Step(&'a StepRecord),
    /// A validation pass.
    Validation(&'a ValidationRecord),
    /// A checkpoint was written.
    Checkpoint {
        /// Its file.
        path: &'a Path,
        /// The step it holds.
        step: u64,
    },
    /// Early stopping ended the run.
    EarlyStop {
        /// The step it stopped at.
        step: u64,
        /// The step of the best model.
        best_step: u64,
    },
    /// The final test evaluation starts.
    Testing,
    /// The config was fitted to the data (P capped at the number of classes, say).
    Note(&'a str),
}

/// Options that are not part of the recipe.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Stop (with a checkpoint) after this global step, as an interruption would.
    pub stop_after: Option<u64>,
    /// Set to stop at the next step with a checkpoint (Ctrl-C).
    pub stop: Option<Arc<AtomicBool>>,
    /// Threads for augmentation (default 1: the model takes the cores).
    pub loader_threads: Option<usize>,
}

/// The final result of a run (`summary.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The best model file.
    pub model: PathBuf,
    /// What data was used.
    pub data: String,
    /// Steps run.
    pub steps: u64,
    /// Step of the best validation.
    pub best_step: u64,
    /// The selection metric and its best value.
    pub best_metric: (Metric, f64),
    /// Test figures of the best model at its calibrated threshold.
    pub test: EvalReport,
    /// The input check on the test split (its false alarms: the test images are of the
    /// training distribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_check: Option<crate::evaluate::InputCheck>,
    /// Wall time of this invocation, seconds.
    pub wall_s: f64,
    /// Seconds of training steps alone (validations, checkpoints and the test excluded),
    /// across resumes.
    #[serde(default)]
    pub train_s: f64,
    /// With a class split: the class names of each role (training classes are the only ones
    /// seen; the test figures are on `test` classes alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<ClassNames>,
}

/// Class names by role in a three-way class split.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClassNames {
    /// Trained on: the only classes the model has seen.
    pub train: Vec<String>,
    /// Validated on (model selection, calibration), never trained on.
    pub validation: Vec<String>,
    /// Tested on only.
    pub test: Vec<String>,
}

impl ClassNames {
    fn of(roles: &siam_data::split::ClassRoles, names: &[String]) -> Self {
        let n = |c: &[u32]| {
            c.iter()
                .map(|&l| {
                    names
                        .get(l as usize)
                        .cloned()
                        .unwrap_or_else(|| l.to_string())
                })
                .collect()
        };
        Self {
            train: n(&roles.train),
            validation: n(&roles.validation),
            test: n(&roles.test),
        }
    }
}

/// Counters saved in checkpoints.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    step: u64,
    optimizer_steps: u64,
    best: Option<(f64, u64)>,
    bad_validations: usize,
    window_loss: f64,
    window_active: f64,
    window_steps: u64,
    /// Sum and largest of the gradient norms over the window (logged as `grad_norm`,
    /// `grad_norm_max`).
    #[serde(default)]
    window_grad: f64,
    #[serde(default)]
    window_grad_max: f64,
    stopped_early: bool,
    /// Seconds spent on training steps so far (validations, checkpoints and the test
    /// excluded), across resumes.
    #[serde(default)]
    train_s: f64,
}

const CHECKPOINT_KEY: &str = "siam-checkpoint";

struct Run<'a> {
    cfg: TrainConfig,
    dir: PathBuf,
    data: Datasets,
    model: SiameseModel,
    /// The loss's own trainable state (CosFace/ArcFace class proxies): trained with the model,
    /// kept in checkpoints, not in the model file.
    loss_vars: candle_nn::VarMap,
    opt: Optimizer,
    progress: Progress,
    val_pairs: PairIndices,
    eval_transform: Transform,
    opts: &'a TrainOptions,
}

/// Starts a new run in `dir`, which must not exist or be empty.
pub fn train(
    cfg: &TrainConfig,
    dir: &Path,
    opts: &TrainOptions,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    cfg.validate()?;
    run::ensure_empty(
        dir,
        "the run folder exists and is not empty; choose another --out, or resume it",
    )?;
    // Everything that can fail on the inputs fails before the run folder exists.
    let data = data::load(&cfg.data, cfg.seed)?;
    let (sampler, note) = cfg.sampler.fit(&data.train);
    run::sampler_for(&sampler, cfg, &data)?;
    let device = siam_model::parse_device(&cfg.device)?;
    let mcfg = model_config(cfg, &data.train);
    let model = initial_model(&mcfg, cfg.seed, &device, on)?;
    // config.toml first: a run killed at any later point can be resumed from its folder.
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::run(dir, format!("cannot create the run folder: {e}")))?;
    let mut resolved = cfg.clone();
    resolved.sampler = sampler;
    if let Some(n) = &note {
        on(Event::Note(n));
    }
    if let Some(n) = frozen_from_scratch(cfg) {
        on(Event::Note(&n));
    }
    resolved.data.mean = Some(mcfg.input.mean.clone());
    resolved.data.std = Some(mcfg.input.std.clone());
    write_atomic(&dir.join("config.toml"), resolved.to_toml().as_bytes())
        .map_err(|e| TrainError::run(dir.join("config.toml"), e.to_string()))?;
    let _lock = RunLock::acquire(dir)?;
    std::fs::create_dir_all(checkpoint_dir(dir))
        .map_err(|e| TrainError::run(dir, format!("cannot create the run folder: {e}")))?;
    let loss_vars = loss_state(
        &resolved,
        data.train.num_classes(),
        mcfg.encoder.embedding_dim(),
        &device,
    )?;
    let opt = losses::optimizer(cfg, &model, &loss_vars, true);
    if let Some(r) = &data.roles {
        let mut rec = serde_json::to_value(ClassNames::of(r, data.train.class_names()))
            .map_err(|e| TrainError::run(dir, e.to_string()))?;
        rec["step"] = 0.into();
        append_record(dir, "classes", &rec)?;
    }
    let run = Run::new(
        resolved,
        dir,
        data,
        (model, loss_vars),
        opt,
        Progress::default(),
        opts,
    )?;
    run.go(on)
}

/// The file `model.encoder.pretrained` names: a path, or `timm:NAME` — timm's weights from the
/// Hugging Face hub's cache, downloaded into it when missing (the `hub` feature).
pub fn pretrained_file(spec: &str) -> Result<PathBuf> {
    let Some(name) = spec.strip_prefix("timm:") else {
        return Ok(PathBuf::from(spec));
    };
    #[cfg(feature = "hub")]
    {
        siam_data::hub::timm_weights(name)
            .map_err(|e| TrainError::Config(format!("model.encoder.pretrained = \"{spec}\": {e}")))
    }
    #[cfg(not(feature = "hub"))]
    {
        Err(TrainError::Config(format!(
            "model.encoder.pretrained = \"{spec}\" downloads timm's {name} from the Hugging Face hub, which needs siam built with the `hub` feature (cargo install --path crates/siam-cli --features hub); offline, save the weights as safetensors and give the file's path"
        )))
    }
}

/// A note when `[finetune]` freezes a backbone that no pretrained file fills: its frozen
/// epochs train the head on features drawn at random, and the slower backbone rate afterwards
/// slows a network that has everything to learn (docs/BENCHMARKS.md, "Colour photographs").
fn frozen_from_scratch(cfg: &TrainConfig) -> Option<String> {
    let f = cfg.finetune.as_ref()?;
    let pretrained = cfg
        .model
        .encoder
        .resnet()
        .is_some_and(|(_, r)| r.pretrained.is_some());
    (f.freeze_backbone_epochs > 0 && !pretrained).then(|| {
        format!(
            "finetune.freeze-backbone-epochs = {} freezes a backbone drawn at random (no model.encoder.pretrained): only the head learns until then; to train from scratch, set finetune.freeze-backbone-epochs = 0 and finetune.backbone-lr-scale = 1",
            f.freeze_backbone_epochs
        )
    })
}

/// The model a run starts from: weights drawn from the run's seed, then, for a ResNet with
/// `pretrained` set, the backbone loaded from that file (the head keeps its drawn weights).
pub(crate) fn initial_model(
    mcfg: &siam_model::ModelConfig,
    seed: u64,
    device: &siam_model::candle_core::Device,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<SiameseModel> {
    let model = SiameseModel::new(mcfg, derive_seed(seed, &[stream::INIT]), device)?;
    if let Some(path) = mcfg
        .encoder
        .resnet()
        .and_then(|(_, r)| r.pretrained.as_deref())
    {
        let file = pretrained_file(path)?;
        let load = siam_model::pretrained::load_backbone(&model, &file)?;
        let from = if Path::new(path) == file {
            path.to_string()
        } else {
            format!("{path} ({})", file.display())
        };
        on(Event::Note(&format!(
            "pretrained backbone from {from}: {} tensors loaded{}, {} ignored ({})",
            load.loaded,
            load.stripped_prefix
                .map(|p| format!(" (prefix {p} removed)"))
                .unwrap_or_default(),
            load.ignored.len(),
            if load.ignored.is_empty() {
                "none".to_string()
            } else {
                "the classifier and BatchNorm counters".to_string()
            }
        )));
    }
    Ok(model)
}

/// Resumes the run in `dir` from its latest checkpoint; the result equals an uninterrupted run.
/// A run stopped before its first checkpoint (killed, say) starts again from step 0.
pub fn resume(dir: &Path, opts: &TrainOptions, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
    let cfg = TrainConfig::from_file(&dir.join("config.toml"))?;
    let _lock = RunLock::acquire(dir)?;
    remove_stale_temp_files(dir);
    let data = data::load(&cfg.data, cfg.seed)?;
    let device = siam_model::parse_device(&cfg.device)?;
    let mcfg = model_config(&cfg, &data.train);
    let loss_vars = loss_state(
        &cfg,
        data.train.num_classes(),
        mcfg.encoder.embedding_dim(),
        &device,
    )?;
    let (model, opt, progress) = match checkpoints(dir).pop() {
        Some(ckpt) => {
            let model = SiameseModel::new(&mcfg, 0, &device)?;
            let mut opt = losses::optimizer(&cfg, &model, &loss_vars, true);
            let progress = load_checkpoint(&ckpt, &model, &loss_vars, &mut opt)?;
            (model, opt, progress)
        }
        None => {
            let model = initial_model(&mcfg, cfg.seed, &device, on)?;
            let opt = losses::optimizer(&cfg, &model, &loss_vars, true);
            std::fs::create_dir_all(checkpoint_dir(dir))
                .map_err(|e| TrainError::run(dir, format!("cannot create checkpoints/: {e}")))?;
            let _ = std::fs::remove_file(dir.join("model.safetensors"));
            (model, opt, Progress::default())
        }
    };
    // Forget what was logged after the checkpoint: it will be produced again, identically.
    let mp = dir.join("metrics.jsonl");
    if let Ok(text) = std::fs::read_to_string(&mp) {
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= progress.step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&mp, kept.as_bytes()).map_err(|e| TrainError::run(&mp, e.to_string()))?;
    }
    let run = Run::new(cfg, dir, data, (model, loss_vars), opt, progress, opts)?;
    run.go(on)
}
