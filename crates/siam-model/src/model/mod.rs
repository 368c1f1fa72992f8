//! `SiameseModel`: one shared encoder, a distance, an optional pair head, and the model file —
//! one `.safetensors` with the weights and JSON metadata that carries everything inference
//! needs (format version, encoder, input spec, distance, normalisation, threshold, summary).
//!
//! - this file: the types (`ModelConfig`, `ModelMeta`, `Comparison`), building the network,
//!   embedding (eval mode, test-time flip), distances, `compare`, `fingerprint`;
//! - `file.rs`: the model file — `save`/`to_bytes`, `load`/`from_bytes` with every check,
//!   `read_model_meta`, atomic writes;
//! - `inputs.rs`: image files in — preprocessing as training does it, what it changed
//!   (`input_adjustments`), the input check (`input_warnings`, `InputNotes`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::distance::{self, Distance};
use crate::encoder::{self, Encoder, EncoderConfig, InputSpec};
use crate::error::{ModelError, Result};
use crate::ood::{InputProfile, InputWarning, REFERENCE_TENSOR};

mod file;
mod inputs;

pub use file::{read_model_meta, write_atomic, write_atomic_with};
pub use inputs::InputNotes;

/// The model-file format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The safetensors metadata key holding siam's JSON.
pub const METADATA_KEY: &str = "siam";

/// What a model is made of.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ModelConfig {
    /// The shared encoder.
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// The images it takes.
    pub input: InputSpec,
    /// L2-normalise embeddings (they then lie on the unit sphere; Euclidean distances ≤ 2).
    #[serde(default)]
    pub normalize: bool,
    /// The distance pairs are compared with.
    #[serde(default)]
    pub distance: Distance,
    /// A learned head over |e₁ − e₂| giving a "same" logit (Koch et al. 2015), for BCE training.
    #[serde(default)]
    pub pair_head: bool,
    /// Test-time flip: in eval mode ([`SiameseModel::embed`]) each image and its mirror image
    /// are encoded and the two outputs averaged before L2 normalisation, so an image and its
    /// mirror get the same embedding. Twice the inference cost; training is unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_time_flip: bool,
}

/// Quantiles of validation distances, to say where a new distance falls.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DistanceQuantiles {
    /// Distances of same-class pairs at quantiles 0, 0.05, …, 1 (21 values).
    pub same: Vec<f32>,
    /// Distances of different-class pairs at the same quantiles.
    pub different: Vec<f32>,
}

/// The metadata stored in a model file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ModelMeta {
    /// Format version of the file.
    pub format_version: u32,
    /// What the model is made of.
    #[serde(flatten)]
    pub config: ModelConfig,
    /// Embedding dimension.
    pub embedding_dim: usize,
    /// Calibrated decision threshold: a pair is "same" when its distance is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Validation distance quantiles behind the threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_quantiles: Option<DistanceQuantiles>,
    /// Free-form training summary (recipe, metrics, timings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// What the training inputs looked like, for [`SiameseModel::input_warnings`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_profile: Option<InputProfile>,
}

/// The result of comparing two inputs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Distance between the two embeddings.
    pub distance: f32,
    /// The model's calibrated threshold, if any.
    pub threshold: Option<f32>,
    /// `distance <= threshold`, when there is a threshold.
    pub same: Option<bool>,
}

/// One thing preprocessing did to an input that does not match the model's input spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InputAdjustment {
    /// `resized`, `converted-to-gray`, `gray-to-rgb` or `alpha-dropped`.
    pub kind: &'static str,
    /// What was done, in words ("resized from 80×64 to the model's 28×28 ...").
    pub detail: String,
}

/// A Siamese network: one encoder shared by both inputs.
pub struct SiameseModel {
    encoder: Encoder,
    head: Option<Linear>,
    varmap: VarMap,
    meta: ModelMeta,
    device: Device,
    /// While set, training-mode forward passes keep the backbone frozen
    /// ([`SiameseModel::set_backbone_frozen`]).
    backbone_frozen: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SiameseModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiameseModel")
            .field("meta", &self.meta)
            .field("device", &self.device)
            .finish()
    }
}

/// Upper bounds that keep a malformed config (or model file) from asking for absurd memory.
fn check_sizes(config: &ModelConfig) -> Result<()> {
    let i = &config.input;
    let bad = |m: String| Err(ModelError::Config(m));
    if !(1..=4).contains(&i.channels) {
        return bad(format!(
            "input.channels is {}; siam takes 1 (gray) or 3 (RGB)",
            i.channels
        ));
    }
    if i.height > 4096 || i.width > 4096 {
        return bad(format!(
            "input {}x{} is larger than 4096x4096",
            i.height, i.width
        ));
    }
    let dim = config.encoder.embedding_dim();
    if dim > 65536 {
        return bad(format!("embedding-dim {dim} is larger than 65536"));
    }
    if let EncoderConfig::Convnet {
        channels, hidden, ..
    } = &config.encoder
        && (channels.len() > 12 || channels.iter().any(|&c| c > 4096) || *hidden > 65536)
    {
        return bad(format!(
            "convnet channels {channels:?} / hidden {hidden}: at most 12 blocks of 4096 channels and a 65536-wide head"
        ));
    }
    if let Some((_, r)) = config.encoder.resnet()
        && (r.widths.iter().any(|&c| c > 4096) || r.hidden > 65536)
    {
        return bad(format!(
            "resnet widths {:?} / hidden {}: at most 4096 channels a stage and a 65536-wide head",
            r.widths, r.hidden
        ));
    }
    match config.encoder.parameter_count(i) {
        Some(n) if n <= 1 << 31 => Ok(()),
        Some(n) => bad(format!(
            "the encoder would hold {n} values (more than 2^31)"
        )),
        None => bad(format!(
            "the {} encoder cannot be built for a {}x{}x{} input",
            config.encoder.kind(),
            i.channels,
            i.height,
            i.width
        )),
    }
}

fn build(config: &ModelConfig, device: &Device) -> Result<(Encoder, Option<Linear>, VarMap)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let input = &config.input;
    for (k, v) in [("mean", &input.mean), ("std", &input.std)] {
        if v.len() != 1 && v.len() != input.channels {
            return Err(ModelError::Config(format!(
                "input.{k} has {} values for {} channels",
                v.len(),
                input.channels
            )));
        }
    }
    if input.std.iter().any(|s| !(*s > 0.0)) {
        return Err(ModelError::Config(
            "input.std values must be positive".into(),
        ));
    }
    check_sizes(config)?;
    let encoder = config.encoder.build(input, vb.pp("encoder"))?;
    let head = if config.pair_head {
        Some(candle_nn::linear(
            config.encoder.embedding_dim(),
            1,
            vb.pp("head"),
        )?)
    } else {
        None
    };
    Ok((encoder, head, varmap))
}

impl SiameseModel {
    /// A new model with weights drawn from `seed` (PyTorch's default scheme).
    pub fn new(config: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let (encoder, head, varmap) = build(config, device)?;
        encoder::init_pytorch_default(&varmap, seed)?;
        Ok(Self {
            backbone_frozen: Default::default(),
            encoder,
            head,
            varmap,
            meta: ModelMeta {
                format_version: FORMAT_VERSION,
                config: config.clone(),
                embedding_dim: config.encoder.embedding_dim(),
                threshold: None,
                distance_quantiles: None,
                training: None,
                input_profile: None,
            },
            device: device.clone(),
        })
    }

    /// The metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The metadata, to set the threshold or the training summary before saving.
    pub fn meta_mut(&mut self) -> &mut ModelMeta {
        &mut self.meta
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.meta.config
    }

    /// Every variable (weights and BatchNorm statistics), for optimizers and checkpoints.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The trainable variables: all but BatchNorm running statistics, in name order.
    pub fn trainable_vars(&self) -> Vec<candle_core::Var> {
        let data = self.varmap.data().lock().expect("var map lock");
        let mut v: Vec<(&String, &candle_core::Var)> = data
            .iter()
            .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter().map(|(_, var)| var.clone()).collect()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The distance in use.
    pub fn distance_kind(&self) -> Distance {
        self.meta.config.distance
    }

    /// Restarts the dropout mask stream (the trainer calls this each step).
    pub fn reseed_dropout(&self, seed: u64) {
        self.encoder.reseed_dropout(seed);
    }

    /// Freezes (or unfreezes) the backbone for training-mode forward passes: everything but
    /// the projection head then runs in evaluation mode and detached (no gradient, BatchNorm
    /// statistics unchanged), as while fine-tuning a pretrained backbone's new head.
    pub fn set_backbone_frozen(&self, frozen: bool) {
        self.backbone_frozen
            .store(frozen, std::sync::atomic::Ordering::Relaxed);
    }

    /// Embeds an (N, C, H, W) batch; `train` selects BatchNorm batch statistics and dropout
    /// (for the head only while the backbone is frozen).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let frozen = self
            .backbone_frozen
            .load(std::sync::atomic::Ordering::Relaxed);
        let e = if train && frozen {
            self.encoder.forward_frozen_backbone(x)?
        } else {
            self.encoder.forward_t(x, train)?
        };
        if self.meta.config.normalize {
            distance::l2_normalize(&e)
        } else {
            Ok(e)
        }
    }

    /// The encoder's eval-mode output, detached, before normalisation: with
    /// [`ModelConfig::test_time_flip`], the mean of the image's and its mirror image's.
    fn encode_eval(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::on_pool(|| self.encode_eval_here(x))
    }

    fn encode_eval_here(&self, x: &Tensor) -> Result<Tensor> {
        let e = self.encoder.forward_inference(x)?;
        if !self.meta.config.test_time_flip {
            return Ok(e);
        }
        let w = x.dim(3)?;
        let rev: Vec<u32> = (0..w as u32).rev().collect();
        let mirrored = x.index_select(&Tensor::new(rev.as_slice(), x.device())?, 3)?;
        let m = self.encoder.forward_inference(&mirrored)?;
        Ok(((e + m)? * 0.5)?)
    }

    /// The backbone's features of an (N, C, H, W) batch in eval mode, before the projection
    /// head: a ResNet's pooled features (what torchvision's network gives with
    /// `fc = Identity()`). `None` for the other encoders.
    pub fn backbone_features(&self, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.encoder {
            Encoder::Resnet(r) => Ok(Some(r.features_inference(x)?)),
            _ => Ok(None),
        }
    }

    /// Embeds an (N, C, H, W) batch in eval mode: (N, D). An image's embedding does not
    /// depend on the rest of its batch.
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        let s = &self.meta.config.input;
        match x.dims() {
            [_, c, h, w] if (*c, *h, *w) == (s.channels, s.height, s.width) => {
                // Detached: the weights are variables, so candle would otherwise record the
                // graph and keep every intermediate activation alive as long as the embeddings
                // (about 1 MB per image for the convnet: 24 GB resident evaluating 10,000).
                let raw = self.encode_eval(x)?;
                Ok(if self.meta.config.normalize {
                    distance::l2_normalize(&raw)?
                } else {
                    raw
                })
            }
            d => Err(ModelError::Config(format!(
                "embed takes (N, {}, {}, {}) tensors, got {d:?}",
                s.channels, s.height, s.width
            ))),
        }
    }

    /// Embeds like [`embed`](Self::embed) and also returns the length of each encoder output
    /// before L2 normalisation (what the input check's `embedding-norm` measures).
    pub fn embed_with_norms(&self, x: &Tensor) -> Result<(Tensor, Vec<f32>)> {
        let s = &self.meta.config.input;
        if x.rank() != 4 || x.dims()[1..] != [s.channels, s.height, s.width] {
            return Err(ModelError::Config(format!(
                "embed takes (N, {}, {}, {}) tensors, got {:?}",
                s.channels,
                s.height,
                s.width,
                x.dims()
            )));
        }
        let raw = self.encode_eval(x)?;
        let norms: Vec<f32> = raw
            .sqr()?
            .sum(1)?
            .sqrt()?
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        let e = if self.meta.config.normalize {
            distance::l2_normalize(&raw)?
        } else {
            raw
        };
        Ok((e, norms))
    }

    /// How often each ReLU layer of the encoder fires on an (N, C, H, W) batch in eval mode:
    /// dead units (never positive on any image) are a sign of a learning rate that was too
    /// high. The set is probed 256 images at a time.
    pub fn relu_activity(&self, x: &Tensor) -> Result<Vec<crate::encoder::ReluActivity>> {
        Ok(self.encoder.relu_activity(x, 256)?)
    }

    /// Embeds in eval mode `chunk` images at a time, to bound memory on large sets.
    pub fn embed_chunked(&self, x: &Tensor, chunk: usize) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut parts = Vec::new();
        let mut i = 0;
        while i < n {
            let k = chunk.max(1).min(n - i);
            parts.push(self.embed(&x.narrow(0, i, k)?)?);
            i += k;
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros(
                (0, self.meta.embedding_dim),
                DType::F32,
                &self.device,
            )?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Row-wise distance between (N, D) embeddings under the model's distance.
    pub fn distance(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        self.meta.config.distance.rowwise(a, b)
    }

    /// "Same" logits of the pair head over |e₁ − e₂| (models built with `pair-head`).
    pub fn pair_logits(&self, e1: &Tensor, e2: &Tensor) -> candle_core::Result<Tensor> {
        match &self.head {
            Some(h) => h.forward(&(e1 - e2)?.abs()?)?.squeeze(1),
            None => {
                candle_core::bail!("this model has no pair head (build it with pair-head = true)")
            }
        }
    }

    /// Compares two preprocessed images, each (C, H, W) or (1, C, H, W).
    pub fn compare(&self, a: &Tensor, b: &Tensor) -> Result<Comparison> {
        let one = |t: &Tensor| -> Result<Tensor> {
            Ok(if t.rank() == 3 {
                t.unsqueeze(0)?
            } else {
                t.clone()
            })
        };
        let x = Tensor::cat(&[one(a)?, one(b)?], 0)?;
        let e = self.embed(&x)?;
        let d: Vec<f32> = self
            .distance(&e.narrow(0, 0, 1)?, &e.narrow(0, 1, 1)?)?
            .to_vec1()?;
        let threshold = self.meta.threshold;
        Ok(Comparison {
            distance: d[0],
            threshold,
            same: threshold.map(|t| d[0] <= t),
        })
    }

    /// A fingerprint of the weights: FNV-1a (64 bit) over every tensor's name, shape and
    /// values in name order, as 16 hex digits. Two models share it exactly when they compute
    /// the same embeddings, whatever their file name, threshold or training notes; galleries
    /// record it so that a search with another model is refused.
    pub fn fingerprint(&self) -> Result<String> {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(PRIME);
            }
        };
        let data = self.varmap.data().lock().expect("var map lock");
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let t = data[name].as_tensor();
            eat(name.as_bytes());
            for &d in t.dims() {
                eat(&(d as u64).to_le_bytes());
            }
            let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            for x in v {
                eat(&x.to_le_bytes());
            }
        }
        Ok(format!("{h:016x}"))
    }
}
