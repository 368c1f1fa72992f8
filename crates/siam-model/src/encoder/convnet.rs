//! The convnet: blocks of two 3×3 convolutions with BatchNorm and ReLU, 2×2 max-pooling between
//! blocks, flatten or global average pooling, optional seeded dropout and a projection head. On
//! the CPU each block is one fused operation on channel-last activations
//! (`kernels::conv_block`); elsewhere candle's ops (and siam's kernels where they apply).

use std::sync::Mutex;

use candle_core::{D, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::batchnorm::{bn_folded, bn_gamma_beta, bn_relu, fused_block};
use super::{InputSpec, Pooling, convnet_side};
use crate::kernels::BlockEnd;

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
pub(super) struct Block {
    pub(super) c1: Conv2d,
    pub(super) b1: BatchNorm,
    pub(super) c2: Conv2d,
    pub(super) b2: BatchNorm,
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
        // Training: γ and β; evaluation: the running statistics folded in.
        let bn_params = |bn: &BatchNorm| -> Result<(Tensor, Tensor)> {
            if train {
                bn_gamma_beta(bn)
            } else {
                bn_folded(bn)
            }
        };
        let end = if pool { BlockEnd::Pool } else { BlockEnd::Relu };
        fused_block(
            x,
            [
                (self.c1.weight(), &self.b1, bn_params(&self.b1)?),
                (self.c2.weight(), &self.b2, bn_params(&self.b2)?),
            ],
            end,
            !self.first,
            train,
        )
    }
}

/// The deeper encoder.
#[derive(Debug)]
pub struct ConvNet {
    pub(super) blocks: Vec<Block>,
    pub(super) pooling: Pooling,
    pub(super) dropout: SeededDropout,
    pub(super) hidden: Option<Linear>,
    out: Linear,
}

impl ConvNet {
    pub(super) fn new(
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
pub(super) fn linear(l: &Linear, x: &Tensor) -> Result<Tensor> {
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
    pub(super) fn head_t(&self, f: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.dropout.forward_t(f, train)?;
        let x = match &self.hidden {
            Some(h) => linear(h, &x)?.relu()?,
            None => x,
        };
        linear(&self.out, &x)
    }

    /// The blocks and the pooling: the head's input.
    pub(super) fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
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
