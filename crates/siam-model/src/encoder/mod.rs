//! Encoders: the shared CNN that maps an (N, C, H, W) batch to (N, D) embeddings.
//!
//! - `seed-cnn`: Conv(C→32, 5×5) ReLU MaxPool 2, Conv(32→64, 3×3) ReLU MaxPool 2, flatten,
//!   Linear(→ D). The flatten size follows from the input (64·5·5 = 1600 at 28×28).
//! - `convnet`: blocks of two 3×3 convolutions with BatchNorm and ReLU, max-pooling between
//!   blocks, global average pooling, optional dropout, a projection head.
//! - `resnet18`, `resnet34`: torchvision's ResNet layout with BasicBlocks, the ImageNet stem or
//!   a small-input one, configurable stage widths, global average pooling and siam's head
//!   ([`resnet`]); torchvision and timm weights load into it ([`crate::pretrained`]).

pub mod resnet;

pub use resnet::{ResNet, ResnetConfig, Stem};

use std::sync::Mutex;

use candle_core::{D, Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

/// Output side of a valid (unpadded) convolution followed by 2×2 max-pooling.
fn conv_pool(side: usize, kernel: usize) -> Result<usize> {
    if side < kernel + 1 {
        candle_core::bail!(
            "input side {side} is too small for a {kernel}×{kernel} convolution and 2×2 pooling"
        )
    }
    let conv = side - kernel + 1;
    Ok(conv / 2)
}

/// The seed network.
#[derive(Debug)]
pub struct SeedCnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
    flatten_dim: usize,
}

impl SeedCnn {
    /// Flatten size after the two conv/pool stages for an H×W input: 64·h'·w'.
    pub fn flatten_dim(height: usize, width: usize) -> Result<usize> {
        let h = conv_pool(conv_pool(height, 5)?, 3)?;
        let w = conv_pool(conv_pool(width, 5)?, 3)?;
        Ok(64 * h * w)
    }

    fn new(input: &InputSpec, dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let flatten_dim = Self::flatten_dim(input.height, input.width)?;
        let cfg = Conv2dConfig::default();
        Ok(Self {
            conv1: candle_nn::conv2d(input.channels, 32, 5, cfg, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(32, 64, 3, cfg, vb.pp("conv2"))?,
            fc: candle_nn::linear(flatten_dim, dim, vb.pp("fc"))?,
            flatten_dim,
        })
    }

    /// The flatten size of this instance.
    pub fn flatten_size(&self) -> usize {
        self.flatten_dim
    }
}

impl Module for SeedCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // siam's CPU kernels (candle's own ops elsewhere); the images need no gradient.
        // Each stage is convolution, bias, ReLU and 2×2 max-pooling fused into one operation.
        let stage = |c: &Conv2d, x: &Tensor, input_grad: bool| {
            crate::kernels::conv2d_relu_max_pool2(x, c.weight(), c.bias(), 0, input_grad)
        };
        let x = stage(&self.conv1, x, false)?;
        let x = stage(&self.conv2, &x, true)?;
        self.fc.forward(&x.flatten_from(1)?)
    }
}

/// Dropout whose masks come from a seeded ChaCha stream (candle's CPU RNG cannot be seeded).
#[derive(Debug)]
pub struct SeededDropout {
    p: f32,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededDropout {
    /// Dropout with probability `p`.
    pub fn new(p: f32) -> Self {
        Self {
            p,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
        }
    }

    /// Restarts the mask stream (the trainer reseeds it every step).
    pub fn reseed(&self, seed: u64) {
        if let Ok(mut r) = self.rng.lock() {
            *r = ChaCha8Rng::seed_from_u64(seed);
        }
    }
}

impl ModuleT for SeededDropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p <= 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.p;
        let mask: Vec<f32> = {
            let mut rng = self
                .rng
                .lock()
                .map_err(|_| candle_core::Error::Msg("dropout RNG poisoned".into()))?;
            (0..x.elem_count())
                .map(|_| {
                    if rng.random::<f32>() < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// Two 3×3 convolutions with BatchNorm and ReLU.
#[derive(Debug)]
struct Block {
    c1: Conv2d,
    b1: BatchNorm,
    c2: Conv2d,
    b2: BatchNorm,
    /// The first block reads the images, whose gradient nobody needs.
    first: bool,
}

impl Block {
    fn new(cin: usize, cout: usize, first: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let bn = BatchNormConfig::default();
        Ok(Self {
            c1: candle_nn::conv2d_no_bias(cin, cout, 3, cfg, vb.pp("conv1"))?,
            b1: candle_nn::batch_norm(cout, bn, vb.pp("bn1"))?,
            c2: candle_nn::conv2d_no_bias(cout, cout, 3, cfg, vb.pp("conv2"))?,
            b2: candle_nn::batch_norm(cout, bn, vb.pp("bn2"))?,
            first,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let conv = |c: &Conv2d, x: &Tensor, input_grad: bool| {
            crate::kernels::conv2d(x, c.weight(), c.bias(), 1, input_grad)
        };
        let x = bn_relu(&self.b1, &conv(&self.c1, x, !self.first)?, train)?;
        bn_relu(&self.b2, &conv(&self.c2, &x, true)?, train)
    }
}

impl Block {
    /// The block as one fused CPU operation on channel-last (N, H, W, C) activations, ending
    /// with 2×2 max-pooling when `pool`; the output is channel-last too.
    fn forward_fused(&self, x: &Tensor, train: bool, pool: bool) -> Result<Tensor> {
        let (cout, cin) = (self.c1.weight().dim(0)?, self.c1.weight().dim(1)?);
        // Training: γ and β; evaluation: the running statistics folded in.
        let bn_params = |bn: &BatchNorm| -> Result<(Tensor, Tensor)> {
            if train {
                bn_gamma_beta(bn)
            } else {
                bn_folded(bn)
            }
        };
        let (p1, q1) = bn_params(&self.b1)?;
        let (p2, q2) = bn_params(&self.b2)?;
        let params = Tensor::cat(
            &[
                &self.c1.weight().flatten_all()?,
                &p1,
                &q1,
                &self.c2.weight().flatten_all()?,
                &p2,
                &q2,
            ],
            0,
        )?;
        let eps = train.then(|| self.b1.eps());
        let (y, stats) =
            crate::kernels::conv_block(x, &params, (cin, cout), pool, !self.first, eps)?;
        if let Some([(m1, v1), (m2, v2)]) = stats {
            let (n, h, w, _) = x.dims4()?;
            let count = (n * h * w) as f64;
            let dev = x.device();
            update_running(
                &self.b1,
                &Tensor::new(m1, dev)?,
                &Tensor::new(v1, dev)?,
                count,
            )?;
            update_running(
                &self.b2,
                &Tensor::new(m2, dev)?,
                &Tensor::new(v2, dev)?,
                count,
            )?;
        }
        Ok(y)
    }
}

/// BatchNorm's γ and β (ones and zeros, shaped as its running mean, for a BatchNorm without
/// them).
fn bn_gamma_beta(bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    Ok(match bn.weight_and_bias() {
        Some((g, b)) => (g.clone(), b.clone()),
        None => {
            let mean = bn.running_mean();
            (mean.ones_like()?, mean.zeros_like()?)
        }
    })
}

/// BatchNorm in evaluation as a per-channel scale and shift, `s = γ/√(var + ε)` and
/// `t = β − mean·s` from the running statistics (γ and β keep their gradients).
fn bn_folded(bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    let (gamma, beta) = bn_gamma_beta(bn)?;
    let scale = (gamma / (bn.running_var().detach() + bn.eps())?.sqrt()?)?;
    let shift = (beta - (bn.running_mean().detach() * &scale)?)?;
    Ok((scale, shift))
}

/// `relu(bn(x))`. In training, the fused kernel normalises with the batch statistics and the
/// running statistics are updated as candle's BatchNorm does (momentum, unbiased variance).
fn bn_relu(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    let Some((gamma, beta)) = bn.weight_and_bias().filter(|_| train) else {
        return bn.forward_t(x, train)?.relu();
    };
    let (y, mean, var) = crate::kernels::batch_norm_relu_train(x, gamma, beta, bn.eps())?;
    let count = (x.elem_count() / x.dim(1)?) as f64;
    update_running(bn, &mean, &var, count)?;
    Ok(y)
}

/// Updates BatchNorm's running statistics from a batch's mean and biased variance over
/// `count` values per channel, as candle's BatchNorm does (momentum, unbiased variance).
fn update_running(bn: &BatchNorm, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
    let m = bn.momentum();
    let (rm, rv) = (bn.running_mean(), bn.running_var());
    let new_mean = ((rm.detach() * (1.0 - m))? + (mean * m)?)?;
    let unbiased = if count > 1.0 {
        count / (count - 1.0)
    } else {
        1.0
    };
    let new_var = ((rv.detach() * (1.0 - m))? + (var * (m * unbiased))?)?;
    // In place: the running statistics are variables shared with the model's VarMap.
    rm.slice_set(&new_mean.to_dtype(rm.dtype())?, 0, 0)?;
    rv.slice_set(&new_var.to_dtype(rv.dtype())?, 0, 0)?;
    Ok(())
}

/// The deeper encoder.
#[derive(Debug)]
pub struct ConvNet {
    blocks: Vec<Block>,
    pooling: Pooling,
    dropout: SeededDropout,
    hidden: Option<Linear>,
    out: Linear,
}

impl ConvNet {
    fn new(
        input: &InputSpec,
        channels: &[usize],
        hidden: usize,
        dropout: f32,
        dim: usize,
        pooling: Pooling,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        if channels.is_empty() || channels.contains(&0) {
            candle_core::bail!(
                "convnet channels must be a non-empty list of positive numbers, got {channels:?}"
            )
        }
        if !(0.0..1.0).contains(&dropout) {
            candle_core::bail!("dropout {dropout} must be in [0, 1)")
        }
        let min_side = 1usize << (channels.len() - 1);
        if input.height < min_side || input.width < min_side {
            candle_core::bail!(
                "a {}-block convnet halves the input {} times; {}x{} is too small",
                channels.len(),
                channels.len() - 1,
                input.height,
                input.width
            )
        }
        let mut blocks = Vec::with_capacity(channels.len());
        let mut cin = input.channels;
        for (i, &c) in channels.iter().enumerate() {
            blocks.push(Block::new(cin, c, i == 0, vb.pp(format!("block{i}")))?);
            cin = c;
        }
        let side = |n| convnet_side(n, channels.len());
        let Some(cin) = pooling.features(cin, side(input.height), side(input.width)) else {
            candle_core::bail!("the flattened feature map of the convnet is too large")
        };
        let (hidden, out) = if hidden > 0 {
            (
                Some(candle_nn::linear(cin, hidden, vb.pp("head.hidden"))?),
                candle_nn::linear(hidden, dim, vb.pp("head.out"))?,
            )
        } else {
            (None, candle_nn::linear(cin, dim, vb.pp("head.out"))?)
        };
        Ok(Self {
            blocks,
            pooling,
            dropout: SeededDropout::new(dropout),
            hidden,
            out,
        })
    }
}

/// A linear layer through [`crate::kernels::linear`], whose weight gradient is contiguous
/// (candle's `Linear` hands it back transposed, and adding that up costs a tenth of a convnet
/// training step).
fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
    crate::kernels::linear(x, l.weight(), l.bias())
}

impl ModuleT for ConvNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let f = self.features_t(x, train)?;
        self.head_t(&f, train)
    }
}

impl ConvNet {
    /// The projection head (dropout, hidden layer, output) on pooled features.
    fn head_t(&self, f: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.dropout.forward_t(f, train)?;
        let x = match &self.hidden {
            Some(h) => linear(h, &x)?.relu()?,
            None => x,
        };
        linear(&self.out, &x)
    }

    /// The blocks and the pooling: the head's input.
    fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.blocks.len() - 1;
        let x = if crate::kernels::fast_path(&[x, self.blocks[0].c1.weight()]) {
            // The CPU path: each block one fused operation on channel-last activations; the
            // last map goes back to (N, C, H, W), so the head sees the same order everywhere
            // (both copies with contiguous gradients).
            let mut x = crate::kernels::channels_last(x)?;
            for (i, b) in self.blocks.iter().enumerate() {
                x = b.forward_fused(&x, train, i < last)?;
            }
            crate::kernels::channels_first(&x)?
        } else {
            self.forward_blocks(x, train)?
        };
        if x.rank() != 4 {
            candle_core::bail!("the convnet's feature map has shape {:?}", x.dims())
        }
        match self.pooling {
            Pooling::GlobalAverage => x.mean(D::Minus1)?.mean(D::Minus1),
            Pooling::Flatten => x.flatten_from(1),
        }
    }
}

impl ConvNet {
    /// The blocks with candle's ops (and siam's kernels where they apply): CUDA, Metal, other
    /// dtypes.
    fn forward_blocks(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        let last = self.blocks.len() - 1;
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward_t(&x, train)?;
            if i < last {
                // Block outputs are ReLU'd already, so this is plain 2×2 max-pooling.
                x = crate::kernels::relu_max_pool2(&x)?;
            }
        }
        Ok(x)
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
            Self::Resnet(m) => m.head(&m.features_t(x, false)?.detach()),
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
