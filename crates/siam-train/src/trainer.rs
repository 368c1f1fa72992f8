//! The training loop: one run folder, seeded and resumable. It emits [`Event`]s and prints
//! nothing; the CLI renders them.
//!
//! Run folder: `config.toml` (resolved), `metrics.jsonl` (a record per log step and per
//! validation), `checkpoints/step-NNNNNNNN.safetensors` (weights, optimizer state, counters),
//! `model.safetensors` (best model with its calibrated threshold), `summary.json` (final test).

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
use crate::evaluate::{EvalReport, EvalSpec, eval_pairs, evaluate};
use crate::optim::{Optimizer, learning_rate};

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
    /// Wall time of this invocation, seconds.
    pub wall_s: f64,
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
    stopped_early: bool,
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

/// A run folder in use: `.lock` holds the owner's process id while a trainer writes the
/// folder, so a second `train`/`resume` on it stops instead of interleaving writes. A lock left
/// by a killed process (its id no longer running) is taken over.
struct RunLock(PathBuf);

impl RunLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let p = dir.join(".lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(mut f) => {
                    let _ = f.write_all(std::process::id().to_string().as_bytes());
                    return Ok(Self(p));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&p).unwrap_or_default();
                    let alive = owner.trim().parse::<u32>().is_ok_and(|pid| {
                        pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
                    });
                    if alive {
                        return Err(TrainError::run(
                            dir,
                            format!(
                                "the run folder is in use by process {} (or remove {} if that process is not siam)",
                                owner.trim(),
                                p.display()
                            ),
                        ));
                    }
                    let _ = std::fs::remove_file(&p);
                }
                Err(e) => {
                    return Err(TrainError::run(
                        &p,
                        format!("cannot lock the run folder: {e}"),
                    ));
                }
            }
        }
        Err(TrainError::run(&p, "cannot lock the run folder"))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn model_config(cfg: &TrainConfig, train: &ImageSet) -> ModelConfig {
    let s = train.shape();
    let (mean, std) = match (&cfg.data.mean, &cfg.data.std) {
        (Some(m), Some(sd)) => (m.clone(), sd.clone()),
        _ => train.channel_stats(),
    };
    ModelConfig {
        encoder: cfg.model.encoder.clone(),
        input: InputSpec {
            channels: s.channels,
            height: s.height,
            width: s.width,
            mean,
            std,
        },
        normalize: cfg.model.normalize,
        distance: cfg.model.distance,
        pair_head: matches!(cfg.loss, LossConfig::Bce),
    }
}

fn named_vars(model: &SiameseModel) -> Vec<(String, candle_core::Var)> {
    let data = model.varmap().data().lock().expect("var map lock");
    data.iter()
        .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The optimizer's variables: the model's trainable ones, then the loss's (`loss.NAME`).
fn trained_vars(
    model: &SiameseModel,
    loss_vars: &candle_nn::VarMap,
) -> Vec<(String, candle_core::Var)> {
    let mut v = named_vars(model);
    let data = loss_vars.data().lock().expect("var map lock");
    v.extend(
        data.iter()
            .map(|(k, var)| (format!("loss.{k}"), var.clone())),
    );
    v
}

/// The loss's trainable state for `cfg`: CosFace/ArcFace proxies, one row per class of the data
/// (labels index `classes`), drawn from the config's seed; empty for the other losses.
fn loss_state(
    cfg: &TrainConfig,
    classes: usize,
    dim: usize,
    device: &Device,
) -> Result<candle_nn::VarMap> {
    let vars = candle_nn::VarMap::new();
    if cfg.loss.has_proxies() {
        let init = loss::init_proxies(
            classes,
            dim,
            derive_seed(cfg.seed, &[stream::PROXIES]),
            device,
        )?;
        vars.data()
            .lock()
            .expect("var map lock")
            .insert("proxies".into(), candle_core::Var::from_tensor(&init)?);
    }
    Ok(vars)
}

/// The loss over a labelled batch of embeddings for the losses that take one whole (all but
/// contrastive and triplet, which the trainer mines itself); `proxies` for CosFace/ArcFace.
pub(crate) fn class_batch_loss(
    cfg: &LossConfig,
    e: &Tensor,
    labels: &[u32],
    proxies: Option<&Tensor>,
) -> Result<Tensor> {
    let need = |p: Option<&Tensor>| {
        p.cloned().ok_or_else(|| {
            TrainError::Config(format!("the {} loss needs its class proxies", cfg.kind()))
        })
    };
    Ok(match *cfg {
        LossConfig::MultiSimilarity {
            alpha,
            beta,
            base,
            epsilon,
        } => loss::multi_similarity(
            e,
            labels,
            &loss::MsConfig {
                alpha,
                beta,
                base,
                epsilon: Some(epsilon),
            },
        )?,
        LossConfig::NtXent { temperature } => loss::nt_xent(e, labels, temperature)?,
        LossConfig::SupCon { temperature } => loss::supcon(e, labels, temperature)?,
        LossConfig::Cosface { margin, scale } => {
            loss::cosface(e, labels, &need(proxies)?, margin, scale)?
        }
        LossConfig::Arcface { margin, scale } => {
            loss::arcface(e, labels, &need(proxies)?, margin, scale)?
        }
        ref other => {
            return Err(TrainError::Config(format!(
                "the {} loss is not a batch loss",
                other.kind()
            )));
        }
    })
}

fn checkpoint_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

/// Checkpoint files of a run folder, oldest first.
pub fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(checkpoint_dir(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn append_record(dir: &Path, kind: &str, rec: &impl serde::Serialize) -> Result<()> {
    let p = dir.join("metrics.jsonl");
    let mut v = serde_json::to_value(rec).map_err(|e| TrainError::run(&p, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), kind.into());
    }
    let mut line = v.to_string();
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(|e| TrainError::run(&p, e.to_string()))?;
    f.write_all(line.as_bytes())
        .map_err(|e| TrainError::run(&p, e.to_string()))
}

fn metric_of(m: Metric, r: &EvalReport) -> f64 {
    match m {
        Metric::RocAuc => r.verification.roc_auc,
        Metric::PrecisionAt1 => r.retrieval.precision_at_1,
        Metric::MapAtR => r.retrieval.map_at_r,
        Metric::Loss => r.loss.unwrap_or(f64::INFINITY),
    }
}

/// Starts a new run in `dir`, which must not exist or be empty.
pub fn train(
    cfg: &TrainConfig,
    dir: &Path,
    opts: &TrainOptions,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Summary> {
    cfg.validate()?;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(TrainError::run(
            dir,
            "the run folder exists and is not empty; choose another --out, or resume it",
        ));
    }
    // Everything that can fail on the inputs fails before the run folder exists.
    let data = data::load(&cfg.data, cfg.seed)?;
    let (sampler, note) = cfg.sampler.fit(&data.train);
    sampler.build(&data.train, cfg.batch_size, cfg.seed)?;
    let device = siam_model::parse_device(&cfg.device)?;
    let mcfg = model_config(cfg, &data.train);
    let model = SiameseModel::new(&mcfg, derive_seed(cfg.seed, &[stream::INIT]), &device)?;
    // config.toml first: a run killed at any later point can be resumed from its folder.
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::run(dir, format!("cannot create the run folder: {e}")))?;
    let mut resolved = cfg.clone();
    resolved.sampler = sampler;
    if let Some(n) = &note {
        on(Event::Note(n));
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
    let opt = Optimizer::new(cfg.optimizer.clone(), trained_vars(&model, &loss_vars));
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

/// Temporary files a killed process left behind (`.NAME.PID.tmp`, never read by siam).
fn remove_stale_temp_files(dir: &Path) {
    for d in [dir.to_path_buf(), checkpoint_dir(dir)] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
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
            let mut opt = Optimizer::new(cfg.optimizer.clone(), trained_vars(&model, &loss_vars));
            let progress = load_checkpoint(&ckpt, &model, &loss_vars, &mut opt)?;
            (model, opt, progress)
        }
        None => {
            let model = SiameseModel::new(&mcfg, derive_seed(cfg.seed, &[stream::INIT]), &device)?;
            let opt = Optimizer::new(cfg.optimizer.clone(), trained_vars(&model, &loss_vars));
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

fn load_checkpoint(
    path: &Path,
    model: &SiameseModel,
    loss_vars: &candle_nn::VarMap,
    opt: &mut Optimizer,
) -> Result<Progress> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::run(path, e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::run(path, format!("not a checkpoint: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CHECKPOINT_KEY))
        .ok_or_else(|| TrainError::run(path, "not a siam checkpoint (no metadata)"))?;
    let progress: Progress = serde_json::from_str(meta)
        .map_err(|e| TrainError::run(path, format!("bad checkpoint metadata: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, model.device())
        .map_err(|e| TrainError::run(path, e.to_string()))?;
    let mut opt_state = BTreeMap::new();
    {
        let vars = model.varmap().data().lock().expect("var map lock");
        for (name, var) in vars.iter() {
            let t = tensors
                .get(&format!("model.{name}"))
                .ok_or_else(|| TrainError::run(path, format!("missing tensor model.{name}")))?;
            var.set(t)?;
        }
        for (name, var) in loss_vars.data().lock().expect("var map lock").iter() {
            let t = tensors
                .get(&format!("loss.{name}"))
                .ok_or_else(|| TrainError::run(path, format!("missing tensor loss.{name}")))?;
            var.set(t)?;
        }
    }
    for (k, t) in tensors {
        if let Some(rest) = k.strip_prefix("opt.") {
            opt_state.insert(rest.to_string(), t);
        }
    }
    opt.load_state(&opt_state, progress.optimizer_steps)?;
    Ok(progress)
}

impl<'a> Run<'a> {
    fn new(
        cfg: TrainConfig,
        dir: &Path,
        data: Datasets,
        (model, loss_vars): (SiameseModel, candle_nn::VarMap),
        opt: Optimizer,
        progress: Progress,
        opts: &'a TrainOptions,
    ) -> Result<Self> {
        let val_pairs = eval_pairs(&data.val, cfg.validation.pairs, cfg.seed)?;
        let input = &model.config().input;
        let eval_transform = crate::evaluate::eval_transform(input);
        Ok(Self {
            cfg,
            dir: dir.to_path_buf(),
            data,
            model,
            loss_vars,
            opt,
            progress,
            val_pairs,
            eval_transform,
            opts,
        })
    }

    fn save_checkpoint(&self, on: &mut dyn FnMut(Event<'_>)) -> Result<PathBuf> {
        let step = self.progress.step;
        let p = checkpoint_dir(&self.dir).join(format!("step-{step:08}.safetensors"));
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        {
            let vars = self.model.varmap().data().lock().expect("var map lock");
            for (k, v) in vars.iter() {
                tensors.insert(format!("model.{k}"), v.as_tensor().to_device(&Device::Cpu)?);
            }
            for (k, v) in self.loss_vars.data().lock().expect("var map lock").iter() {
                tensors.insert(format!("loss.{k}"), v.as_tensor().to_device(&Device::Cpu)?);
            }
        }
        let (state, _) = self.opt.state();
        for (k, t) in state {
            tensors.insert(format!("opt.{k}"), t.to_device(&Device::Cpu)?);
        }
        let mut progress = self.progress.clone();
        progress.optimizer_steps = self.opt.steps();
        let meta =
            serde_json::to_string(&progress).map_err(|e| TrainError::run(&p, e.to_string()))?;
        let bytes = safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some([(CHECKPOINT_KEY.to_string(), meta)].into()),
        )
        .map_err(|e| TrainError::run(&p, e.to_string()))?;
        write_atomic(&p, &bytes).map_err(|e| TrainError::run(&p, format!("cannot write: {e}")))?;
        on(Event::Checkpoint { path: &p, step });
        // Keep the last N, and the one holding the best model.
        let best_step = self.progress.best.map(|b| b.1);
        let all = checkpoints(&self.dir);
        let n = all.len();
        for old in all
            .into_iter()
            .take(n.saturating_sub(self.cfg.checkpoint.keep_last))
        {
            let s = old
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("step-"))
                .and_then(|s| s.parse::<u64>().ok());
            if s != best_step {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(p)
    }

    fn last_checkpoint_hint(&self) -> String {
        checkpoints(&self.dir)
            .pop()
            .map_or_else(|| "none yet".to_string(), |p| p.display().to_string())
    }

    fn diverged(&self, what: &str, lr: f64) -> TrainError {
        let msg = format!(
            "step {}: {what} is not finite. Likely causes: a learning rate too high for this model (lr = {lr:.3e}; try 10x lower), \
             a margin far from the embedding scale, or unnormalised inputs. Last good checkpoint: {} (`siam train --resume {}` after fixing the config)",
            self.progress.step,
            self.last_checkpoint_hint(),
            self.dir.display()
        );
        // The log says how the run ended, for `siam diagnose --run`; the error is what matters
        // if the log cannot be written.
        let _ = append_record(
            &self.dir,
            "diverged",
            &serde_json::json!({ "step": self.progress.step, "what": what, "lr": lr, "message": msg }),
        );
        TrainError::Diverged(msg)
    }

    /// The loss of one batch, with the miner's active fraction.
    fn batch_loss(&self, batch: &Batch) -> Result<(Tensor, Option<f64>)> {
        let m = &self.model;
        Ok(match batch {
            Batch::Pairs { a, b, same } => {
                let n = a.dim(0)?;
                let e = m.forward_t(&Tensor::cat(&[a, b], 0)?, true)?;
                let (e1, e2) = (e.narrow(0, 0, n)?, e.narrow(0, n, n)?);
                match &self.cfg.loss {
                    LossConfig::Bce => (
                        loss::bce_with_logits(&m.pair_logits(&e1, &e2)?, same)?,
                        None,
                    ),
                    LossConfig::Contrastive { margin, pos_margin } => (
                        loss::contrastive_with(&m.distance(&e1, &e2)?, same, *margin, *pos_margin)?,
                        None,
                    ),
                    l => unreachable!("validated: the {} loss takes no pairs", l.kind()),
                }
            }
            Batch::Triplets {
                anchor,
                positive,
                negative,
            } => {
                let n = anchor.dim(0)?;
                let e = m.forward_t(&Tensor::cat(&[anchor, positive, negative], 0)?, true)?;
                let (ea, ep, en) = (
                    e.narrow(0, 0, n)?,
                    e.narrow(0, n, n)?,
                    e.narrow(0, 2 * n, n)?,
                );
                let margin = self.cfg.loss.margin().unwrap_or(1.0);
                (
                    loss::triplet(&m.distance(&ea, &ep)?, &m.distance(&ea, &en)?, margin)?,
                    None,
                )
            }
            Batch::Classes {
                images,
                labels,
                views,
            } => {
                let labels: Vec<u32> = labels.to_device(&Device::Cpu)?.to_vec1()?;
                let ss = self.cfg.self_supervised.as_ref();
                let (e, second) = match (ss, views) {
                    (Some(_), Some(v)) => {
                        // Both views in one forward pass: BatchNorm sees one batch.
                        let n = images.dim(0)?;
                        let both = m.forward_t(&Tensor::cat(&[images, v], 0)?, true)?;
                        (both.narrow(0, 0, n)?, Some(both))
                    }
                    _ => (m.forward_t(images, true)?, None),
                };
                let (sup, active) = match ss {
                    Some(s) if s.weight >= 1.0 => (None, None),
                    _ => {
                        let (l, a) = self.supervised_class_loss(&e, &labels)?;
                        (Some(l), a)
                    }
                };
                let Some(s) = ss else {
                    return Ok((sup.expect("supervised without self-supervision"), active));
                };
                let both = second.ok_or_else(|| {
                    TrainError::Config("two-view training needs the batch's second views".into())
                })?;
                let n = labels.len() as u32;
                let ids: Vec<u32> = (0..n).chain(0..n).collect();
                let selfsup = (loss::nt_xent(&both, &ids, s.temperature)? * s.weight)?;
                let total = match sup {
                    Some(l) => ((l * (1.0 - s.weight))? + selfsup)?,
                    None => selfsup,
                };
                (total, active)
            }
        })
    }

    /// The supervised loss over a P×K batch's embeddings, with the miner's active fraction.
    fn supervised_class_loss(&self, e: &Tensor, labels: &[u32]) -> Result<(Tensor, Option<f64>)> {
        let m = &self.model;
        Ok(match &self.cfg.loss {
            LossConfig::Triplet { margin, mining } => {
                let r = loss::mined_triplet(e, labels, *margin, m.distance_kind(), *mining)?;
                (r.loss, Some(f64::from(r.active_fraction)))
            }
            LossConfig::Contrastive { margin, pos_margin } => {
                // All pairs of the batch; positives and negatives weigh one half each.
                let n = labels.len();
                let (mut pa, mut pb, mut na, mut nb) = (vec![], vec![], vec![], vec![]);
                for i in 0..n {
                    for j in i + 1..n {
                        if labels[i] == labels[j] {
                            pa.push(i as u32);
                            pb.push(j as u32);
                        } else {
                            na.push(i as u32);
                            nb.push(j as u32);
                        }
                    }
                }
                let dev = e.device();
                let part = |a: Vec<u32>, b: Vec<u32>, s: f32| -> Result<Tensor> {
                    let k = a.len();
                    let ia = Tensor::from_vec(a, k, dev)?;
                    let ib = Tensor::from_vec(b, k, dev)?;
                    let d = m.distance(&e.index_select(&ia, 0)?, &e.index_select(&ib, 0)?)?;
                    let same = Tensor::full(s, k, dev)?;
                    Ok(loss::contrastive_with(&d, &same, *margin, *pos_margin)?)
                };
                (((part(pa, pb, 1.0)? + part(na, nb, 0.0)?)? * 0.5)?, None)
            }
            LossConfig::Bce => unreachable!("validated: bce takes pairs"),
            l => {
                let proxies = self
                    .loss_vars
                    .data()
                    .lock()
                    .expect("var map lock")
                    .get("proxies")
                    .map(|v| v.as_tensor().clone());
                (class_batch_loss(l, e, labels, proxies.as_ref())?, None)
            }
        })
    }

    fn validate(&mut self, epoch: u64, on: &mut dyn FnMut(Event<'_>)) -> Result<bool> {
        let spec = EvalSpec {
            loss: Some(&self.cfg.loss),
            calibration: self.cfg.validation.calibration,
            threshold: None,
        };
        let report = evaluate(
            &self.model,
            &self.data.val,
            &self.val_pairs,
            &self.eval_transform,
            &spec,
        )?;
        let metric_kind = self.cfg.validation.metric;
        let value = metric_of(metric_kind, &report);
        let better = match self.progress.best {
            None => true,
            Some((b, _)) => {
                if metric_kind.higher_is_better() {
                    value > b
                } else {
                    value < b
                }
            }
        };
        if better {
            let data_description = self.data.description.clone();
            let (loss_cfg, sampler_cfg) = (self.cfg.loss.clone(), self.cfg.sampler.clone());
            self.progress.best = Some((value, self.progress.step));
            self.progress.bad_validations = 0;
            let meta = self.model.meta_mut();
            meta.threshold = Some(report.verification.threshold);
            meta.distance_quantiles = report.quantiles.clone();
            let classes = self
                .data
                .roles
                .as_ref()
                .map(|r| ClassNames::of(r, self.data.train.class_names()));
            meta.training = Some(serde_json::json!({
                "classes": classes,
                "data": data_description,
                "step": self.progress.step,
                "epoch": epoch,
                "loss": loss_cfg,
                "sampler": sampler_cfg,
                "validation": { "roc_auc": report.verification.roc_auc, "eer": report.verification.eer,
                    "precision_at_1": report.retrieval.precision_at_1, "map_at_r": report.retrieval.map_at_r,
                    "balanced_accuracy": report.verification.balanced_accuracy },
            }));
            self.model.save(self.dir.join("model.safetensors"))?;
        } else {
            self.progress.bad_validations += 1;
        }
        let rec = ValidationRecord {
            epoch,
            step: self.progress.step,
            report,
            metric: value,
            best: better,
        };
        append_record(&self.dir, "validation", &rec)?;
        on(Event::Validation(&rec));
        Ok(self
            .cfg
            .validation
            .patience
            .is_some_and(|p| self.progress.bad_validations >= p))
    }

    fn go(mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
        let started = Instant::now();
        let cfg = self.cfg.clone();
        let spe = cfg.steps_per_epoch as u64;
        let total = cfg.total_steps();
        let parameters = self
            .model
            .trainable_vars()
            .iter()
            .map(|v| v.elem_count())
            .sum();
        on(Event::Started {
            run_dir: &self.dir,
            data: &self.data.description,
            sizes: [
                self.data.train.len(),
                self.data.val.len(),
                self.data.test.len(),
            ],
            parameters,
            total_steps: total,
            start_step: self.progress.step,
        });
        let units_per_batch = match cfg.sampler {
            SamplerConfig::Pk { p, k } => (p * k) as f64,
            _ => cfg.batch_size as f64,
        };
        if self.progress.step < total && !self.progress.stopped_early {
            let sampler = cfg
                .sampler
                .build(&self.data.train, cfg.batch_size, cfg.seed)?;
            let input = &self.model.config().input;
            let transform = Transform {
                augment: cfg.augment.clone(),
                normalize: Some(Normalize {
                    mean: input.mean.clone(),
                    std: input.std.clone(),
                }),
                seed: cfg.seed,
                second_view: cfg
                    .self_supervised
                    .as_ref()
                    .map(|s| s.view_augment(&cfg.augment)),
            };
            let loader = Loader::spawn(
                self.data.train.clone(),
                sampler,
                transform,
                LoaderConfig {
                    batches_per_epoch: spe,
                    epochs: Some(cfg.epochs as u64),
                    start: (self.progress.step / spe, self.progress.step % spe),
                    prefetch: 4,
                    threads: Some(self.opts.loader_threads.unwrap_or(1)),
                    device: self.model.device().clone(),
                },
            )?;
            let trainable = self.model.trainable_vars();
            let mut window_start = Instant::now();
            let mut window_steps_timed = 0u64;
            let run_start_step = self.progress.step;
            for item in loader {
                let b = item?;
                self.progress.step += 1;
                let step = self.progress.step;
                let lr = learning_rate(&cfg.schedule, cfg.optimizer.lr(), step - 1, total, spe);
                self.model
                    .reseed_dropout(derive_seed(cfg.seed, &[stream::DROPOUT, step]));
                let (l, active) = self.batch_loss(&b.batch)?;
                let lv = f64::from(l.to_dtype(DType::F32)?.to_scalar::<f32>()?);
                if !lv.is_finite() {
                    return Err(self.diverged("the training loss", lr));
                }
                let grads = l.backward()?;
                let mut sq = 0f64;
                for v in &trainable {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sq += f64::from(
                            g.sqr()?
                                .sum_all()?
                                .to_dtype(DType::F32)?
                                .to_scalar::<f32>()?,
                        );
                    }
                }
                if !sq.is_finite() {
                    return Err(self.diverged("a gradient", lr));
                }
                self.opt.step(&grads, lr)?;
                self.progress.window_loss += lv;
                self.progress.window_active += active.unwrap_or(0.0);
                self.progress.window_steps += 1;
                window_steps_timed += 1;
                let end_of_epoch = step.is_multiple_of(spe);
                if step.is_multiple_of(cfg.log_every as u64) || end_of_epoch {
                    let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                    let rate = window_steps_timed as f64 * units_per_batch / secs;
                    let done = (step - run_start_step) as f64;
                    let per_step = started.elapsed().as_secs_f64() / done.max(1.0);
                    let w = self.progress.window_steps.max(1) as f64;
                    let rec = StepRecord {
                        epoch: (step - 1) / spe + 1,
                        step,
                        loss: self.progress.window_loss / w,
                        lr,
                        active_fraction: active.map(|_| self.progress.window_active / w),
                        pairs_per_s: rate,
                        eta_s: per_step * (total - step) as f64,
                    };
                    append_record(&self.dir, "step", &rec)?;
                    on(Event::Step(&rec));
                    self.progress.window_loss = 0.0;
                    self.progress.window_active = 0.0;
                    self.progress.window_steps = 0;
                    window_start = Instant::now();
                    window_steps_timed = 0;
                }
                let mut checkpointed = false;
                if end_of_epoch {
                    let epoch = step / spe;
                    if epoch.is_multiple_of(cfg.validation.every_epochs as u64) || step == total {
                        let stop = self.validate(epoch, on)?;
                        if stop {
                            self.progress.stopped_early = true;
                            on(Event::EarlyStop {
                                step,
                                best_step: self.progress.best.map_or(0, |b| b.1),
                            });
                        }
                    }
                    self.save_checkpoint(on)?;
                    checkpointed = true;
                } else if cfg.checkpoint.every_steps > 0
                    && step.is_multiple_of(cfg.checkpoint.every_steps as u64)
                {
                    self.save_checkpoint(on)?;
                    checkpointed = true;
                }
                if self.progress.stopped_early {
                    break;
                }
                let asked = self
                    .opts
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Relaxed));
                if (self.opts.stop_after == Some(step) || asked) && step < total {
                    let checkpoint = if checkpointed {
                        checkpoints(&self.dir).pop().unwrap_or_default()
                    } else {
                        self.save_checkpoint(on)?
                    };
                    return Err(TrainError::Interrupted { step, checkpoint });
                }
            }
        }
        on(Event::Testing);
        let model_path = self.dir.join("model.safetensors");
        let best = SiameseModel::load(&model_path, self.model.device())?;
        let test_pairs = eval_pairs(
            &self.data.test,
            cfg.validation.test_pairs,
            cfg.seed ^ 0x7e57,
        )?;
        let spec = EvalSpec {
            loss: Some(&cfg.loss),
            calibration: cfg.validation.calibration,
            threshold: best.meta().threshold,
        };
        let test = evaluate(
            &best,
            &self.data.test,
            &test_pairs,
            &self.eval_transform,
            &spec,
        )?;
        let (value, best_step) = self.progress.best.unwrap_or((f64::NAN, 0));
        let summary = Summary {
            run_dir: self.dir.clone(),
            model: model_path,
            data: self.data.description.clone(),
            steps: self.progress.step,
            best_step,
            best_metric: (cfg.validation.metric, value),
            test,
            wall_s: started.elapsed().as_secs_f64(),
            classes: self
                .data
                .roles
                .as_ref()
                .map(|r| ClassNames::of(r, self.data.train.class_names())),
        };
        let sp = self.dir.join("summary.json");
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| TrainError::run(&sp, e.to_string()))?;
        write_atomic(&sp, text.as_bytes()).map_err(|e| TrainError::run(&sp, e.to_string()))?;
        Ok(summary)
    }
}
