//! The seed network: Conv(C→32, 5×5) ReLU MaxPool 2, Conv(32→64, 3×3) ReLU MaxPool 2, flatten,
//! Linear(→ D); on the CPU each stage is one fused operation (`kernels::conv2d_relu_max_pool2`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::InputSpec;

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
    pub(super) conv1: Conv2d,
    pub(super) conv2: Conv2d,
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

    pub(super) fn new(input: &InputSpec, dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
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
