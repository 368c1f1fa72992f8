//! Channel-last (N, H, W, C) building blocks of the fused convnet block: a direct 3×3
//! convolution for inputs with few channels (the first layer on gray or RGB images), BatchNorm
//! statistics, normalisation + ReLU and their gradient, 2×2 max-pooling and its gradient. Every
//! operation is a vector operation over the channels of a pixel.
//!
//! Every reduction over images (batch statistics, weight gradients) is a partial sum per image,
//! computed in parallel, then added in image order: the result is bit-identical for any thread
//! count and any machine load.
//!
//! - `direct.rs`: the direct convolution and its gradients;
//! - `norm.rs`: BatchNorm's statistics, the activation `relu(scale·y + shift)` and the
//!   gradient, each with paths for channel counts known at compile time;
//! - `pool.rs`: 2×2 max-pooling of the activation and its gradient.

mod direct;
mod norm;
mod pool;

pub(super) use direct::{direct_backward, direct_forward};
pub(super) use norm::{
    Norm, NormGrad, NormSaved, affine_add_relu, affine_relu, norm_grad, norm_relu_backward,
    norm_saved,
};
#[cfg(test)]
pub(super) use pool::NO_MAX;
pub(super) use pool::{max_pool2, unpool2};

/// Test values: `rand`'s uniform values in [−0.5, 0.5) as a vector.
#[cfg(test)]
fn values(shape: &[usize], seed: u64) -> Vec<f32> {
    crate::kernels::tests::rand(shape, seed)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The bit patterns of f32 values, for exact comparisons.
#[cfg(test)]
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
