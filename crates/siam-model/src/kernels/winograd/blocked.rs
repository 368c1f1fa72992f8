//! The products by blocks of channels, for convolutions whose weights' transform is large
//! beside the batch's tiles: a ResNet's last stages, where `U` (36·C·O values, 38 MB at 512
//! channels) is read once per pass against a few tiles per image, so the whole-batch products
//! wait on memory (stage 4 at 32 images: 65 GFLOP/s on one Zen 4 core, against 105 for the same
//! products by blocks of 16 output channels with the block's `U` in cache).
//!
//! Each block of [`BLOCK`] output channels makes its own `U` from its weights, in cache, then
//! runs its 36 products; the backward pass likewise makes each block's `dUᵀ` and folds it into
//! the block's weight gradient at once, and each block of input channels makes its `Uᵀ` for
//! its share of `dV`. Nothing of the size of `U` is written. `M` and `dV` come out block by
//! block, `[width/BLOCK][36][N·T][BLOCK]`, which the output and input-gradient transforms read
//! as they are. Blocks run in parallel, each on one thread, and every value is one product
//! over a fixed depth, so the results do not depend on the thread count.

use rayon::prelude::*;

use super::tile::{kernel_grad_block, kernel_transform_block, kernel_transform_t_block};
use super::{P, Wino, per_position_here};
use crate::kernels::gemm::Mat;
use crate::kernels::scratch::Buf;

/// Channels per block: one sixteen-lane group of the tile transforms.
pub(super) const BLOCK: usize = 16;

/// Values of `U` (36·C·O) from which the products may go by blocks: 36·256·256 (9.4 MB), a
/// ResNet-18's stages 3 and 4.
const MIN_TRANSFORM: usize = P * 256 * 256;

/// Tiles of the batch per output channel up to which the products go by blocks. Each block
/// reads the batch's `V` again: with as many tiles as a quarter of the output channels or
/// fewer, that costs less than `U` from memory. Measured on ResNet-18's 3×3 layers, 2 threads
/// (docs/BENCHMARKS.md): 512 channels and 32 or 64 tiles (stage 4 at 112×112, training and
/// inference) 13–20 % faster; 256 channels and 32 or 64 tiles (stage 3 at 64×64) 12–20 %;
/// 256 channels and 128 tiles (stage 3 at 112×112) no faster, and at 256 tiles slower.
const TILES_PER_OUTPUT: usize = 4;

/// Whether a convolution goes by blocks: `U` of at least [`MIN_TRANSFORM`] values, a batch of
/// at most `O / 4` tiles ([`TILES_PER_OUTPUT`]), and whole blocks of input and output
/// channels. Stage 2 of a ResNet-18 (128 channels, `U` 2.4 MB) stays whole.
pub(super) fn by_blocks(g: &Wino) -> bool {
    let (c, o) = (g.c, g.o);
    c.is_multiple_of(BLOCK)
        && o.is_multiple_of(BLOCK)
        && P * c * o >= MIN_TRANSFORM
        && TILES_PER_OUTPUT * g.nt() <= o
}

/// `M` by blocks of output channels, `[O/16][36][N·T][16]`, from `V [36][N·T][C]` and the
/// weights (O, C, 3, 3): each block's `U [36][C][16]` made from its weights, then
/// `M_b[ξ] = V[ξ] · U_b[ξ]`.
pub(super) fn multiply(g: &Wino, w: &[f32], v: &[f32], m: &mut [f32]) {
    let (nt, c) = (g.nt(), g.c);
    m.par_chunks_exact_mut(P * nt * BLOCK)
        .zip(w.par_chunks_exact(BLOCK * c * 9))
        .for_each_init(
            || (Buf::scratch(9 * c * BLOCK), Buf::scratch(P * c * BLOCK)),
            |(wt, u), (mb, wb)| {
                kernel_transform_block(wb, BLOCK, c, wt, u);
                per_position_here(
                    mb,
                    (nt, BLOCK, c),
                    |pos| Mat::block(v, pos, (nt, c)),
                    |pos| Mat::block(u, pos, (c, BLOCK)),
                );
            },
        );
}

/// The weight gradient (O, C, 3, 3) by blocks of output channels, from `Ŷ [36][N·T][O]` and
/// `V [36][N·T][C]`: each block's `dUᵀ_b[ξ] (16 × C) = Ŷ[ξ]ᵀ` (its columns) `· V[ξ]`, then
/// its kernel gradients.
pub(super) fn weight_grad(g: &Wino, dy: &[f32], v: &[f32]) -> Vec<f32> {
    let (nt, c, o) = (g.nt(), g.c, g.o);
    let mut dw = vec![0f32; o * c * 9];
    dw.par_chunks_exact_mut(BLOCK * c * 9)
        .enumerate()
        .for_each_init(
            || (Buf::scratch(P * BLOCK * c), Buf::scratch(9 * c)),
            |(dut, rows), (blk, out)| {
                per_position_here(
                    dut,
                    (BLOCK, c, nt),
                    |pos| Mat {
                        data: &dy[pos * nt * o + blk * BLOCK..][..(nt - 1) * o + BLOCK],
                        rs: 1,
                        cs: o,
                    },
                    |pos| Mat::block(v, pos, (nt, c)),
                );
                kernel_grad_block(dut, BLOCK, c, rows, out);
            },
        );
    dw
}

/// `dV` by blocks of input channels, `[C/16][36][N·T][16]`, from `Ŷ [36][N·T][O]` and the
/// weights (O, C, 3, 3): each block's `Uᵀ_b [36][O][16]` made from its weights, then
/// `dV_b[ξ] = Ŷ[ξ] · Uᵀ_b[ξ]`.
pub(super) fn input_grad_products(g: &Wino, dy: &[f32], w: &[f32], dv: &mut [f32]) {
    let (nt, c, o) = (g.nt(), g.c, g.o);
    dv.par_chunks_exact_mut(P * nt * BLOCK)
        .enumerate()
        .for_each_init(
            || (Buf::scratch(9 * BLOCK), Buf::scratch(P * o * BLOCK)),
            |(rows, ut), (blk, db)| {
                kernel_transform_t_block(w, (o, c), (blk * BLOCK, BLOCK), rows, ut);
                per_position_here(
                    db,
                    (nt, BLOCK, o),
                    |pos| Mat::block(dy, pos, (nt, o)),
                    |pos| Mat::block(ut, pos, (o, BLOCK)),
                );
            },
        );
}
