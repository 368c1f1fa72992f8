//! Fast CPU kernels for the encoders' hot operations, as candle custom ops with their backward
//! passes. On CUDA and Metal, and for other dtypes, the public functions fall back to candle's
//! own ops, so callers use them unconditionally.
//!
//! The map:
//! - [`gemm`]: the one matrix product (the only `unsafe`, behind a bounds check);
//! - [`ops`]: candle plumbing shared by every op (storage views, the conv op traits);
//! - [`conv`]: im2col convolution, forward and backward;
//! - [`pool`]: ReLU + 2×2 max-pooling, and the per-plane pool/unpool helpers;
//! - [`conv_pool`]: the seed CNN's convolution + bias + ReLU + pooling stage as one op;
//! - [`batchnorm`]: training-mode BatchNorm + ReLU.

mod batchnorm;
mod conv;
mod conv_pool;
mod gemm;
mod ops;
mod pool;

use candle_core::{DType, Tensor};

pub use batchnorm::batch_norm_relu_train;
pub use conv::conv2d;
pub use conv_pool::conv2d_relu_max_pool2;
pub use pool::relu_max_pool2;

fn fast_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{D, Device, Tensor};

    pub(crate) fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Distinct values spaced 1/n apart (no ties, no kinks within ±1/(2n)), shuffled.
    pub(crate) fn distinct(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 - 0.5).collect();
        let mut s = seed | 1;
        for i in (1..n).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.swap(i, (s % (i as u64 + 1)) as usize);
        }
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}
