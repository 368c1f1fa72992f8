//! 3×3 stride-1 convolution by Winograd minimal filtering, F(4×4, 3×3) (Lavin & Gray 2015), on
//! channel-last (N, H, W, C) activations. Each 4×4 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`
//! of its 6×6 input patch `d`, so the multiply stage costs 36 products per 16 outputs instead of
//! 144. The products of one of the 36 transform positions ξ over the whole batch are one matrix
//! product, `M[ξ] (N·T × O) = V[ξ] (N·T × C) · U[ξ] (C × O)` (T tiles per image): 36 large
//! gemms, spread over rayon, each on one thread.
//!
//! The backward pass is the exact adjoint of that computation (so it is the convolution's
//! gradient up to rounding): `Ŷ = A dY Aᵀ` per output tile, then `dU[ξ]ᵀ = Ŷ[ξ]ᵀ · V[ξ]` — the
//! weight gradient as one gemm per ξ over every tile of the batch, summed in a fixed order, so
//! the result does not depend on the thread count — and `dV[ξ] = Ŷ[ξ] · U[ξ]ᵀ`, folded back to
//! the input by `B dV Bᵀ`, each image's overlapping patches added in tile order. Every product
//! reads its right operand row by row (gemm runs a transposed one with few rows at a quarter
//! of its speed), so the backward pass makes `Uᵀ` from the weights itself.
//!
//! Layouts: weights (O, C, 3, 3) as candle has them; `U` is `[36][C][O]`, `Uᵀ` and `dUᵀ` are
//! `[36][O][C]`; `V` and `dV` are `[36][N·T][C]`, `M` and `Ŷ` are `[36][N·T][O]`, the tiles of
//! image n at rows `n·T .. n·T + T`, row-major over the tile grid. With channels last, every 1-D
//! transform is a vector operation over the channels of a pixel, read from and written to
//! memory directly.
//!
//! Rounding: the transforms multiply by at most 8 (Aᵀ) and 5 (Bᵀ), so each output carries an
//! error of a few hundred ulps of `Σ|w|·|x|` over its window; the tests bound it at 1e-4 of
//! that scale.
//!
//! Where `U` is large beside the batch's tiles (a ResNet's last stage: 38 MB at 512 channels
//! for 32 tiles), the products go by blocks of 16 channels instead, each block's share of `U`,
//! `dUᵀ` and `Uᵀ` made and used in cache (`blocked.rs`); `M` and `dV` then come block by
//! block, `[O/16][36][N·T][16]` and `[C/16][36][N·T][16]`, as the output and input-gradient
//! transforms read them.
//!
//! Where `U` is small (under 36·256·256 values: a ResNet's stages 1 and 2), the forward pass
//! goes a few images at a time instead (`by_images.rs`): each group's transforms and products
//! one after the other on one thread, its `V` and `M` in cache.
//!
//! - this file: the geometry, the batch's transforms into and out of the 36 position blocks,
//!   the products, the forward and backward passes;
//! - `blocked.rs`: the products by blocks of channels, and when they are taken;
//! - `by_images.rs`: the forward pass by groups of images, and when it is taken;
//! - `tile.rs`: one tile's arithmetic (the 1-D transforms, the 2-D tile transforms on lanes
//!   of channels, the kernel transform `U`, its transpose `Uᵀ`, and the adjoint from `dUᵀ`);
//! - `tests.rs`: adjoints, a direct f64 convolution, finite differences.

use rayon::prelude::*;

use super::gemm::{Mat, gemm_into};
use super::nhwc::NormGrad;
use super::scratch::Buf;

/// A per-channel `relu(a·x + b)` applied to the input as the input transform reads it (the
/// previous BatchNorm and ReLU, never written out), or `None`: the input as it is.
pub(super) type Act<'a> = Option<(&'a [f32], &'a [f32])>;

/// Where the backward pass's output gradient comes from: as it is, or computed as the
/// output-gradient transform reads it — BatchNorm + ReLU's backward from the convolution's
/// output `y` and the gradient `gz` of what followed it ([`NormGrad`]), never written out.
#[derive(Clone, Copy)]
pub(super) enum GradOut<'a> {
    Plain(&'a [f32]),
    Norm {
        y: &'a [f32],
        gz: &'a [f32],
        grad: &'a NormGrad,
    },
}

/// Input channels from which a 3×3 convolution goes through Winograd (fewer: the transforms
/// would cost more than the products they save, as for the first layer on gray images).
pub(super) const MIN_CHANNELS: usize = 4;

/// Positions of a transformed tile (6 × 6).
const P: usize = 36;
/// Side of an output tile.
const M4: usize = 4;
/// Side of an input patch.
const A6: usize = 6;

/// Geometry of one Winograd convolution: (N, H, W, C) * (O, C, 3, 3), zero padding `pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wino {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) o: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Tile rows and columns.
    th: usize,
    tw: usize,
}

impl Wino {
    /// The geometry, or an error when the 3×3 kernel does not fit the padded input.
    pub(super) fn new(
        n: usize,
        c: usize,
        o: usize,
        h: usize,
        w: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        if h + 2 * pad < 3 || w + 2 * pad < 3 || c == 0 || o == 0 {
            candle_core::bail!(
                "winograd conv: {h}x{w}x{c} with padding {pad} does not fit a 3x3 kernel"
            )
        }
        let (ho, wo) = (h + 2 * pad - 2, w + 2 * pad - 2);
        Ok(Self {
            n,
            c,
            o,
            h,
            w,
            pad,
            ho,
            wo,
            th: ho.div_ceil(M4),
            tw: wo.div_ceil(M4),
        })
    }
    /// Tiles per image.
    fn t(&self) -> usize {
        self.th * self.tw
    }
    /// Tiles in the batch: the rows of each gemm.
    fn nt(&self) -> usize {
        self.n * self.t()
    }
    /// Rows and columns (pixels) of the zero-padded plane every input tile reads from: whole
    /// tiles, the padding on every side.
    fn padded(&self) -> (usize, usize) {
        (M4 * self.th + 2, M4 * self.tw + 2)
    }
    /// Values of `V` (or `dV`): 36 × N·T × C.
    pub(super) fn v_len(&self) -> usize {
        P * self.nt() * self.c
    }
}

mod blocked;
mod by_images;
mod tile;

use tile::{
    Blocks, Flat, INPUT, INPUT_GRAD, OUTPUT, OUTPUT_GRAD, lanes, position_offsets, tile_offsets,
};
pub(super) use tile::{kernel_grad_t, kernel_transform, kernel_transform_t};

/// For each image, the 36 blocks (one per position) of its T rows in a `[36][N·T][width]`
/// buffer: what one image's transform writes.
fn per_image<'a>(buf: &'a mut [f32], g: &Wino, width: usize) -> Vec<Vec<&'a mut [f32]>> {
    by_part(buf, g.n, g.t() * width)
}

/// A `[36][parts][len]` buffer split by part: for each of the `parts`, its 36 pieces of `len`
/// values, in position order (what one image's tile transforms, or one input channel's kernel
/// transforms, write).
fn by_part(buf: &mut [f32], parts: usize, len: usize) -> Vec<Vec<&mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..parts).map(|_| Vec::with_capacity(P)).collect();
    for block in buf.chunks_exact_mut(parts * len) {
        for (k, piece) in block.chunks_exact_mut(len).enumerate() {
            out[k].push(piece);
        }
    }
    out
}

/// `V [36][N·T][C]` from channel-last images (N, H, W, C), through `act`: `Bᵀ d B` per tile,
/// zero padding.
pub(super) fn input_transform(g: &Wino, x: &[f32], act: Act<'_>, v: &mut [f32]) {
    let img = g.h * g.w * g.c;
    let (ph, pw) = g.padded();
    per_image(v, g, g.c)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            // The zero border of the padded plane is never written, so stays zero.
            || vec![0f32; ph * pw * g.c],
            |plane, (n, mut pieces)| input_image(g, &x[n * img..][..img], act, plane, &mut pieces),
        );
}

simd_kernel! {
    /// One image of [`input_transform`]: copied into the padded plane, then every tile.
    fn input_image<'a, 'b>(g: &'a Wino, xn: &'a [f32], act: Act<'a>, plane: &'a mut [f32], pieces: &'a mut [&'b mut [f32]]) {
        let c = g.c;
        let (_, pw) = g.padded();
        for (r, row) in xn.chunks_exact(g.w * c).enumerate() {
            let dst = &mut plane[((r + g.pad) * pw + g.pad) * c..][..g.w * c];
            match act {
                None => dst.copy_from_slice(row),
                Some((a, b)) => {
                    let (a, b) = (&a[..c], &b[..c]);
                    for (dp, xp) in dst.chunks_exact_mut(c).zip(row.chunks_exact(c)) {
                        for (((d, &x), &a), &b) in dp.iter_mut().zip(xp).zip(a).zip(b) {
                            *d = (a * x + b).max(0.0);
                        }
                    }
                }
            }
        }
        let offs: [usize; P] = tile_offsets(pw, c);
        for ti in 0..g.th {
            for tj in 0..g.tw {
                let base = (M4 * ti * pw + M4 * tj) * c;
                let mut dst = Blocks { rows: &mut *pieces, start: (ti * g.tw + tj) * c };
                lanes::<P, P, INPUT>(plane, (&offs, base), &mut dst, c, false);
            }
        }
    }
}

/// `dst[ξ] (rows × n) = a[ξ] · b[ξ]` for the 36 positions, one gemm per position on one thread;
/// `a` and `b` give each position's operand as a view of their buffers.
fn per_position<'a>(
    dst: &mut [f32],
    (rows, cols, depth): (usize, usize, usize),
    a: impl Fn(usize) -> Mat<'a> + Sync,
    b: impl Fn(usize) -> Mat<'a> + Sync,
) {
    dst.par_chunks_exact_mut(rows * cols)
        .enumerate()
        .for_each(|(pos, d)| gemm_into(d, rows, cols, depth, a(pos), b(pos), false));
}

/// [`per_position`] with every product on the calling thread: one block's or one group's
/// products, its operands in cache.
pub(super) fn per_position_here<'a>(
    dst: &mut [f32],
    (rows, cols, depth): (usize, usize, usize),
    a: impl Fn(usize) -> Mat<'a>,
    b: impl Fn(usize) -> Mat<'a>,
) {
    for (pos, d) in dst.chunks_exact_mut(rows * cols).enumerate() {
        gemm_into(d, rows, cols, depth, a(pos), b(pos), false);
    }
}

/// `M[ξ] (N·T × O) = V[ξ] (N·T × C) · U[ξ] (C × O)`.
fn multiply(g: &Wino, u: &[f32], v: &[f32], m: &mut [f32]) {
    let (nt, c, o) = (g.nt(), g.c, g.o);
    per_position(
        m,
        (nt, o, c),
        |pos| Mat::block(v, pos, (nt, c)),
        |pos| Mat::block(u, pos, (c, o)),
    );
}

/// The convolution output, channel-last (N, HO, WO, O), from `M` in blocks of `width`
/// output channels (`[O/width][36][N·T][width]`; `width = O`: `[36][N·T][O]`): `Aᵀ m A` per
/// tile into a plane of whole tiles, cropped to the output.
fn output_transform(g: &Wino, m: &[f32], width: usize, y: &mut [f32]) {
    let img = g.ho * g.wo * g.o;
    y.par_chunks_exact_mut(img).enumerate().for_each_init(
        || vec![0f32; M4 * g.th * M4 * g.tw * g.o],
        |plane, (n, yn)| output_image(g, m, width, n, yn, plane),
    );
}

simd_kernel! {
    /// One image of [`output_transform`].
    fn output_image<'a>(g: &'a Wino, m: &'a [f32], width: usize, n: usize, yn: &'a mut [f32], plane: &'a mut [f32]) {
        let (o, t, nt) = (g.o, g.t(), g.nt());
        let pw = M4 * g.tw;
        let src: [usize; P] = position_offsets(nt, width);
        let offs: [usize; 16] = tile_offsets(pw, o);
        for ti in 0..g.th {
            for tj in 0..g.tw {
                let row = (n * t + ti * g.tw + tj) * width;
                let base = (M4 * ti * pw + M4 * tj) * o;
                for (b, block) in m.chunks_exact(P * nt * width).enumerate() {
                    let mut dst = Flat { buf: &mut *plane, offs: &offs, base: base + b * width };
                    lanes::<P, 16, OUTPUT>(block, (&src, row), &mut dst, width, false);
                }
            }
        }
        for (r, out) in yn.chunks_exact_mut(g.wo * o).enumerate() {
            out.copy_from_slice(&plane[r * pw * o..][..g.wo * o]);
        }
    }
}

/// `Ŷ [36][N·T][O]` from the output's gradient (N, HO, WO, O): `A dY Aᵀ` per tile, positions
/// past the output's edge taken as zero.
fn grad_output_transform(g: &Wino, gy: GradOut<'_>, dy: &mut [f32]) {
    let img = g.ho * g.wo * g.o;
    let image = |n: usize| match gy {
        GradOut::Plain(gy) => GradOut::Plain(&gy[n * img..][..img]),
        GradOut::Norm { y, gz, grad } => GradOut::Norm {
            y: &y[n * img..][..img],
            gz: &gz[n * img..][..img],
            grad,
        },
    };
    per_image(dy, g, g.o)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            // Whole tiles; what lies past the output stays zero.
            || vec![0f32; M4 * g.th * M4 * g.tw * g.o],
            |plane, (n, mut pieces)| grad_output_image(g, image(n), plane, &mut pieces),
        );
}

simd_kernel! {
    /// One image of [`grad_output_transform`].
    fn grad_output_image<'a, 'b>(g: &'a Wino, gn: GradOut<'a>, plane: &'a mut [f32], pieces: &'a mut [&'b mut [f32]]) {
        let o = g.o;
        let pw = M4 * g.tw;
        let row = g.wo * o;
        for r in 0..g.ho {
            let dst = &mut plane[r * pw * o..][..row];
            match gn {
                GradOut::Plain(gn) => dst.copy_from_slice(&gn[r * row..][..row]),
                GradOut::Norm { y, gz, grad } => {
                    grad.apply(&y[r * row..][..row], &gz[r * row..][..row], dst)
                }
            }
        }
        let offs: [usize; 16] = tile_offsets(pw, o);
        for ti in 0..g.th {
            for tj in 0..g.tw {
                let base = (M4 * ti * pw + M4 * tj) * o;
                let mut dst = Blocks { rows: &mut *pieces, start: (ti * g.tw + tj) * o };
                lanes::<16, P, OUTPUT_GRAD>(plane, (&offs, base), &mut dst, o, false);
            }
        }
    }
}

/// The input's gradient, channel-last (N, H, W, C), from `dV` in blocks of `width` input
/// channels (as `M` in [`output_transform`]): `B dv Bᵀ` per tile, the overlapping patches
/// added into a padded plane in tile order, then cropped.
fn grad_input_transform(g: &Wino, dv: &[f32], width: usize, gx: &mut [f32]) {
    let img = g.h * g.w * g.c;
    let (ph, pw) = g.padded();
    gx.par_chunks_exact_mut(img).enumerate().for_each_init(
        || vec![0f32; ph * pw * g.c],
        |plane, (n, gxn)| grad_input_image(g, dv, width, n, gxn, plane),
    );
}

simd_kernel! {
    /// One image of [`grad_input_transform`].
    fn grad_input_image<'a>(g: &'a Wino, dv: &'a [f32], width: usize, n: usize, gxn: &'a mut [f32], plane: &'a mut [f32]) {
        let (c, t, nt) = (g.c, g.t(), g.nt());
        let (_, pw) = g.padded();
        plane.fill(0.0);
        let src: [usize; P] = position_offsets(nt, width);
        let offs: [usize; P] = tile_offsets(pw, c);
        for ti in 0..g.th {
            for tj in 0..g.tw {
                let row = (n * t + ti * g.tw + tj) * width;
                let base = (M4 * ti * pw + M4 * tj) * c;
                for (b, block) in dv.chunks_exact(P * nt * width).enumerate() {
                    let mut dst = Flat { buf: &mut *plane, offs: &offs, base: base + b * width };
                    lanes::<P, P, INPUT_GRAD>(block, (&src, row), &mut dst, width, true);
                }
            }
        }
        for (r, out) in gxn.chunks_exact_mut(g.w * c).enumerate() {
            out.copy_from_slice(&plane[((r + g.pad) * pw + g.pad) * c..][..g.w * c]);
        }
    }
}

/// What the backward pass of one convolution keeps from its forward pass: `V [36][N·T][C]`.
/// The weights' transform is made again from the weights when the backward pass needs it,
/// transposed ([`kernel_transform_t`]), so nothing of the size of `U` lives between the passes.
#[derive(Debug, Default)]
pub(super) struct Saved {
    v: Buf,
}

/// The weights (O, C, 3, 3) as [`forward`] reads them: their transform `U`
/// ([`kernel_transform`]), or, where the products go by blocks of channels
/// ([`blocked::by_blocks`]), a copy of the weights, each block's `U` made as it is needed.
#[derive(Debug)]
pub(in crate::kernels) struct Weights {
    k: Buf,
    by_blocks: bool,
}

impl Weights {
    /// The weights for convolutions of geometry `g` (the form chosen for its batch; another
    /// batch of the same channels may use them).
    pub(in crate::kernels) fn new(g: &Wino, w: &[f32]) -> Self {
        Self::with(w, (g.o, g.c), blocked::by_blocks(g))
    }

    fn with(w: &[f32], (o, c): (usize, usize), by_blocks: bool) -> Self {
        let k = if by_blocks {
            assert!(
                o.is_multiple_of(blocked::BLOCK) && c.is_multiple_of(blocked::BLOCK),
                "winograd: {o}x{c} weights are not whole blocks"
            );
            let mut b = Buf::scratch(w.len());
            b.copy_from_slice(w);
            b
        } else {
            kernel_transform(w, o, c)
        };
        Self { k, by_blocks }
    }
}

/// The convolution of channel-last `x` (N, H, W, C) by the weights `k` into `y`
/// (N, HO, WO, O), with what its backward pass needs (`keep`) or nothing.
pub(super) fn forward(g: &Wino, x: &[f32], k: &Weights, y: &mut [f32], keep: bool) -> Saved {
    forward_act(g, x, None, k, y, keep)
}

/// [`forward`] of `act` applied to `x`.
pub(super) fn forward_act(
    g: &Wino,
    x: &[f32],
    act: Act<'_>,
    k: &Weights,
    y: &mut [f32],
    keep: bool,
) -> Saved {
    let path = if k.by_blocks {
        Path::Blocks
    } else if by_images::worth_it(g) {
        Path::Images
    } else {
        Path::Whole
    };
    forward_by(g, (x, act), k, (y, keep), path)
}

/// How a forward pass goes: three passes over the batch (the input transform, the products,
/// the output transform), by groups of images (`by_images.rs`), or by blocks of channels
/// (`blocked.rs`, for weights prepared for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Whole,
    Images,
    Blocks,
}

fn forward_by(
    g: &Wino,
    (x, act): (&[f32], Act<'_>),
    k: &Weights,
    (y, keep): (&mut [f32], bool),
    path: Path,
) -> Saved {
    assert_eq!(
        k.by_blocks,
        path == Path::Blocks,
        "winograd: weights prepared for another path"
    );
    if path == Path::Images {
        return by_images::forward(g, (x, act), &k.k, y, keep);
    }
    let mut v = Buf::scratch(g.v_len());
    input_transform(g, x, act, &mut v);
    let mut m = Buf::scratch(P * g.nt() * g.o);
    if path == Path::Blocks {
        blocked::multiply(g, &k.k, &v, &mut m);
        output_transform(g, &m, blocked::BLOCK, y);
    } else {
        multiply(g, &k.k, &v, &mut m);
        output_transform(g, &m, g.o, y);
    }
    if keep { Saved { v } } else { Saved::default() }
}

/// The backward pass's state for channel-last `x`, without the forward pass's products (for
/// an op that keeps nothing between its passes).
pub(super) fn saved(g: &Wino, x: &[f32]) -> Saved {
    let mut v = Buf::scratch(g.v_len());
    input_transform(g, x, None, &mut v);
    Saved { v }
}

/// (dX, channel-last, when asked for; dW) from the output's gradient (N, HO, WO, O) and the
/// weights `w` (O, C, 3, 3).
pub(super) fn backward(
    g: &Wino,
    saved: &Saved,
    gy: &[f32],
    w: &[f32],
    input_grad: bool,
) -> (Option<Buf>, Vec<f32>) {
    backward_from(g, saved, GradOut::Plain(gy), w, input_grad)
}

/// [`backward`] with the output's gradient given by `gy`.
///
/// Both products are taken with their operands row by row: `dUᵀ[ξ] (O × C) = Ŷ[ξ]ᵀ · V[ξ]`
/// (its kernel gradients then read one output channel's row at a time, so the weight gradient
/// needs no transpose), and `dV[ξ] = Ŷ[ξ] · Uᵀ[ξ]` from `Uᵀ [36][O][C]` made directly — gemm
/// runs a product with a transposed right operand and few rows (a ResNet's stage 4 at
/// 112×112) at a quarter of its rate.
pub(super) fn backward_from(
    g: &Wino,
    saved: &Saved,
    gy: GradOut<'_>,
    w: &[f32],
    input_grad: bool,
) -> (Option<Buf>, Vec<f32>) {
    backward_in(g, saved, gy, w, input_grad, blocked::by_blocks(g))
}

fn backward_in(
    g: &Wino,
    saved: &Saved,
    gy: GradOut<'_>,
    w: &[f32],
    input_grad: bool,
    by_blocks: bool,
) -> (Option<Buf>, Vec<f32>) {
    assert_eq!(
        saved.v.len(),
        g.v_len(),
        "winograd backward without its forward pass"
    );
    let (nt, c, o) = (g.nt(), g.c, g.o);
    let mut dy = Buf::scratch(P * nt * o);
    grad_output_transform(g, gy, &mut dy);
    if by_blocks {
        let gw = blocked::weight_grad(g, &dy, &saved.v);
        let gx = input_grad.then(|| {
            let mut dv = Buf::scratch(P * nt * c);
            blocked::input_grad_products(g, &dy, w, &mut dv);
            let mut gx = Buf::scratch(g.n * g.h * g.w * c);
            grad_input_transform(g, &dv, blocked::BLOCK, &mut gx);
            gx
        });
        return (gx, gw);
    }
    let mut dut = Buf::scratch(P * o * c);
    per_position(
        &mut dut,
        (o, c, nt),
        |pos| Mat {
            data: &dy[pos * nt * o..][..nt * o],
            rs: 1,
            cs: o,
        },
        |pos| Mat {
            data: &saved.v[pos * nt * c..][..nt * c],
            rs: c,
            cs: 1,
        },
    );
    let gw = kernel_grad_t(&dut, o, c);
    drop(dut);
    let gx = input_grad.then(|| {
        let ut = kernel_transform_t(w, o, c);
        let mut dv = Buf::scratch(P * nt * c);
        per_position(
            &mut dv,
            (nt, c, o),
            |pos| Mat::block(&dy, pos, (nt, o)),
            |pos| Mat::block(&ut, pos, (o, c)),
        );
        drop(ut);
        let mut gx = Buf::scratch(g.n * g.h * g.w * c);
        grad_input_transform(g, &dv, c, &mut gx);
        gx
    });
    (gx, gw)
}

#[cfg(test)]
pub(super) mod tests;
