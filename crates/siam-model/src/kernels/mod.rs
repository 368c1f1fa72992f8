//! Fast CPU kernels for the encoders' hot operations, as candle custom ops with their backward
//! passes. On CUDA and Metal, and for other dtypes, the public functions fall back to candle's
//! own ops, so callers use them unconditionally.
//!
//! The map:
//! - `gemm.rs`: the one matrix product (the only `unsafe`, behind a bounds check);
//! - `ops.rs`: candle plumbing shared by every op (storage views, the conv op traits);
//! - `conv/`: im2col convolution, forward and backward (`pack.rs`: im2col and col2im);
//! - `conv3x3.rs`: 3×3 stride-1 convolution of channel-first tensors by Winograd (ResNet's);
//! - `pool.rs`: ReLU + 2×2 max-pooling, and the per-plane pool/unpool helpers;
//! - `maxpool.rs`: max-pooling with any window, stride and padding (ResNet's 3×3/2);
//! - `conv_pool.rs`: the seed CNN's convolution + bias + ReLU + pooling stage as one op;
//! - `batchnorm.rs`: training-mode BatchNorm + ReLU;
//! - `affine.rs`: BatchNorm in evaluation folded into a per-channel scale and shift, with the
//!   ReLU and a residual add, one pass each way;
//! - `residual.rs`: a residual block's `relu(y + identity)`;
//! - `winograd/`: 3×3 convolution by Winograd F(4×4, 3×3) on channel-last activations,
//!   forward and backward;
//! - `nhwc/`: channel-last direct convolution (few input channels), BatchNorm + ReLU and
//!   pooling, with reductions in a fixed order;
//! - `layout.rs`: channel-last ⇄ channel-first copies with contiguous gradients;
//! - `lane.rs`: the 16- and 8-lane vectors the tile transforms compute with;
//! - `scratch.rs`: reused buffers for the large temporaries;
//! - `transpose.rs`: the transposes behind the layout changes (8×8 register tiles on AVX2);
//! - `taps.rs`: convolution as one product per kernel tap over only the inputs it reads (small
//!   maps: a ResNet's last stages);
//! - `block.rs`: the convnet's block (two convolutions with BatchNorm and ReLU, optional
//!   pooling) as one operation.
//!
//! Every reduction over images sums fixed parts (an image, a gemm over the whole batch) and
//! combines them in a fixed order, so results are bit-identical for any thread count.

/// Defines a kernel function whose body runs compiled for the best instruction set the CPU has
/// (AVX2 + FMA on x86-64, detected at run time through pulp, the SIMD dispatch gemm uses), so
/// the loops it inlines are vectorised for it. The body becomes pulp's `WithSimd::with_simd`,
/// an `#[inline(always)]` method: closures and function items may be kept out of line by the
/// compiler, and so compiled for the baseline instruction set.
macro_rules! simd_kernel {
    (
        $(#[$meta:meta])*
        fn $name:ident<$($lt:lifetime),+>($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name<$($lt),+>($($arg: $ty),*) {
            struct Op<$($lt),+> {
                $($arg: $ty,)*
            }
            impl<$($lt),+> pulp::WithSimd for Op<$($lt),+> {
                type Output = ();
                #[inline(always)]
                fn with_simd<S: pulp::Simd>(self, _: S) {
                    let Op { $($arg),* } = self;
                    $body
                }
            }
            pulp::Arch::new().dispatch(Op { $($arg),* })
        }
    };
}

mod affine;
mod batchnorm;
mod block;
mod conv;
mod conv3x3;
mod conv_pool;
pub(crate) mod gemm;
mod lane;
mod layout;
mod linear;
mod maxpool;
mod nhwc;
mod ops;
mod pool;
mod residual;
mod scratch;
mod taps;
mod transpose;
mod winograd;

use candle_core::{DType, Result, Tensor};

pub use affine::scale_shift;
pub(crate) use affine::scale_shift_owned;
pub use batchnorm::{batch_norm_relu_train, batch_norm_train};
pub use conv::{conv2d, conv2d_im2col, conv2d_strided};
pub use conv_pool::conv2d_relu_max_pool2;
pub use conv3x3::{conv3x3, conv3x3_winograd};
pub(crate) use conv3x3::{conv3x3_affine_inference, conv3x3_by_winograd};
pub use layout::{channels_first, channels_last};
pub use linear::linear;
pub use maxpool::max_pool2d;
pub use pool::relu_max_pool2;
pub use residual::add_relu;
pub use taps::conv2d_taps;

pub(crate) use block::{BatchStats, BlockEnd};

/// Runs `f` on a worker of the current rayon pool (inline when already on one) and returns
/// its result. A step or a forward pass starts hundreds of parallel regions; started from a
/// thread outside the pool, each one is injected into the pool and the caller sleeps on a lock
/// until it ends (a futex wake-up each way), while from a worker it is pushed onto the
/// worker's own queue and the worker takes part. Wrapping a whole step cut a training step's
/// context switches from about 730 to about 200 and made the default recipe's steps 8 %
/// faster on 2 cores (docs/BENCHMARKS.md). Results do not change: the kernels split work the
/// same way on any thread.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The convnet block `[pool2](relu(bn2(conv2(relu(bn1(conv1(x)))))))`, or a ResNet BasicBlock
/// without downsampling `relu(bn2(conv2(relu(bn1(conv1(x))))) + x)` ([`BlockEnd`]), on
/// channel-last `x` (N, H, W, C) as one CPU operation; `params` packs `[w1, p1, q1, w2, p2, q2]`
/// (see [`block`]). With `batch_eps`, BatchNorm uses the batch statistics (returned, for the running
/// statistics) and (p, q) are (γ, β); without, (p, q) are the folded per-channel scale and
/// shift. The output is channel-last too. CPU and f32 only: callers check [`fast_path`].
pub(crate) fn conv_block(
    x: &Tensor,
    params: &Tensor,
    (cin, cout): (usize, usize),
    end: BlockEnd,
    input_grad: bool,
    batch_eps: Option<f64>,
) -> Result<(Tensor, Option<BatchStats>)> {
    let (op, stats) = block::BlockOp::new(cin, cout, end, input_grad, batch_eps);
    let y = x.contiguous()?.apply_op2(&params.contiguous()?, op)?;
    let stats = stats
        .lock()
        .map_err(|_| candle_core::Error::Msg("conv block statistics poisoned".into()))?
        .take();
    Ok((y, stats))
}

/// Images per part of a reduction over a batch: each part is summed on one thread in image
/// order and the parts are added in order, so the sum does not depend on the thread count.
const IMAGES_PER_PART: usize = 8;

/// Images per part of a fixed-order reduction (a constant: never the thread count).
fn part_len() -> usize {
    IMAGES_PER_PART
}

/// The parts `0..n` splits into for a fixed-order reduction: ranges of [`part_len`] images.
fn parts(n: usize) -> impl rayon::iter::IndexedParallelIterator<Item = std::ops::Range<usize>> {
    use rayon::prelude::*;
    let per = part_len();
    (0..n.div_ceil(per))
        .into_par_iter()
        .map(move |k| k * per..((k + 1) * per).min(n))
}

/// Adds per-part vectors in part order (the deterministic half of a reduction).
fn add_in_order<T: Copy + std::ops::AddAssign + Default, V: std::ops::Deref<Target = [T]>>(
    parts: Vec<V>,
    len: usize,
) -> Vec<T> {
    let mut total = vec![T::default(); len];
    for p in parts {
        total.iter_mut().zip(p.iter()).for_each(|(t, &v)| *t += v);
    }
    total
}

pub(crate) fn fast_path(ts: &[&Tensor]) -> bool {
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

    /// The gradients of `Σ up · y`: a backward pass with `up` as the output's gradient.
    pub(crate) fn grads_of(y: &Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
        (y * up).unwrap().sum_all().unwrap().backward().unwrap()
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

    /// `on_pool` runs its closure on a worker of the pool it is called for: the global pool's
    /// from an outside thread, a pool's own when called inside it (inline, on the same worker),
    /// and hands back the result.
    #[test]
    fn on_pool_runs_on_a_worker_of_the_callers_pool() {
        std::thread::spawn(|| {
            assert_eq!(rayon::current_thread_index(), None);
            let (index, value) = super::on_pool(|| (rayon::current_thread_index(), 7));
            assert!(index.is_some());
            assert_eq!(value, 7);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            pool.install(|| {
                let outer = rayon::current_thread_index();
                let (inner, threads) = super::on_pool(|| {
                    (rayon::current_thread_index(), rayon::current_num_threads())
                });
                assert_eq!(inner, outer);
                assert_eq!(threads, 3);
            });
        })
        .join()
        .unwrap();
    }
}
