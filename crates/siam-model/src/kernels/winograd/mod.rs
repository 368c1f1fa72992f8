//! 3×3 stride-1 convolution by Winograd minimal filtering, F(4×4, 3×3) (Lavin & Gray 2015), on
//! channel-last (N, H, W, C) activations. Each 4×4 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`
//! of its 6×6 input patch `d`, so the multiply stage costs 36 products per 16 outputs instead of
//! 144. The products of one of the 36 transform positions ξ over the whole batch are one matrix
//! product, `M[ξ] (N·T × O) = V[ξ] (N·T × C) · U[ξ] (C × O)` (T tiles per image): 36 large
//! gemms, spread over rayon, each on one thread.
//!
//! The backward pass is the exact adjoint of that computation (so it is the convolution's
//! gradient up to rounding): `Ŷ = A dY Aᵀ` per output tile, then `dU[ξ] = V[ξ]ᵀ · Ŷ[ξ]` — the
//! weight gradient as one gemm per ξ over every tile of the batch, summed in a fixed order, so
//! the result does not depend on the thread count — and `dV[ξ] = Ŷ[ξ] · U[ξ]ᵀ`, folded back to
//! the input by `B dV Bᵀ`, each image's overlapping patches added in tile order.
//!
//! Layouts: weights (O, C, 3, 3) as candle has them; `U` and `dU` are `[36][C][O]`; `V` and `dV`
//! are `[36][N·T][C]`, `M` and `Ŷ` are `[36][N·T][O]`, the tiles of image n at rows
//! `n·T .. n·T + T`, row-major over the tile grid. With channels last, every 1-D transform is a
//! vector operation over the channels of a pixel, read from and written to memory directly.
//!
//! Rounding: the transforms multiply by at most 8 (Aᵀ) and 5 (Bᵀ), so each output carries an
//! error of a few hundred ulps of `Σ|w|·|x|` over its window; the tests bound it at 1e-4 of
//! that scale.

use rayon::prelude::*;

use super::gemm::{Mat, gemm_into};
use super::lane::{Fx, Lane};
use super::scratch::Buf;

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

// The 1-D transforms: Bᵀ (input), Aᵀ (output), G (kernel) of F(4, 3) with the points 0, ±1,
// ±2, ∞, and their adjoints for the backward pass; generic over the lane type.

/// `Bᵀ d`.
#[inline(always)]
fn bt<T: Lane>(d: [T; 6]) -> [T; 6] {
    [
        d[0] * 4.0 - d[2] * 5.0 + d[4],
        d[3] + d[4] - (d[1] + d[2]) * 4.0,
        (d[1] - d[2]) * 4.0 - d[3] + d[4],
        d[4] - d[2] - (d[1] - d[3]) * 2.0,
        (d[1] - d[3]) * 2.0 - d[2] + d[4],
        d[1] * 4.0 - d[3] * 5.0 + d[5],
    ]
}

/// `B v` (the adjoint of [`bt`]).
#[inline(always)]
fn b<T: Lane>(v: [T; 6]) -> [T; 6] {
    [
        v[0] * 4.0,
        v[5] * 4.0 - (v[1] - v[2]) * 4.0 - (v[3] - v[4]) * 2.0,
        v[0] * -5.0 - (v[1] + v[2]) * 4.0 - v[3] - v[4],
        v[1] - v[2] + (v[3] - v[4]) * 2.0 - v[5] * 5.0,
        v[0] + v[1] + v[2] + v[3] + v[4],
        v[5],
    ]
}

/// `Aᵀ m`.
#[inline(always)]
fn at<T: Lane>(m: [T; 6]) -> [T; 4] {
    let (s12, d12) = (m[1] + m[2], m[1] - m[2]);
    let (s34, d34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + d34 * 2.0,
        s12 + s34 * 4.0,
        d12 + d34 * 8.0 + m[5],
    ]
}

/// `A y` (the adjoint of [`at`]).
#[inline(always)]
fn a<T: Lane>(y: [T; 4]) -> [T; 6] {
    let (s02, s13) = (y[0] + y[2], y[1] + y[3]);
    let (q02, q13) = (y[0] + y[2] * 4.0, y[1] * 2.0 + y[3] * 8.0);
    [y[0], s02 + s13, s02 - s13, q02 + q13, q02 - q13, y[3]]
}

const SIXTH: f32 = 1.0 / 6.0;
const TWELFTH: f32 = 1.0 / 12.0;
const TWENTY_FOURTH: f32 = 1.0 / 24.0;

/// `G g` for one kernel row or column.
#[inline(always)]
fn gk(g: [f32; 3]) -> [f32; 6] {
    [
        0.25 * g[0],
        -(g[0] + g[1] + g[2]) * SIXTH,
        -(g[0] - g[1] + g[2]) * SIXTH,
        g[0] * TWENTY_FOURTH + g[1] * TWELFTH + g[2] * SIXTH,
        g[0] * TWENTY_FOURTH - g[1] * TWELFTH + g[2] * SIXTH,
        g[2],
    ]
}

/// `Gᵀ u` (the adjoint of [`gk`]).
#[inline(always)]
fn gkt(u: [f32; 6]) -> [f32; 3] {
    [
        0.25 * u[0] - (u[1] + u[2]) * SIXTH + (u[3] + u[4]) * TWENTY_FOURTH,
        (u[2] - u[1]) * SIXTH + (u[3] - u[4]) * TWELFTH,
        (u[3] + u[4] - u[1] - u[2]) * SIXTH + u[5],
    ]
}

/// Repeats `body` with `$p` bound to each literal as a constant: full unrolling, so every index
/// into a tile is a constant and the tile lives in registers.
macro_rules! unroll {
    ($p:ident in [$($n:literal),*] $body:block) => {
        $({
            const $p: usize = $n;
            $body
        })*
    };
}

/// A 2-D tile transform in place on a row-major tile of lanes (row stride 6): the 1-D
/// transform `$f` (the first list's indices in, the second's out) along each input column, then
/// along each output row. A macro, so `$f` is called by name (and inlined) with
/// constant indices: the tile stays in registers.
macro_rules! sep2 {
    ($t:ident, $f:ident, [$($i:literal),*], [$($o:literal),*]) => {{
        unroll!(J in [$($i),*] {
            let v = [$($t[J + $i * A6]),*];
            let r = $f(v);
            unroll!(K in [$($o),*] {
                $t[J + K * A6] = r[K];
            });
        });
        unroll!(I in [$($o),*] {
            let v = [$($t[I * A6 + $i]),*];
            let r = $f(v);
            unroll!(K in [$($o),*] {
                $t[I * A6 + K] = r[K];
            });
        });
    }};
}

/// The tile transforms [`lanes`] applies (a const parameter, so every index folds): `Bᵀ d B`,
/// 6×6 → 6×6.
const INPUT: u8 = 0;
/// `B v Bᵀ`: 6×6 → 6×6.
const INPUT_GRAD: u8 = 1;
/// `Aᵀ m A`: 6×6 → 4×4.
const OUTPUT: u8 = 2;
/// `A y Aᵀ`: 4×4 → 6×6.
const OUTPUT_GRAD: u8 = 3;

/// Applies transform `TX` (`INPUT`: `Bᵀ d B`, 6×6 → 6×6; and the others above) in place.
#[inline(always)]
fn apply<T: Lane, const TX: u8>(t: &mut [T; 36]) {
    match TX {
        INPUT => sep2!(t, bt, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]),
        INPUT_GRAD => sep2!(t, b, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]),
        OUTPUT => sep2!(t, at, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3]),
        _ => sep2!(t, a, [0, 1, 2, 3], [0, 1, 2, 3, 4, 5]),
    }
}

/// The side of a tile of `n` values (16 or 36).
const fn side(n: usize) -> usize {
    if n == 16 { M4 } else { A6 }
}

/// Where a tile transform writes: a flat buffer at per-position offsets (plus the tile's base),
/// or the 36 position blocks of one image at the tile's row.
trait Dst {
    /// The `len` values of position `p` from lane `k`, for the current tile.
    fn slot(&mut self, p: usize, k: usize, len: usize) -> &mut [f32];
}

/// A flat buffer: position p of the tile at `base + offs[p]`.
struct Flat<'a, 'o> {
    buf: &'a mut [f32],
    offs: &'o [usize],
    base: usize,
}

impl Dst for Flat<'_, '_> {
    #[inline(always)]
    fn slot(&mut self, p: usize, k: usize, len: usize) -> &mut [f32] {
        &mut self.buf[self.base + self.offs[p] + k..][..len]
    }
}

/// The position blocks of one image: position p of the tile at `rows[p][start..]`.
struct Blocks<'a, 'b> {
    rows: &'a mut [&'b mut [f32]],
    start: usize,
}

impl Dst for Blocks<'_, '_> {
    #[inline(always)]
    fn slot(&mut self, p: usize, k: usize, len: usize) -> &mut [f32] {
        &mut self.rows[p][self.start + k..][..len]
    }
}

/// One tile of transform `TX` over `l` lanes (channels): position p reads
/// `src[base + offs[p] + k]` (row-major over the input side), writes (or, with `add`, adds to)
/// `dst`'s slot p; sixteen lanes at a time in vector registers, then eight, then the rest one
/// by one. Every lane is computed by the same operations whatever the width, so the result
/// does not depend on how the channels were grouped.
#[inline(always)]
fn lanes<const I: usize, const O: usize, const TX: u8>(
    src: &[f32],
    at: (&[usize; I], usize),
    dst: &mut impl Dst,
    l: usize,
    add: bool,
) {
    let mut k = 0;
    while k + 16 <= l {
        lanes_n::<16, I, O, TX>(src, at, dst, k, add);
        k += 16;
    }
    if k + 8 <= l {
        lanes_n::<8, I, O, TX>(src, at, dst, k, add);
        k += 8;
    }
    let (offs, base) = at;
    let (si, so) = (side(I), side(O));
    let mut t1 = [0f32; 36];
    for k in k..l {
        unroll!(Q in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35] {
            if Q < I {
                t1[(Q / si) * A6 + Q % si] = src[base + offs[Q] + k];
            }
        });
        apply::<f32, TX>(&mut t1);
        unroll!(Q in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35] {
            if Q < O {
                let v = t1[(Q / so) * A6 + Q % so];
                let d = &mut dst.slot(Q, k, 1)[0];
                if add {
                    *d += v;
                } else {
                    *d = v;
                }
            }
        });
    }
}

/// Lanes `k .. k + N` of one tile of [`lanes`].
#[inline(always)]
fn lanes_n<const N: usize, const I: usize, const O: usize, const TX: u8>(
    src: &[f32],
    (offs, base): (&[usize; I], usize),
    dst: &mut impl Dst,
    k: usize,
    add: bool,
) {
    let (si, so) = (side(I), side(O));
    let mut t = [Fx::<N>::ZERO; 36];
    unroll!(Q in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35] {
        if Q < I {
            t[(Q / si) * A6 + Q % si] = Fx::<N>::load(&src[base + offs[Q] + k..]);
        }
    });
    apply::<Fx<N>, TX>(&mut t);
    unroll!(Q in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35] {
        if Q < O {
            let v = t[(Q / so) * A6 + Q % so];
            let d = dst.slot(Q, k, N);
            if add {
                v.add_to(d);
            } else {
                v.store(d);
            }
        }
    });
}

/// Offsets of a tile's `side × side` positions in a channel-last plane `width` pixels wide with
/// `c` channels.
fn tile_offsets<const N: usize>(width: usize, c: usize) -> [usize; N] {
    let s = side(N);
    let mut o = [0; N];
    for (p, v) in o.iter_mut().enumerate() {
        *v = ((p / s) * width + p % s) * c;
    }
    o
}

/// Offsets of the 36 positions of one tile row in a `[36][N·T][width]` buffer.
fn position_offsets(nt: usize, width: usize) -> [usize; P] {
    let mut o = [0; P];
    for (p, v) in o.iter_mut().enumerate() {
        *v = p * nt * width;
    }
    o
}

/// `U [36][C][O]` from weights (O, C, 3, 3): `G g Gᵀ` per kernel, one input channel per task.
pub(super) fn kernel_transform(w: &[f32], o: usize, c: usize) -> Buf {
    // By input channel ([C][36][O]) in parallel, then laid out by position; both buffers are
    // written whole.
    let mut by_channel = Buf::scratch(c * P * o);
    by_channel
        .par_chunks_exact_mut(P * o)
        .enumerate()
        .for_each(|(cc, part)| kernel_transform_channel(w, o, c, cc, part));
    let mut u = Buf::scratch(P * c * o);
    u.par_chunks_exact_mut(c * o)
        .enumerate()
        .for_each(|(pos, up)| {
            for (cc, row) in up.chunks_exact_mut(o).enumerate() {
                row.copy_from_slice(&by_channel[(cc * P + pos) * o..][..o]);
            }
        });
    u
}

simd_kernel! {
    /// The transforms `[36][O]` of input channel `cc`'s kernels.
    fn kernel_transform_channel<'a>(w: &'a [f32], o: usize, c: usize, cc: usize, part: &'a mut [f32]) {
        for oo in 0..o {
            let g = &w[(oo * c + cc) * 9..][..9];
            let cols: [[f32; 6]; 3] = [
                gk([g[0], g[3], g[6]]),
                gk([g[1], g[4], g[7]]),
                gk([g[2], g[5], g[8]]),
            ];
            for i in 0..A6 {
                let row = gk([cols[0][i], cols[1][i], cols[2][i]]);
                for (jj, v) in row.into_iter().enumerate() {
                    part[(i * A6 + jj) * o + oo] = v;
                }
            }
        }
    }
}

/// The weight gradient (O, C, 3, 3) from `dU [36][C][O]`: `Gᵀ dU G` per kernel, one output
/// channel per task.
pub(super) fn kernel_grad(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0f32; o * c * 9];
    dw.par_chunks_exact_mut(c * 9)
        .enumerate()
        .for_each(|(oo, part)| kernel_grad_channel(du, o, c, oo, part));
    dw
}

simd_kernel! {
    /// Output channel `oo`'s kernel gradients (C, 3, 3) from `dU`.
    fn kernel_grad_channel<'a>(du: &'a [f32], o: usize, c: usize, oo: usize, part: &'a mut [f32]) {
        for (cc, g) in part.chunks_exact_mut(9).enumerate() {
            // Gᵀ along the columns, then along the rows.
            let mut cols = [[0f32; 3]; 6];
            for (j, col) in cols.iter_mut().enumerate() {
                let mut u = [0f32; 6];
                for (i, v) in u.iter_mut().enumerate() {
                    *v = du[((i * A6 + j) * c + cc) * o + oo];
                }
                *col = gkt(u);
            }
            for i in 0..3 {
                let row = gkt([cols[0][i], cols[1][i], cols[2][i], cols[3][i], cols[4][i], cols[5][i]]);
                g[i * 3..][..3].copy_from_slice(&row);
            }
        }
    }
}

/// For each image, the 36 blocks (one per position) of its T rows in a `[36][N·T][width]`
/// buffer: what one image's transform writes.
fn per_image<'a>(buf: &'a mut [f32], g: &Wino, width: usize) -> Vec<Vec<&'a mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = (0..g.n).map(|_| Vec::with_capacity(P)).collect();
    for block in buf.chunks_exact_mut(g.nt() * width) {
        for (n, piece) in block.chunks_exact_mut(g.t() * width).enumerate() {
            out[n].push(piece);
        }
    }
    out
}

/// `V [36][N·T][C]` from channel-last images (N, H, W, C): `Bᵀ d B` per tile, zero padding.
pub(super) fn input_transform(g: &Wino, x: &[f32], v: &mut [f32]) {
    let img = g.h * g.w * g.c;
    let (ph, pw) = g.padded();
    per_image(v, g, g.c)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            // The zero border of the padded plane is never written, so stays zero.
            || vec![0f32; ph * pw * g.c],
            |plane, (n, mut pieces)| input_image(g, &x[n * img..][..img], plane, &mut pieces),
        );
}

simd_kernel! {
    /// One image of [`input_transform`]: copied into the padded plane, then every tile.
    fn input_image<'a, 'b>(g: &'a Wino, xn: &'a [f32], plane: &'a mut [f32], pieces: &'a mut [&'b mut [f32]]) {
        let c = g.c;
        let (_, pw) = g.padded();
        for (r, row) in xn.chunks_exact(g.w * c).enumerate() {
            plane[((r + g.pad) * pw + g.pad) * c..][..g.w * c].copy_from_slice(row);
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

/// `M[ξ] (N·T × O) = V[ξ] (N·T × C) · U[ξ] (C × O)`.
fn multiply(g: &Wino, u: &[f32], v: &[f32], m: &mut [f32]) {
    let (nt, c, o) = (g.nt(), g.c, g.o);
    per_position(
        m,
        (nt, o, c),
        |pos| Mat {
            data: &v[pos * nt * c..][..nt * c],
            rs: c,
            cs: 1,
        },
        |pos| Mat {
            data: &u[pos * c * o..][..c * o],
            rs: o,
            cs: 1,
        },
    );
}

/// The convolution output, channel-last (N, HO, WO, O), from `M`: `Aᵀ m A` per tile into a
/// plane of whole tiles, cropped to the output.
fn output_transform(g: &Wino, m: &[f32], y: &mut [f32]) {
    let img = g.ho * g.wo * g.o;
    y.par_chunks_exact_mut(img).enumerate().for_each_init(
        || vec![0f32; M4 * g.th * M4 * g.tw * g.o],
        |plane, (n, yn)| output_image(g, m, n, yn, plane),
    );
}

simd_kernel! {
    /// One image of [`output_transform`].
    fn output_image<'a>(g: &'a Wino, m: &'a [f32], n: usize, yn: &'a mut [f32], plane: &'a mut [f32]) {
        let (o, t, nt) = (g.o, g.t(), g.nt());
        let pw = M4 * g.tw;
        let src: [usize; P] = position_offsets(nt, o);
        let offs: [usize; 16] = tile_offsets(pw, o);
        for ti in 0..g.th {
            for tj in 0..g.tw {
                let row = (n * t + ti * g.tw + tj) * o;
                let mut dst = Flat { buf: &mut *plane, offs: &offs, base: (M4 * ti * pw + M4 * tj) * o };
                lanes::<P, 16, OUTPUT>(m, (&src, row), &mut dst, o, false);
            }
        }
        for (r, out) in yn.chunks_exact_mut(g.wo * o).enumerate() {
            out.copy_from_slice(&plane[r * pw * o..][..g.wo * o]);
        }
    }
}

/// `Ŷ [36][N·T][O]` from the output's gradient (N, HO, WO, O): `A dY Aᵀ` per tile, positions
/// past the output's edge taken as zero.
fn grad_output_transform(g: &Wino, gy: &[f32], dy: &mut [f32]) {
    let img = g.ho * g.wo * g.o;
    per_image(dy, g, g.o)
        .into_par_iter()
        .enumerate()
        .for_each_init(
            // Whole tiles; what lies past the output stays zero.
            || vec![0f32; M4 * g.th * M4 * g.tw * g.o],
            |plane, (n, mut pieces)| {
                grad_output_image(g, &gy[n * img..][..img], plane, &mut pieces)
            },
        );
}

simd_kernel! {
    /// One image of [`grad_output_transform`].
    fn grad_output_image<'a, 'b>(g: &'a Wino, gn: &'a [f32], plane: &'a mut [f32], pieces: &'a mut [&'b mut [f32]]) {
        let o = g.o;
        let pw = M4 * g.tw;
        for (r, row) in gn.chunks_exact(g.wo * o).enumerate() {
            plane[r * pw * o..][..g.wo * o].copy_from_slice(row);
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

/// The input's gradient, channel-last (N, H, W, C), from `dV`: `B dv Bᵀ` per tile, the
/// overlapping patches added into a padded plane in tile order, then cropped.
fn grad_input_transform(g: &Wino, dv: &[f32], gx: &mut [f32]) {
    let img = g.h * g.w * g.c;
    let (ph, pw) = g.padded();
    gx.par_chunks_exact_mut(img).enumerate().for_each_init(
        || vec![0f32; ph * pw * g.c],
        |plane, (n, gxn)| grad_input_image(g, dv, n, gxn, plane),
    );
}

simd_kernel! {
    /// One image of [`grad_input_transform`].
    fn grad_input_image<'a>(g: &'a Wino, dv: &'a [f32], n: usize, gxn: &'a mut [f32], plane: &'a mut [f32]) {
        let (c, t, nt) = (g.c, g.t(), g.nt());
        let (_, pw) = g.padded();
        plane.fill(0.0);
        let src: [usize; P] = position_offsets(nt, c);
        let offs: [usize; P] = tile_offsets(pw, c);
        for ti in 0..g.th {
            for tj in 0..g.tw {
                let row = (n * t + ti * g.tw + tj) * c;
                let mut dst = Flat { buf: &mut *plane, offs: &offs, base: (M4 * ti * pw + M4 * tj) * c };
                lanes::<P, P, INPUT_GRAD>(dv, (&src, row), &mut dst, c, true);
            }
        }
        for (r, out) in gxn.chunks_exact_mut(g.w * c).enumerate() {
            out.copy_from_slice(&plane[((r + g.pad) * pw + g.pad) * c..][..g.w * c]);
        }
    }
}

/// What the backward pass of one convolution keeps from its forward pass.
#[derive(Debug, Default)]
pub(super) struct Saved {
    /// `U [36][C][O]`.
    u: Buf,
    /// `V [36][N·T][C]`.
    v: Buf,
}

/// The convolution of channel-last `x` (N, H, W, C) by the weights whose transform is `u`
/// ([`kernel_transform`]) into `y` (N, HO, WO, O), with what its backward pass needs (`keep`)
/// or nothing.
pub(super) fn forward(g: &Wino, x: &[f32], u: &[f32], y: &mut [f32], keep: bool) -> Saved {
    let mut v = Buf::scratch(g.v_len());
    input_transform(g, x, &mut v);
    let mut m = Buf::scratch(P * g.nt() * g.o);
    multiply(g, u, &v, &mut m);
    output_transform(g, &m, y);
    if keep {
        let mut kept = Buf::scratch(u.len());
        kept.copy_from_slice(u);
        Saved { u: kept, v }
    } else {
        Saved::default()
    }
}

/// The backward pass's state for channel-last `x` and the weights' transform `u`, without the
/// forward pass's products (for an op that keeps nothing between its passes).
pub(super) fn saved(g: &Wino, x: &[f32], u: Buf) -> Saved {
    let mut v = Buf::scratch(g.v_len());
    input_transform(g, x, &mut v);
    Saved { u, v }
}

/// (dX, channel-last, when asked for; dW) from the output's gradient (N, HO, WO, O).
pub(super) fn backward(
    g: &Wino,
    saved: &Saved,
    gy: &[f32],
    input_grad: bool,
) -> (Option<Buf>, Vec<f32>) {
    assert_eq!(
        saved.v.len(),
        g.v_len(),
        "winograd backward without its forward pass"
    );
    let (nt, c, o) = (g.nt(), g.c, g.o);
    let mut dy = Buf::scratch(P * nt * o);
    grad_output_transform(g, gy, &mut dy);
    let mut du = Buf::scratch(P * c * o);
    per_position(
        &mut du,
        (c, o, nt),
        |pos| Mat {
            data: &saved.v[pos * nt * c..][..nt * c],
            rs: 1,
            cs: c,
        },
        |pos| Mat {
            data: &dy[pos * nt * o..][..nt * o],
            rs: o,
            cs: 1,
        },
    );
    let gw = kernel_grad(&du, o, c);
    let gx = input_grad.then(|| {
        let mut dv = Buf::scratch(P * nt * c);
        per_position(
            &mut dv,
            (nt, c, o),
            |pos| Mat {
                data: &dy[pos * nt * o..][..nt * o],
                rs: o,
                cs: 1,
            },
            |pos| Mat {
                data: &saved.u[pos * c * o..][..c * o],
                rs: 1,
                cs: o,
            },
        );
        let mut gx = Buf::scratch(g.n * g.h * g.w * c);
        grad_input_transform(g, &dv, &mut gx);
        gx
    });
    (gx, gw)
}

#[cfg(test)]
pub(super) mod tests;
