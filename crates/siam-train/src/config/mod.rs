//! `TrainConfig`: everything a run needs, as TOML (kebab-case, unknown keys rejected), with
//! named presets. It is resolved once and written to the run folder.
//!
//! The map: this file holds the types and their TOML form; `presets.rs` the built-in recipes;
//! [`validate`](TrainConfig::validate) (in `validate.rs`) the checks of values that parse
//! but cannot work; `overlay.rs` how a preset, a partial file and `key=value` overrides
//! combine into one config.

mod overlay;
mod presets;
mod validate;

pub use overlay::{ConfigSource, resolve};

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
    /// A contrastive term over every pair of the P×K batch added to a batch loss (CosFace,
    /// ArcFace, multi-similarity, ...); absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contrastive_term: Option<ContrastiveTerm>,
    /// The uniformity term (Wang & Isola) over the P×K batch's embeddings added to the loss;
    /// absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uniformity_term: Option<UniformityTerm>,
    /// Fine-tuning a backbone (a pretrained ResNet, say): its own learning-rate factor and
    /// frozen first epochs; absent: the whole network learns alike from the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<Finetune>,
}

/// `[finetune]`: the backbone (every encoder variable but the projection head `head.*`)
/// learns at `backbone-lr-scale` times the learning rate, and is frozen for the first
/// `freeze-backbone-epochs` epochs: not updated, its BatchNorm in evaluation mode (running
/// statistics kept), only the head (and a loss's proxies) learning. The usual recipe for a
/// pretrained backbone: a few frozen epochs so the new head stops sending noise into it, then
/// the backbone at a tenth of the head's rate. A factor above 1 does the converse: the head and
/// the proxies learn slower than the encoder. The `default` recipe uses 4 with `lr = 2.5e-4`
/// (the encoder at 1e-3, the head at 2.5e-4): at the encoder's rate its flattened head, 6,272
/// non-negative inputs per unit, lost about 30 % of its hidden units for good in the first
/// epoch (docs/BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Finetune {
    /// The backbone's learning-rate factor, in (0, 16] (default 1).
    #[serde(default = "unit_scale")]
    pub backbone_lr_scale: f64,
    /// Epochs at the start with the backbone frozen (default 0), fewer than `epochs`.
    #[serde(default)]
    pub freeze_backbone_epochs: usize,
}

fn unit_scale() -> f64 {
    1.0
}

impl Finetune {
    /// True for the backbone's variables (named as the model names them).
    pub fn is_backbone(name: &str) -> bool {
        siam_model::pretrained::is_backbone(name)
    }
}

/// `[contrastive-term]`: the supervised loss becomes `loss + weight·contrastive`, the
/// contrastive loss (Hadsell et al., `same·d² + (1−same)·max(0, m−d)²`, positives and negatives
/// weighing one half each) over every pair of the P×K batch. A proxy loss such as CosFace
/// ranks images against class centres; the term ranks the pairs themselves, which is what
/// verification (ROC-AUC, a threshold on the distance) measures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContrastiveTerm {
    /// The term's weight, positive.
    pub weight: f64,
    /// The margin m (default 1, for L2-normalised embeddings).
    #[serde(default = "unit_margin")]
    pub margin: f64,
    /// Same-class pairs are only pulled in beyond this distance (default 0: all the way), so
    /// that a class keeps some spread instead of collapsing to a point.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pos_margin: f64,
}

fn unit_margin() -> f64 {
    1.0
}

/// `[uniformity-term]`: the loss becomes `loss + weight·log mean_{i≠j} e^{−t‖zᵢ − zⱼ‖²}` over
/// the P×K batch's L2-normalised embeddings (Wang & Isola 2020; `siam_model::loss::uniformity`).
/// It takes no labels and pushes the batch to spread over the sphere: the supervised loss gathers
/// each class, the term keeps the directions the training classes do not need, which is what
/// classes never seen in training are told apart by (docs/BENCHMARKS.md).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UniformityTerm {
    /// The term's weight, positive.
    pub weight: f64,
    /// The kernel's t (default 2, the paper's).
    #[serde(default = "uniformity_t")]
    pub t: f64,
}

fn uniformity_t() -> f64 {
    2.0
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
    /// The supervised loss also over the second views (with their images' labels): the batch's
    /// 2·P·K embeddings all train the classes, so a P×K batch of half the size costs what a
    /// full one without the term did (default false: the first views alone).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supervise_both_views: bool,
    /// The share of each class's images in a P×K batch that get a second view, in (0, 1]
    /// (default 1: every image). Below 1 a batch keeps more distinct images for the same
    /// embeddings a step: 8 × 12 images with a third seen twice embed 128, as 8 × 8 with
    /// every image twice do. The other images are NT-Xent's negatives only.
    #[serde(default = "unit_scale", skip_serializing_if = "is_one")]
    pub view_fraction: f64,
    /// The NT-Xent term on a projection of its own (SimCLR's head: embedding → ReLU layer of the
    /// embedding's width → this many outputs), trained with the run and kept in checkpoints
    /// like CosFace's proxies, not in the model file; the embedding itself then takes only the
    /// supervised loss directly (default 0: NT-Xent on the embedding).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub projection_dim: usize,
    /// The second view's augmentation (default: the run's `[augment]` plus a resized crop of
    /// 35–100 % of the area, noise σ = 0.05 and erasing with probability 0.25).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<AugmentConfig>,
}

/// Serde's test for fractions left out of a written config when at their default of one.
fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// Serde's test for keys left out of a written config when at their default of zero.
fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
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
    /// Embed each image and its mirror image and average them at evaluation and inference
    /// (`siam_model::ModelConfig::test_time_flip`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_time_flip: bool,
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
        /// The margin m (default 1.0, a start for normalised embeddings, whose distances lie
        /// in [0, 2]).
        #[serde(default = "contrastive_margin")]
        margin: f64,
        /// Same pairs are only pulled in beyond this distance.
        #[serde(default)]
        pos_margin: f64,
    },
    /// `max(0, d(a,p) − d(a,n) + m)`; with P×K batches, mined online.
    Triplet {
        /// The margin m (default 0.2, for normalised embeddings).
        #[serde(default = "triplet_margin")]
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
fn contrastive_margin() -> f64 {
    1.0
}
fn triplet_margin() -> f64 {
    0.2
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
pub use presets::PRESETS;

impl TrainConfig {
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

    /// Sets `model.encoder.pretrained`: a torchvision or timm state dict (safetensors) that a
    /// ResNet encoder's backbone starts from. An error for the other encoders.
    pub fn set_pretrained(&mut self, path: &str) -> Result<()> {
        match &mut self.model.encoder {
            siam_model::EncoderConfig::Resnet18(r) | siam_model::EncoderConfig::Resnet34(r) => {
                r.pretrained = Some(path.to_string());
                Ok(())
            }
            other => Err(TrainError::Config(format!(
                "--pretrained loads a resnet18 or resnet34 backbone; model.encoder.kind is {} (use --preset resnet, or set model.encoder.kind)",
                other.kind()
            ))),
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

    /// Total optimizer steps.
    pub fn total_steps(&self) -> u64 {
        (self.epochs * self.steps_per_epoch) as u64
    }
}
