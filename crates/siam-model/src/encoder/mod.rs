//! Encoders: the shared CNN that maps an (N, C, H, W) batch to (N, D) embeddings.
//!
//! - `seed-cnn` ([`SeedCnn`], `seed_cnn.rs`): Conv(C→32, 5×5) ReLU MaxPool 2, Conv(32→64, 3×3)
//!   ReLU MaxPool 2, flatten, Linear(→ D). The flatten size follows from the input (64·5·5 =
//!   1600 at 28×28).
//! - `convnet` ([`ConvNet`], `convnet.rs`): blocks of two 3×3 convolutions with BatchNorm and
//!   ReLU, max-pooling between blocks, flatten or global average pooling, optional dropout, a
//!   projection head.
//! - `resnet18`, `resnet34` ([`ResNet`], [`resnet`]): torchvision's ResNet layout with
//!   BasicBlocks, the ImageNet stem or a small-input one, configurable stage widths, global
//!   average pooling and siam's head; torchvision and timm weights load into it
//!   ([`crate::pretrained`]).
//! - `batchnorm.rs`: the BatchNorm helpers the convnet and ResNet share (fold for evaluation,
//!   fused BatchNorm + ReLU in training, the running statistics' update).
//!
//! This file holds the configuration ([`EncoderConfig`], [`InputSpec`], [`Pooling`]), the
//! [`Encoder`] enum over the three, the ReLU activity probe `diagnose` reads
//! ([`Encoder::relu_activity`]) and PyTorch's default initialisation
//! ([`init_pytorch_default`]).

mod batchnorm;
mod convnet;
pub mod resnet;
mod seed_cnn;

pub use convnet::{ConvNet, SeededDropout};
pub use resnet::{ResNet, ResnetConfig, Stem};
pub use seed_cnn::SeedCnn;

use candle_core::{D, Module, ModuleT, Result, Tensor};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use convnet::linear;

/// Channels, height and width of the images a model takes, and how they are normalised.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct InputSpec {
    /// 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Per-channel mean subtracted after scaling pixels to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by.
    pub std: Vec<f32>,
}

impl InputSpec {
    /// Gray 28×28 with Fashion-MNIST's mean and std.
    pub fn fashion_mnist() -> Self {
        Self {
            channels: 1,
            height: 28,
            width: 28,
            mean: vec![0.286],
            std: vec![0.353],
        }
    }
}

/// Which encoder to build, and its settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum EncoderConfig {
    /// The two-convolution network the project grew from.
    SeedCnn {
        /// Embedding dimension (default 128).
        #[serde(default = "default_dim")]
        embedding_dim: usize,
    },
    /// A deeper configurable encoder with BatchNorm.
    Convnet {
        /// Output channels of each block (each block halves the resolution but the last).
        #[serde(default = "default_channels")]
        channels: Vec<usize>,
        /// Width of the hidden layer of the projection head (0: a single linear layer).
        #[serde(default = "default_hidden")]
        hidden: usize,
        /// Dropout probability before the head (0 = off).
        #[serde(default)]
        dropout: f32,
        /// Embedding dimension.
        #[serde(default = "default_dim")]
        embedding_dim: usize,
        /// How the last block's feature map reaches the head.
        #[serde(default)]
        pooling: Pooling,
    },
    /// torchvision's ResNet-18 (BasicBlocks 2, 2, 2, 2).
    Resnet18(ResnetConfig),
    /// torchvision's ResNet-34 (BasicBlocks 3, 4, 6, 3).
    Resnet34(ResnetConfig),
}

/// How the convnet's last feature map (C, H, W) becomes the head's input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The mean over positions: C values, blind to where a feature is.
    #[default]
    GlobalAverage,
    /// Every position: C·H·W values, keeping where each feature is (a shirt's sleeves, a
    /// collar); a larger head.
    Flatten,
}

impl Pooling {
    /// The head's input width for a final map of `channels` × `height` × `width`.
    pub fn features(self, channels: usize, height: usize, width: usize) -> Option<usize> {
        match self {
            Self::GlobalAverage => Some(channels),
            Self::Flatten => channels.checked_mul(height)?.checked_mul(width),
        }
    }
}

/// The side of the convnet's last feature map: the input halved once per block but the last.
fn convnet_side(side: usize, blocks: usize) -> usize {
    (1..blocks).fold(side, |s, _| s / 2)
}

pub(crate) fn default_dim() -> usize {
    128
}
fn default_channels() -> Vec<usize> {
    vec![32, 64, 128]
}
fn default_hidden() -> usize {
    256
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self::SeedCnn { embedding_dim: 128 }
    }
}

impl EncoderConfig {
    /// The embedding dimension.
    pub fn embedding_dim(&self) -> usize {
        match self {
            Self::SeedCnn { embedding_dim } | Self::Convnet { embedding_dim, .. } => *embedding_dim,
            Self::Resnet18(r) | Self::Resnet34(r) => r.embedding_dim,
        }
    }

    /// The ResNet settings and depth, for a ResNet.
    pub fn resnet(&self) -> Option<(usize, &ResnetConfig)> {
        match self {
            Self::Resnet18(r) => Some((18, r)),
            Self::Resnet34(r) => Some((34, r)),
            _ => None,
        }
    }

    /// The name used in configs and the model file.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SeedCnn { .. } => "seed-cnn",
            Self::Convnet { .. } => "convnet",
            Self::Resnet18(_) => "resnet18",
            Self::Resnet34(_) => "resnet34",
        }
    }

    /// Trainable and stored values (weights, biases, BatchNorm statistics) the encoder holds
    /// for `input`, computed without allocating; `None` when the shape cannot be built or the
    /// count overflows. Loading compares it with the file's size before allocating anything.
    pub fn parameter_count(&self, input: &InputSpec) -> Option<u64> {
        let c = input.channels as u64;
        let lin = |i: u64, o: u64| i.checked_mul(o)?.checked_add(o);
        match self {
            Self::SeedCnn { embedding_dim } => {
                let flat = SeedCnn::flatten_dim(input.height, input.width).ok()? as u64;
                let conv1 = c.checked_mul(32 * 25)?.checked_add(32)?;
                let conv2 = 32 * 64 * 9 + 64;
                lin(flat, *embedding_dim as u64)?
                    .checked_add(conv1)?
                    .checked_add(conv2)
            }
            Self::Convnet {
                channels,
                hidden,
                embedding_dim,
                pooling,
                ..
            } => {
                let mut total = 0u64;
                let mut cin = c;
                for &co in channels {
                    let co = co as u64;
                    let block = cin
                        .checked_mul(co)?
                        .checked_mul(9)?
                        .checked_add(co.checked_mul(co)?.checked_mul(9)?)?
                        .checked_add(co.checked_mul(8)?)?;
                    total = total.checked_add(block)?;
                    cin = co;
                }
                let side = |n| convnet_side(n, channels.len());
                let cin = pooling.features(
                    usize::try_from(cin).ok()?,
                    side(input.height),
                    side(input.width),
                )? as u64;
                let head = if *hidden > 0 {
                    lin(cin, *hidden as u64)?
                        .checked_add(lin(*hidden as u64, *embedding_dim as u64)?)?
                } else {
                    lin(cin, *embedding_dim as u64)?
                };
                total.checked_add(head)
            }
            Self::Resnet18(r) => r.parameter_count(18, input.channels),
            Self::Resnet34(r) => r.parameter_count(34, input.channels),
        }
    }

    /// Builds the encoder for `input` under `vb`.
    pub fn build(&self, input: &InputSpec, vb: VarBuilder<'_>) -> Result<Encoder> {
        if input.channels == 0 || input.height == 0 || input.width == 0 {
            candle_core::bail!(
                "input {}x{}x{} is empty",
                input.channels,
                input.height,
                input.width
            )
        }
        if self.embedding_dim() == 0 {
            candle_core::bail!("embedding-dim must be at least 1")
        }
        match self {
            Self::SeedCnn { embedding_dim } => {
                Ok(Encoder::SeedCnn(SeedCnn::new(input, *embedding_dim, vb)?))
            }
            Self::Convnet {
                channels,
                hidden,
                dropout,
                embedding_dim,
                pooling,
            } => Ok(Encoder::Convnet(ConvNet::new(
                input,
                channels,
                *hidden,
                *dropout,
                *embedding_dim,
                *pooling,
                vb,
            )?)),
            Self::Resnet18(r) => Ok(Encoder::Resnet(ResNet::new(18, r, input.channels, vb)?)),
            Self::Resnet34(r) => Ok(Encoder::Resnet(ResNet::new(34, r, input.channels, vb)?)),
        }
    }
}

/// Any encoder.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per model, never in bulk
pub enum Encoder {
    /// See [`SeedCnn`].
    SeedCnn(SeedCnn),
    /// See [`ConvNet`].
    Convnet(ConvNet),
    /// See [`ResNet`].
    Resnet(ResNet),
}

impl Encoder {
    /// The forward pass in training with the backbone frozen: everything before the
    /// projection head in evaluation mode (BatchNorm's running statistics, no dropout) and
    /// detached, so no gradient reaches it and its statistics stay; the head in training
    /// mode. The seed CNN has no separate head and is run as in training.
    pub fn forward_frozen_backbone(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::SeedCnn(m) => m.forward(x),
            Self::Convnet(m) => m.head_t(&m.features_t(x, false)?.detach(), true),
            Self::Resnet(m) => m.head(&m.features_inference(x)?),
        }
    }

    /// The forward pass in evaluation, detached: what embedding needs. A ResNet runs without
    /// building a graph ([`ResNet::features_inference`]); the others run in evaluation and are
    /// detached after.
    pub fn forward_inference(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Resnet(m) => Ok(m.head(&m.features_inference(x)?)?.detach()),
            _ => Ok(self.forward_t(x, false)?.detach()),
        }
    }

    /// Reseeds dropout masks (no-op for encoders without dropout).
    pub fn reseed_dropout(&self, seed: u64) {
        if let Self::Convnet(c) = self {
            c.dropout.reseed(seed);
        }
    }
}

impl ModuleT for Encoder {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::SeedCnn(m) => m.forward(x),
            Self::Convnet(m) => m.forward_t(x, train),
            Self::Resnet(m) => m.forward_t(x, train),
        }
    }
}

/// How often the units of one ReLU layer fire on a set of images (eval mode): a unit is a
/// channel of a convolution (firing when it is positive anywhere in the map) or a neuron of a
/// hidden layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReluActivity {
    /// The layer, by its variable prefix (`conv1`, `block0.bn2`, `head.hidden`).
    pub layer: String,
    /// Units in the layer.
    pub units: usize,
    /// Units that never fired on any of the images: dead, they pass no gradient.
    pub dead: usize,
    /// Mean share of the layer's activations that are positive.
    pub active_share: f64,
}

impl Encoder {
    /// Each ReLU layer's activity on an (N, C, H, W) set in eval mode, first layer first,
    /// computed with candle's plain operations (a probe, not the training path), `chunk`
    /// images at a time.
    pub fn relu_activity(&self, x: &Tensor, chunk: usize) -> Result<Vec<ReluActivity>> {
        let n = x.dim(0)?;
        // Per layer: name, per-unit maxima, positive activations, activations.
        let mut acc: Vec<(String, Vec<f32>, f64, f64)> = Vec::new();
        let mut i = 0;
        while i < n {
            let k = chunk.max(1).min(n - i);
            for (j, (name, y)) in self
                .relu_layers(&x.narrow(0, i, k)?)?
                .into_iter()
                .enumerate()
            {
                let per_unit = match y.rank() {
                    4 => y.transpose(0, 1)?.flatten_from(1)?,
                    2 => y.t()?,
                    r => candle_core::bail!("a ReLU layer of rank {r}"),
                };
                let max: Vec<f32> = per_unit
                    .max(1)?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1()?;
                let positive = f64::from(
                    y.gt(0.0)?
                        .to_dtype(candle_core::DType::F32)?
                        .sum_all()?
                        .to_scalar::<f32>()?,
                );
                let count = y.elem_count() as f64;
                match acc.get_mut(j) {
                    Some(a) => {
                        for (m, v) in a.1.iter_mut().zip(max) {
                            *m = m.max(v);
                        }
                        a.2 += positive;
                        a.3 += count;
                    }
                    None => acc.push((name, max, positive, count)),
                }
            }
            i += k;
        }
        Ok(acc
            .into_iter()
            .map(|(layer, max, positive, count)| ReluActivity {
                layer,
                units: max.len(),
                dead: max.iter().filter(|&&m| !(m > 0.0)).count(),
                active_share: if count > 0.0 { positive / count } else { 0.0 },
            })
            .collect())
    }

    /// Every ReLU layer's output on a batch in eval mode, with the layer's name.
    fn relu_layers(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let x = x.detach();
        let mut out = Vec::new();
        match self {
            Self::SeedCnn(m) => {
                let y = m.conv1.forward(&x)?.relu()?;
                let y2 = m.conv2.forward(&y.max_pool2d(2)?)?.relu()?;
                out.push(("conv1".to_string(), y));
                out.push(("conv2".to_string(), y2));
            }
            Self::Convnet(m) => {
                let last = m.blocks.len() - 1;
                let mut y = x;
                for (i, b) in m.blocks.iter().enumerate() {
                    let a = b.b1.forward_t(&b.c1.forward(&y)?, false)?.relu()?;
                    y = b.b2.forward_t(&b.c2.forward(&a)?, false)?.relu()?;
                    out.push((format!("block{i}.bn1"), a));
                    out.push((format!("block{i}.bn2"), y.clone()));
                    if i < last {
                        y = y.max_pool2d(2)?;
                    }
                }
                if let Some(h) = &m.hidden {
                    let f = match m.pooling {
                        Pooling::GlobalAverage => y.mean(D::Minus1)?.mean(D::Minus1)?,
                        Pooling::Flatten => y.flatten_from(1)?,
                    };
                    out.push(("head.hidden".to_string(), linear(h, &f)?.relu()?));
                }
            }
            Self::Resnet(m) => out = m.relu_layers(&x)?,
        }
        Ok(out)
    }
}

/// PyTorch's default initialisation drawn from our seeded RNG, applied to every variable of a
/// `VarMap` in name order: conv and linear weights and biases `U(±1/√fan_in)`; BatchNorm
/// weight 1, bias 0, running mean 0, running variance 1.
pub fn init_pytorch_default(varmap: &candle_nn::VarMap, seed: u64) -> Result<()> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("var map poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let is_bn = |prefix: &str| data.contains_key(&format!("{prefix}.running_mean"));
    for name in names {
        let var = &data[name];
        let (prefix, leaf) = name.rsplit_once('.').unwrap_or(("", name.as_str()));
        let shape = var.shape().clone();
        let dev = var.device().clone();
        let konst = |v: f32| Tensor::full(v, shape.clone(), &dev)?.to_dtype(var.dtype());
        let value = match leaf {
            "running_mean" => konst(0.0)?,
            "running_var" => konst(1.0)?,
            "weight" if is_bn(prefix) => konst(1.0)?,
            "bias" if is_bn(prefix) => konst(0.0)?,
            "weight" | "bias" => {
                let w = data.get(&format!("{prefix}.weight")).ok_or_else(|| {
                    candle_core::Error::Msg(format!("{name} has no sibling weight"))
                })?;
                let dims = w.dims();
                let fan_in: usize = dims[1..].iter().product();
                let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
                let vals: Vec<f32> = (0..shape.elem_count())
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                Tensor::from_vec(vals, shape.clone(), &dev)?.to_dtype(var.dtype())?
            }
            other => candle_core::bail!("no initialisation rule for variable {name} ({other})"),
        };
        var.set(&value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
