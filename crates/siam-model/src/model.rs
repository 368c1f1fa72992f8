//! `SiameseModel`: one shared encoder, a distance, an optional pair head, and the model file —
//! one `.safetensors` with the weights and JSON metadata that carries everything inference
//! needs (format version, encoder, input spec, distance, normalisation, threshold, summary).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device, Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::distance::{self, Distance};
use crate::encoder::{self, Encoder, EncoderConfig, InputSpec};
use crate::error::{ModelError, Result};
use crate::ood::{InputProfile, InputWarning, REFERENCE_TENSOR};

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

    /// Embeds an (N, C, H, W) batch; `train` selects BatchNorm batch statistics and dropout.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let e = self.encoder.forward_t(x, train)?;
        if self.meta.config.normalize {
            distance::l2_normalize(&e)
        } else {
            Ok(e)
        }
    }

    /// The encoder's eval-mode output, detached, before normalisation: with
    /// [`ModelConfig::test_time_flip`], the mean of the image's and its mirror image's.
    fn encode_eval(&self, x: &Tensor) -> Result<Tensor> {
        let e = self.encoder.forward_t(x, false)?.detach();
        if !self.meta.config.test_time_flip {
            return Ok(e);
        }
        let w = x.dim(3)?;
        let rev: Vec<u32> = (0..w as u32).rev().collect();
        let mirrored = x.index_select(&Tensor::new(rev.as_slice(), x.device())?, 3)?;
        let m = self.encoder.forward_t(&mirrored, false)?.detach();
        Ok(((e + m)? * 0.5)?)
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

    /// Writes the model as one safetensors file with metadata, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self
            .to_bytes()
            .map_err(|e| ModelError::file(path, format!("cannot serialise: {e}")))?;
        write_atomic(path, &bytes).map_err(|e| ModelError::file(path, format!("cannot write: {e}")))
    }

    /// The bytes of the model file [`SiameseModel::save`] writes (for [`SiameseModel::from_bytes`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| ModelError::Config(format!("metadata: {e}")))?;
        let mut tensors: BTreeMap<String, Tensor> = {
            let data = self.varmap.data().lock().expect("var map lock");
            data.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().to_device(&Device::Cpu)))
                .map(|(k, t)| t.map(|t| (k, t)))
                .collect::<candle_core::Result<_>>()?
        };
        if let Some(p) = self
            .meta
            .input_profile
            .as_ref()
            .filter(|p| p.reference_count > 0)
        {
            tensors.insert(REFERENCE_TENSOR.into(), p.reference_tensor(&Device::Cpu)?);
        }
        let meta = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| ModelError::Config(format!("cannot serialise: {e}")))
    }

    /// Loads a model file, checking the metadata, every tensor's presence and shape, and that
    /// every weight is finite.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::load_impl(path.as_ref(), device, true)?.0)
    }

    /// Loads a model file like [`SiameseModel::load`] but accepts NaN or infinite weights,
    /// returning the names of the tensors that hold them (for diagnosis; never for inference).
    pub fn load_allowing_non_finite(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        Self::load_impl(path.as_ref(), device, false)
    }

    /// Loads a model from the bytes of a model file (for instance `include_bytes!`), with
    /// every check of [`SiameseModel::load`]; `name` stands for the file in error messages.
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::from_bytes_impl(bytes, name.as_ref(), device, true)?.0)
    }

    fn load_impl(path: &Path, device: &Device, strict: bool) -> Result<(Self, Vec<String>)> {
        let bytes =
            std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        Self::from_bytes_impl(&bytes, path, device, strict)
    }

    fn from_bytes_impl(
        bytes: &[u8],
        path: &Path,
        device: &Device,
        strict: bool,
    ) -> Result<(Self, Vec<String>)> {
        let mut meta = read_meta(path, bytes)?;
        check_sizes(&meta.config).map_err(|e| ModelError::file(path, e.to_string()))?;
        // Every value must be in the file (2 bytes each at the least, f16): a header that
        // declares a huge network is refused before anything is allocated for it.
        let declared = meta
            .config
            .encoder
            .parameter_count(&meta.config.input)
            .unwrap_or(u64::MAX);
        if declared.saturating_mul(2) > bytes.len() as u64 {
            return Err(ModelError::file(
                path,
                format!(
                    "the metadata declares a {} encoder with {declared} values but the file has {} bytes: truncated or not this model",
                    meta.config.encoder.kind(),
                    bytes.len()
                ),
            ));
        }
        let (encoder, head, varmap) =
            build(&meta.config, device).map_err(|e| ModelError::file(path, e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::file(path, format!("not a safetensors file: {e}")))?;
        let mut non_finite = Vec::new();
        {
            let data = varmap.data().lock().expect("var map lock");
            let mut problems = Vec::new();
            let mut expected: Vec<&String> = data.keys().collect();
            expected.sort();
            for name in &expected {
                match st.tensor(name) {
                    Err(_) => problems.push(format!("missing tensor {name}")),
                    Ok(view) => {
                        let want = data[*name].dims();
                        if view.shape() != want {
                            problems.push(format!(
                                "tensor {name} has shape {:?}, the model needs {want:?}",
                                view.shape()
                            ));
                        }
                    }
                }
            }
            if let Some(p) = meta.input_profile.as_mut() {
                match read_reference(&st, p, meta.embedding_dim) {
                    Ok(r) => p.reference = r,
                    Err(e) => problems.push(e),
                }
            }
            let mut extra: Vec<String> = st
                .names()
                .into_iter()
                .filter(|n| !data.contains_key(*n))
                .filter(|n| !(*n == REFERENCE_TENSOR && meta.input_profile.is_some()))
                .map(String::from)
                .collect();
            extra.sort();
            problems.extend(extra.into_iter().map(|n| format!("unexpected tensor {n}")));
            if !problems.is_empty() {
                return Err(ModelError::file(path, problems.join("; ")));
            }
            let loaded = candle_core::safetensors::load_buffer(bytes, device)
                .map_err(|e| ModelError::file(path, format!("cannot read tensors: {e}")))?;
            for name in expected {
                let t = loaded[name].to_dtype(DType::F32)?;
                let finite: f32 = t.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar()?;
                if !finite.is_finite() {
                    if !strict {
                        non_finite.push(name.clone());
                        data[name].set(&t)?;
                        continue;
                    }
                    return Err(ModelError::file(
                        path,
                        format!("tensor {name} holds NaN or infinite values"),
                    ));
                }
                data[name].set(&t)?;
            }
        }
        Ok((
            Self {
                encoder,
                head,
                varmap,
                meta,
                device: device.clone(),
            },
            non_finite,
        ))
    }

    /// What [`preprocess`](Self::preprocess) does to `img` beyond scaling and normalising,
    /// when the image does not match the model's input spec: a resize, colour dropped to
    /// gray, gray copied to three channels, an alpha channel discarded. Empty for an image
    /// the model takes as it is. The text says what was done, so that a surprising distance
    /// can be traced to its input.
    #[cfg(feature = "image")]
    pub fn input_adjustments(&self, img: &image::DynamicImage) -> Vec<InputAdjustment> {
        use image::ColorType as C;
        let s = &self.meta.config.input;
        let mut out = Vec::new();
        let (w, h) = (img.width() as usize, img.height() as usize);
        if (h, w) != (s.height, s.width) {
            out.push(InputAdjustment {
                kind: "resized",
                detail: format!(
                    "resized from {w}×{h} to the model's {}×{}{}",
                    s.width,
                    s.height,
                    if w * s.height != h * s.width {
                        " (aspect ratio not kept)"
                    } else {
                        ""
                    }
                ),
            });
        }
        let ct = img.color();
        if ct.has_alpha() {
            out.push(InputAdjustment {
                kind: "alpha-dropped",
                detail: "its alpha channel was discarded".into(),
            });
        }
        let colour = matches!(
            ct,
            C::Rgb8 | C::Rgba8 | C::Rgb16 | C::Rgba16 | C::Rgb32F | C::Rgba32F
        );
        if s.channels == 1 && colour {
            // Only a loss when the image has colour: an RGB file of gray pixels is gray.
            let rgb = img.to_rgb8();
            let tinted = rgb.pixels().any(|p| p[0] != p[1] || p[1] != p[2]);
            if tinted {
                out.push(InputAdjustment {
                    kind: "converted-to-gray",
                    detail:
                        "a colour image, converted to gray for a gray model (its colour is lost)"
                            .into(),
                });
            }
        } else if s.channels == 3 && !colour {
            out.push(InputAdjustment {
                kind: "gray-to-rgb",
                detail: "a gray image, copied to three channels for a colour model".into(),
            });
        }
        out
    }

    /// Converts a decoded image into a (1, C, H, W) tensor exactly as in training: resize to
    /// the input size (triangle filter), gray or RGB, scale to [0, 1], normalise.
    /// [`input_adjustments`](Self::input_adjustments) says what of this an image needed.
    #[cfg(feature = "image")]
    pub fn preprocess(&self, img: &image::DynamicImage) -> Result<Tensor> {
        let s = &self.meta.config.input;
        let img = if (img.height() as usize, img.width() as usize) != (s.height, s.width) {
            img.resize_exact(
                s.width as u32,
                s.height as u32,
                image::imageops::FilterType::Triangle,
            )
        } else {
            img.clone()
        };
        let plane = s.height * s.width;
        let mut v = vec![0f32; s.channels * plane];
        match s.channels {
            1 => {
                for (o, p) in v.iter_mut().zip(img.to_luma8().into_raw()) {
                    *o = f32::from(p) / 255.0;
                }
            }
            3 => {
                for (i, px) in img.to_rgb8().into_raw().chunks_exact(3).enumerate() {
                    for c in 0..3 {
                        v[c * plane + i] = f32::from(px[c]) / 255.0;
                    }
                }
            }
            c => {
                return Err(ModelError::Config(format!(
                    "cannot preprocess images for {c} channels"
                )));
            }
        }
        for c in 0..s.channels {
            let m = s.mean[if s.mean.len() == 1 { 0 } else { c }];
            let sd = s.std[if s.std.len() == 1 { 0 } else { c }];
            for x in &mut v[c * plane..(c + 1) * plane] {
                *x = (*x - m) / sd;
            }
        }
        Ok(Tensor::from_vec(
            v,
            (1, s.channels, s.height, s.width),
            &self.device,
        )?)
    }

    /// Decodes and preprocesses an image file into a (1, C, H, W) tensor.
    #[cfg(feature = "image")]
    pub fn load_image(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.preprocess(&open_image(path.as_ref())?)
    }

    /// Embeds a decoded image: (1, D).
    #[cfg(feature = "image")]
    pub fn embed_image(&self, img: &image::DynamicImage) -> Result<Tensor> {
        self.embed(&self.preprocess(img)?)
    }

    /// Embeds an image file: (1, D).
    #[cfg(feature = "image")]
    pub fn embed_path(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        self.embed(&self.load_image(path)?)
    }

    /// Compares two image files.
    #[cfg(feature = "image")]
    pub fn compare_paths(&self, a: impl AsRef<Path>, b: impl AsRef<Path>) -> Result<Comparison> {
        self.compare(&self.load_image(a)?, &self.load_image(b)?)
    }

    /// Compares two image files, with what preprocessing did to each
    /// ([`input_adjustments`](Self::input_adjustments)) and how each is unlike the training
    /// data ([`input_warnings`](Self::input_warnings)).
    #[cfg(feature = "image")]
    pub fn compare_paths_noted(
        &self,
        a: impl AsRef<Path>,
        b: impl AsRef<Path>,
    ) -> Result<(Comparison, [InputNotes; 2])> {
        let (ia, ib) = (open_image(a.as_ref())?, open_image(b.as_ref())?);
        let (xa, xb) = (self.preprocess(&ia)?, self.preprocess(&ib)?);
        let c = self.compare(&xa, &xb)?;
        let mut warnings = self
            .input_warnings(&Tensor::cat(&[xa, xb], 0)?)?
            .into_iter();
        let mut notes = |img: &image::DynamicImage| InputNotes {
            adjustments: self.input_adjustments(img),
            warnings: warnings.next().unwrap_or_default(),
        };
        Ok((c, [notes(&ia), notes(&ib)]))
    }

    /// How each preprocessed input of an (N, C, H, W) batch is unlike the images the model
    /// was trained on, by the [input profile](crate::ood) stored at training time: one list
    /// per input, empty when it looks familiar or when the model has no profile.
    pub fn input_warnings(&self, x: &Tensor) -> Result<Vec<Vec<InputWarning>>> {
        let Some(p) = &self.meta.input_profile else {
            return Ok(vec![Vec::new(); x.dim(0)?]);
        };
        let (e, norms) = self.embed_with_norms(x)?;
        let stats = crate::ood::image_stats(x, &self.meta.config.input, &norms)?;
        let near = p.nearest(&e, self.distance_kind())?;
        Ok(stats.iter().zip(near).map(|(s, d)| p.check(s, d)).collect())
    }
}

/// What [`SiameseModel::compare_paths_noted`] says about one input.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct InputNotes {
    /// What preprocessing did to it.
    pub adjustments: Vec<InputAdjustment>,
    /// How it is unlike the training data.
    pub warnings: Vec<InputWarning>,
}

/// The reference embeddings of an input profile, checked against what the metadata says.
fn read_reference(
    st: &safetensors::SafeTensors<'_>,
    p: &InputProfile,
    dim: usize,
) -> std::result::Result<Vec<f32>, String> {
    if p.reference_count == 0 {
        return Ok(Vec::new());
    }
    let view = st
        .tensor(REFERENCE_TENSOR)
        .map_err(|_| format!("the input profile declares {} reference embeddings but there is no tensor {REFERENCE_TENSOR}", p.reference_count))?;
    if view.shape() != [p.reference_count, dim] || view.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "tensor {REFERENCE_TENSOR} is {:?} {:?}, the input profile needs F32 [{}, {dim}]",
            view.dtype(),
            view.shape(),
            p.reference_count
        ));
    }
    let v: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(format!(
            "tensor {REFERENCE_TENSOR} holds NaN or infinite values"
        ));
    }
    Ok(v)
}

/// Decodes an image file; the error names it.
#[cfg(feature = "image")]
fn open_image(path: &Path) -> Result<image::DynamicImage> {
    image::open(path).map_err(|e| ModelError::Image {
        path: path.into(),
        msg: format!("cannot decode image: {e}"),
    })
}

/// Reads and checks the metadata of a model file's bytes.
fn read_meta(path: &Path, bytes: &[u8]) -> Result<ModelMeta> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::file(path, format!("not a safetensors file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| ModelError::file(path, "a safetensors file without siam metadata: not a siam model (train one with `siam train`)"))?;
    let version: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ModelError::file(path, format!("siam metadata is not JSON: {e}")))?;
    let v = version
        .get("format-version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ModelError::file(path, "siam metadata has no format-version"))?;
    if v > u64::from(FORMAT_VERSION) {
        return Err(ModelError::file(
            path,
            format!(
                "model format version {v} is newer than this build reads ({FORMAT_VERSION}); upgrade siam"
            ),
        ));
    }
    serde_json::from_value(version)
        .map_err(|e| ModelError::file(path, format!("invalid siam metadata: {e}")))
}

/// Reads only the metadata of a model file (fast; no weights are loaded).
pub fn read_model_meta(path: impl AsRef<Path>) -> Result<ModelMeta> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    read_meta(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` through a temporary file in the same folder, fsync and rename: `write`
/// streams the contents (buffered); on any error the temporary file is removed and `path`
/// is left as it was.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let r = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        write(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced (where it can be opened).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
