//! `TrainConfig`: everything a run needs, as TOML (kebab-case, unknown keys rejected), with
//! named presets. It is resolved once and written to the run folder.

use std::path::Path;

use siam_data::split::Holdout;
use siam_data::{AugmentConfig, ColorMode, SamplerConfig};
use siam_eval::Calibration;
use siam_model::loss::Mining;
use siam_model::{Distance, EncoderConfig};

use crate::error::{Result, TrainError};

/// A full training configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrainConfig {
    /// The one seed every random draw derives from.
    pub seed: u64,
    /// "cpu", "cuda", "cuda:N", "metal" or "auto".
    pub device: String,
    /// Passes over `steps-per-epoch` batches.
    pub epochs: usize,
    /// Batches per epoch.
    pub steps_per_epoch: usize,
    /// Pairs or triplets per batch (P×K batches have P·K images instead).
    pub batch_size: usize,
    /// Log a step record every this many steps.
    pub log_every: usize,
    /// Where the data comes from and how it is split.
    pub data: DataConfig,
    /// How batches are drawn.
    pub sampler: SamplerConfig,
    /// Training-time augmentation.
    pub augment: AugmentConfig,
    /// The network.
    pub model: ModelSection,
    /// The loss.
    pub loss: LossConfig,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Validation, model selection and early stopping.
    pub validation: ValidationConfig,
    /// Checkpoints.
    pub checkpoint: CheckpointConfig,
    /// Two-view self-supervised training (NT-Xent over two augmented views of each image),
    /// mixed with the supervised loss; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_supervised: Option<SelfSupervised>,
}

/// `[self-supervised]`: the loss becomes `(1 − weight)·supervised + weight·NT-Xent`, the
/// NT-Xent term over two views of every image of the P×K batch (each image's two views are
/// its only positives; SimCLR). With `weight = 1` the class labels are not used for training.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SelfSupervised {
    /// The self-supervised term's share of the loss, in (0, 1].
    pub weight: f64,
    /// NT-Xent's τ (default 0.1).
    #[serde(default = "temperature")]
    pub temperature: f64,
    /// The second view's augmentation (default: the run's `[augment]` plus a resized crop of
    /// 35–100 % of the area, noise σ = 0.05 and erasing with probability 0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentConfig>,
}

impl SelfSupervised {
    /// The second view's augmentation for a run whose first view uses `first`.
    pub fn view_augment(&self, first: &AugmentConfig) -> AugmentConfig {
        self.augment.clone().unwrap_or_else(|| first.strong_view())
    }
}

/// Data source and split.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DataConfig {
    /// "fixtures" (the embedded Fashion-MNIST subset), "fashion-mnist", "mnist", an IDX
    /// directory, or an image folder `root/<class>/*.png`.
    pub source: String,
    /// Share of each training class held out for validation (stratified split).
    pub val_fraction: f64,
    /// Replaced by `class-split`; kept so that an old config gets an error naming the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_classes: Option<Holdout>,
    /// Classes held out of training for unseen-class evaluation: `validation` classes select
    /// the model and calibrate the threshold, `test` classes give the final figures only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_split: Option<ClassSplit>,
    /// Share of an image folder held out as the test split (IDX sets have their own).
    pub test_fraction: f64,
    /// Keep at most this many training images per class (for quick runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_per_class: Option<usize>,
    /// Gray or RGB (image folders).
    pub color: ColorMode,
    /// Resize image folders to [height, width].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<[usize; 2]>,
    /// Per-channel mean; computed from the training images when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel std; computed from the training images when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
}

/// A three-way class split: training classes, `validation` classes, `test` classes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClassSplit {
    /// Validation classes: a count drawn with the seed, or a list of labels.
    pub validation: Holdout,
    /// Test classes, drawn first: a count or a list of labels.
    pub test: Holdout,
}

/// The network part of the config (the input spec comes from the data).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelSection {
    /// The shared encoder.
    pub encoder: EncoderConfig,
    /// L2-normalise embeddings.
    pub normalize: bool,
    /// The distance.
    pub distance: Distance,
}

/// The loss and its settings. `docs/guide.md` says which to choose when.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum LossConfig {
    /// `mean(same·d² + (1−same)·max(0, m−d)²)`; with P×K batches, over all pairs of the batch.
    Contrastive {
        /// The margin m.
        margin: f64,
        /// Same pairs are only pulled in beyond this distance.
        #[serde(default)]
        pos_margin: f64,
    },
    /// `max(0, d(a,p) − d(a,n) + m)`; with P×K batches, mined online.
    Triplet {
        /// The margin m.
        margin: f64,
        /// Mining over P×K batches.
        #[serde(default)]
        mining: Mining,
    },
    /// Binary cross-entropy on a learned head over |e₁ − e₂|.
    Bce,
    /// Multi-similarity loss with its miner over P×K batches (cosine similarities).
    MultiSimilarity {
        /// α, the positives' weight (default 2).
        #[serde(default = "ms_alpha")]
        alpha: f64,
        /// β, the negatives' weight (default 50).
        #[serde(default = "ms_beta")]
        beta: f64,
        /// λ, the similarity both are measured from (default 0.5).
        #[serde(default = "ms_base")]
        base: f64,
        /// The miner's ε (default 0.1).
        #[serde(default = "ms_epsilon")]
        epsilon: f64,
    },
    /// NT-Xent over P×K batches (every same-class image is a positive).
    NtXent {
        /// τ (default 0.1).
        #[serde(default = "temperature")]
        temperature: f64,
    },
    /// Supervised contrastive loss (SupCon) over P×K batches.
    #[serde(rename = "supcon", alias = "sup-con")]
    SupCon {
        /// τ (default 0.1).
        #[serde(default = "temperature")]
        temperature: f64,
    },
    /// CosFace against learned class proxies: the target cosine lowered by `margin`, scaled.
    Cosface {
        /// m (default 0.35).
        #[serde(default = "cosface_margin")]
        margin: f64,
        /// s (default 64).
        #[serde(default = "proxy_scale")]
        scale: f64,
    },
    /// ArcFace against learned class proxies: the target angle widened by `margin` radians.
    Arcface {
        /// m in radians (default 0.5, about 28.6°).
        #[serde(default = "arcface_margin")]
        margin: f64,
        /// s (default 64).
        #[serde(default = "proxy_scale")]
        scale: f64,
    },
}

fn ms_alpha() -> f64 {
    2.0
}
fn ms_beta() -> f64 {
    50.0
}
fn ms_base() -> f64 {
    0.5
}
fn ms_epsilon() -> f64 {
    0.1
}
fn temperature() -> f64 {
    0.1
}
fn cosface_margin() -> f64 {
    0.35
}
fn arcface_margin() -> f64 {
    0.5
}
fn proxy_scale() -> f64 {
    64.0
}

impl LossConfig {
    /// The distance margin the loss works against (contrastive, triplet); the others have none.
    pub fn margin(&self) -> Option<f64> {
        match self {
            Self::Contrastive { margin, .. } | Self::Triplet { margin, .. } => Some(*margin),
            _ => None,
        }
    }

    /// The name used in configs and run records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Contrastive { .. } => "contrastive",
            Self::Triplet { .. } => "triplet",
            Self::Bce => "bce",
            Self::MultiSimilarity { .. } => "multi-similarity",
            Self::NtXent { .. } => "nt-xent",
            Self::SupCon { .. } => "supcon",
            Self::Cosface { .. } => "cosface",
            Self::Arcface { .. } => "arcface",
        }
    }

    /// True for the losses that train class proxies with the encoder (kept in checkpoints,
    /// not in the model file).
    pub fn has_proxies(&self) -> bool {
        matches!(self, Self::Cosface { .. } | Self::Arcface { .. })
    }

    /// True for the losses over a labelled batch (P×K) rather than pairs or triplets.
    pub fn takes_classes(&self) -> bool {
        !matches!(
            self,
            Self::Contrastive { .. } | Self::Triplet { .. } | Self::Bce
        )
    }
}

/// The optimizer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum OptimizerConfig {
    /// AdamW (PyTorch's semantics; weight-decay 0 is Adam).
    Adamw {
        /// Peak learning rate.
        lr: f64,
        /// Decoupled weight decay.
        #[serde(default)]
        weight_decay: f64,
        /// β₁.
        #[serde(default = "beta1")]
        beta1: f64,
        /// β₂.
        #[serde(default = "beta2")]
        beta2: f64,
        /// ε.
        #[serde(default = "adam_eps")]
        eps: f64,
    },
    /// SGD with momentum (PyTorch's semantics).
    Sgd {
        /// Peak learning rate.
        lr: f64,
        /// Momentum.
        #[serde(default = "momentum")]
        momentum: f64,
        /// L2 weight decay added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn adam_eps() -> f64 {
    1e-8
}
fn momentum() -> f64 {
    0.9
}

impl OptimizerConfig {
    /// The peak learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Adamw { lr, .. } | Self::Sgd { lr, .. } => *lr,
        }
    }
}

/// Shape of the learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The peak rate throughout.
    Constant,
    /// Multiply by `gamma` every `step-epochs` epochs.
    Step,
    /// Cosine decay from the peak to `min-lr` over the run.
    Cosine,
}

/// The learning-rate schedule, after a linear warmup.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    /// constant, step or cosine.
    pub kind: ScheduleKind,
    /// Linear warmup from 0 over this many steps.
    #[serde(default)]
    pub warmup_steps: usize,
    /// For `step`: epochs between decays.
    #[serde(default = "one")]
    pub step_epochs: usize,
    /// For `step`: the decay factor.
    #[serde(default = "tenth")]
    pub gamma: f64,
    /// For `cosine`: the final rate.
    #[serde(default)]
    pub min_lr: f64,
}

fn one() -> usize {
    1
}
fn tenth() -> f64 {
    0.1
}

/// The metric that selects the best model and drives early stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Validation ROC-AUC (higher is better).
    RocAuc,
    /// Validation precision@1 (higher is better).
    PrecisionAt1,
    /// Validation MAP@R (higher is better).
    MapAtR,
    /// Validation loss (lower is better).
    Loss,
}

impl Metric {
    /// True when larger values are better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Self::Loss)
    }
}

/// Validation settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ValidationConfig {
    /// Validate every this many epochs (and after the last).
    pub every_epochs: usize,
    /// Balanced validation pairs.
    pub pairs: usize,
    /// Balanced test pairs for the final report.
    pub test_pairs: usize,
    /// The model-selection metric.
    pub metric: Metric,
    /// Stop after this many validations without improvement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// How the decision threshold is chosen.
    pub calibration: Calibration,
}

/// Checkpoint policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Also checkpoint every this many steps within an epoch (0: at epoch ends only).
    pub every_steps: usize,
    /// Keep the last N checkpoints (the one of the best model is kept too).
    pub keep_last: usize,
}

/// The names of the built-in presets.
pub const PRESETS: [&str; 4] = ["default", "seed", "quick", "convnet"];

impl TrainConfig {
    /// A preset by name: `default` (the recommended recipe), `seed` (the recipe the project
    /// grew from: seed CNN, contrastive m = 2, random balanced pairs, Adam 1e-3, 5 epochs of
    /// 60k pairs), `quick` (a minute on the fixtures, for smoke tests), `convnet` (`default`
    /// with the deeper BatchNorm encoder, a flattened head and 12 epochs: the recipe that
    /// reaches P@1 0.907 and ROC-AUC 0.991 on Fashion-MNIST, about 18× the time of `default`).
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self {
            seed: 42,
            device: "cpu".into(),
            epochs: 5,
            steps_per_epoch: 938,
            batch_size: 64,
            log_every: 20,
            data: DataConfig {
                source: "fixtures".into(),
                val_fraction: 0.1,
                holdout_classes: None,
                class_split: None,
                test_fraction: 0.2,
                limit_per_class: None,
                color: ColorMode::Gray,
                size: None,
                mean: None,
                std: None,
            },
            sampler: SamplerConfig::default(),
            augment: AugmentConfig::none(),
            model: ModelSection {
                encoder: EncoderConfig::SeedCnn { embedding_dim: 128 },
                normalize: false,
                distance: Distance::Euclidean,
            },
            loss: LossConfig::Contrastive {
                margin: 2.0,
                pos_margin: 0.0,
            },
            optimizer: OptimizerConfig::Adamw {
                lr: 1e-3,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            schedule: ScheduleConfig {
                kind: ScheduleKind::Constant,
                warmup_steps: 0,
                step_epochs: 1,
                gamma: 0.1,
                min_lr: 0.0,
            },
            validation: ValidationConfig {
                every_epochs: 1,
                pairs: 4000,
                test_pairs: 10000,
                metric: Metric::MapAtR,
                patience: None,
                calibration: Calibration::BalancedAccuracy,
            },
            checkpoint: CheckpointConfig {
                every_steps: 0,
                keep_last: 2,
            },
            self_supervised: None,
        };
        match name {
            "seed" => Ok(base),
            "default" => Ok(Self {
                sampler: SamplerConfig::Pk { p: 8, k: 8 },
                augment: AugmentConfig {
                    hflip: true,
                    crop_padding: 2,
                    ..AugmentConfig::none()
                },
                model: ModelSection {
                    normalize: true,
                    ..base.model.clone()
                },
                loss: LossConfig::Contrastive {
                    margin: 1.0,
                    pos_margin: 0.0,
                },
                schedule: ScheduleConfig {
                    kind: ScheduleKind::Cosine,
                    warmup_steps: 100,
                    ..base.schedule.clone()
                },
                ..base
            }),
            "convnet" => {
                // The recipe that reaches the accuracy target (docs/BENCHMARKS.md): the default
                // with the deeper encoder, a head that sees every position, 12 epochs.
                let mut c = Self::preset("default")?;
                c.model.encoder = EncoderConfig::Convnet {
                    channels: vec![32, 64, 128],
                    hidden: 256,
                    dropout: 0.0,
                    embedding_dim: 128,
                    pooling: siam_model::Pooling::Flatten,
                };
                c.epochs = 12;
                Ok(c)
            }
            "quick" => {
                let mut c = Self::preset("default")?;
                c.epochs = 2;
                c.steps_per_epoch = 30;
                c.log_every = 10;
                c.schedule.warmup_steps = 5;
                c.validation.pairs = 1000;
                c.validation.test_pairs = 2000;
                Ok(c)
            }
            other => Err(TrainError::Config(format!(
                "unknown preset '{other}' (known: {})",
                PRESETS.join(", ")
            ))),
        }
    }

    /// Sets the margin of the loss (contrastive, triplet, CosFace, ArcFace).
    pub fn set_margin(&mut self, m: f64) -> Result<()> {
        match &mut self.loss {
            LossConfig::Contrastive { margin, .. }
            | LossConfig::Triplet { margin, .. }
            | LossConfig::Cosface { margin, .. }
            | LossConfig::Arcface { margin, .. } => {
                *margin = m;
                Ok(())
            }
            other => Err(TrainError::Config(format!(
                "loss.margin: the {} loss has no margin",
                other.kind()
            ))),
        }
    }

    /// Sets the optimizer's (peak) learning rate.
    pub fn set_lr(&mut self, v: f64) {
        match &mut self.optimizer {
            OptimizerConfig::Adamw { lr, .. } | OptimizerConfig::Sgd { lr, .. } => *lr = v,
        }
    }

    /// Parses TOML; unknown keys and wrong types are errors naming the key.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let c: Self = toml::from_str(text)
            .map_err(|e| TrainError::Config(format!("{}: {e}", origin.display())))?;
        c.validate()?;
        Ok(c)
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, path)
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot serialise config: {e}\n"))
    }

    /// Checks values that parse but cannot work; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(TrainError::Config(format!("{key}: {why}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.steps_per_epoch == 0 {
            return bad("steps-per-epoch", "must be at least 1".into());
        }
        if self.log_every == 0 {
            return bad("log-every", "must be at least 1".into());
        }
        let pk = matches!(self.sampler, SamplerConfig::Pk { .. });
        if !pk && self.batch_size < 2 {
            return bad(
                "batch-size",
                format!("{} is too small; use at least 2", self.batch_size),
            );
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return bad(
                "data.val-fraction",
                format!("{} must be in [0, 1)", self.data.val_fraction),
            );
        }
        if !(0.0..1.0).contains(&self.data.test_fraction) {
            return bad(
                "data.test-fraction",
                format!("{} must be in [0, 1)", self.data.test_fraction),
            );
        }
        if self.data.holdout_classes.is_some() {
            return bad(
                "data.holdout-classes",
                "replaced by data.class-split, which draws validation and test classes separately so that model selection never sees a test class: class-split = { validation = { count = 2 }, test = { count = 3 } }".into(),
            );
        }
        if self.data.class_split.is_none() && self.data.val_fraction == 0.0 {
            return bad(
                "data.val-fraction",
                "must be positive: validation calibrates the threshold".into(),
            );
        }
        match &self.loss {
            LossConfig::Contrastive { margin, pos_margin } => {
                if !(*margin > 0.0) {
                    return bad("loss.margin", format!("{margin} must be positive"));
                }
                if !(*pos_margin >= 0.0 && pos_margin < margin) {
                    return bad(
                        "loss.pos-margin",
                        format!("{pos_margin} must be in [0, margin)"),
                    );
                }
                if matches!(self.sampler, SamplerConfig::Triplets) {
                    return bad(
                        "sampler.kind",
                        "the contrastive loss takes pairs or pk batches, not triplets".into(),
                    );
                }
            }
            LossConfig::Triplet { margin, .. } => {
                if !(*margin > 0.0) {
                    return bad("loss.margin", format!("{margin} must be positive"));
                }
                if matches!(self.sampler, SamplerConfig::Pairs { .. }) {
                    return bad(
                        "sampler.kind",
                        "the triplet loss takes triplets or pk batches, not pairs".into(),
                    );
                }
            }
            LossConfig::Bce => {
                if !matches!(self.sampler, SamplerConfig::Pairs { .. }) {
                    return bad("sampler.kind", "the bce loss takes pairs".into());
                }
            }
            LossConfig::MultiSimilarity {
                alpha,
                beta,
                base,
                epsilon,
            } => {
                if !(*alpha > 0.0 && alpha.is_finite()) {
                    return bad("loss.alpha", format!("{alpha} must be positive"));
                }
                if !(*beta > 0.0 && beta.is_finite()) {
                    return bad("loss.beta", format!("{beta} must be positive"));
                }
                if !(-1.0..=1.0).contains(base) {
                    return bad(
                        "loss.base",
                        format!("{base} must be a cosine similarity in [-1, 1]"),
                    );
                }
                if !(*epsilon >= 0.0 && epsilon.is_finite()) {
                    return bad("loss.epsilon", format!("{epsilon} must be at least 0"));
                }
            }
            LossConfig::NtXent { temperature } | LossConfig::SupCon { temperature } => {
                if !(*temperature > 0.0 && temperature.is_finite()) {
                    return bad(
                        "loss.temperature",
                        format!("{temperature} must be positive"),
                    );
                }
            }
            LossConfig::Cosface { margin, scale } | LossConfig::Arcface { margin, scale } => {
                let arc = matches!(self.loss, LossConfig::Arcface { .. });
                let top = if arc { std::f64::consts::PI } else { 2.0 };
                if !(*margin >= 0.0 && *margin < top) {
                    let what = if arc {
                        "an angle in radians in [0, π)"
                    } else {
                        "in [0, 2)"
                    };
                    return bad("loss.margin", format!("{margin} must be {what}"));
                }
                if !(*scale > 0.0 && scale.is_finite()) {
                    return bad("loss.scale", format!("{scale} must be positive"));
                }
                if self.validation.metric == Metric::Loss {
                    return bad(
                        "validation.metric",
                        format!(
                            "the {} loss has no validation figure (its proxies are the training classes'); use map-at-r, precision-at-1 or roc-auc",
                            self.loss.kind()
                        ),
                    );
                }
            }
        }
        if let Some(ss) = &self.self_supervised {
            if !(ss.weight > 0.0 && ss.weight <= 1.0) {
                return bad(
                    "self-supervised.weight",
                    format!("{} must be in (0, 1]", ss.weight),
                );
            }
            if !(ss.temperature > 0.0 && ss.temperature.is_finite()) {
                return bad(
                    "self-supervised.temperature",
                    format!("{} must be positive", ss.temperature),
                );
            }
            if let Some(a) = &ss.augment {
                a.validate()
                    .map_err(|e| TrainError::Config(format!("self-supervised.{e}")))?;
            }
            if !matches!(self.sampler, SamplerConfig::Pk { .. }) {
                return bad(
                    "sampler.kind",
                    "two-view self-supervised training takes pk batches".into(),
                );
            }
        }
        if self.loss.takes_classes() && !matches!(self.sampler, SamplerConfig::Pk { .. }) {
            return bad(
                "sampler.kind",
                format!(
                    "the {} loss takes pk batches (classes × images)",
                    self.loss.kind()
                ),
            );
        }
        if !(self.optimizer.lr() > 0.0) || !self.optimizer.lr().is_finite() {
            return bad(
                "optimizer.lr",
                format!("{} must be positive", self.optimizer.lr()),
            );
        }
        if self.schedule.kind == ScheduleKind::Step && self.schedule.step_epochs == 0 {
            return bad("schedule.step-epochs", "must be at least 1".into());
        }
        if self.validation.every_epochs == 0 {
            return bad("validation.every-epochs", "must be at least 1".into());
        }
        if self.validation.pairs < 2 || self.validation.test_pairs < 2 {
            return bad(
                "validation.pairs",
                "need at least 2 validation and test pairs".into(),
            );
        }
        if self.checkpoint.keep_last == 0 {
            return bad("checkpoint.keep-last", "must be at least 1".into());
        }
        self.augment
            .validate()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(())
    }

    /// Total optimizer steps.
    pub fn total_steps(&self) -> u64 {
        (self.epochs * self.steps_per_epoch) as u64
    }
}
