//! The tile arithmetic of F(4×4, 3×3): the 1-D transforms and their adjoints, the 2-D tile
//! transforms on lanes of channels, where a transformed tile is written, and the kernel
//! transform `U = G g Gᵀ` with its adjoint.

use rayon::prelude::*;

use super::{A6, M4, P};
use crate::kernels::lane::{Fx, Lane};
use crate::kernels::scratch::Buf;
use crate::kernels::transpose::{Strided, transpose_into, transposed};

// The 1-D transforms: Bᵀ (input), Aᵀ (output), G (kernel) of F(4, 3) with the points 0, ±1,
// ±2, ∞, and their adjoints for the backward pass; generic over the lane type.

/// `Bᵀ d`.
#[inline(always)]
pub(super) fn bt<T: Lane>(d: [T; 6]) -> [T; 6] {
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
pub(super) fn b<T: Lane>(v: [T; 6]) -> [T; 6] {
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
pub(super) fn at<T: Lane>(m: [T; 6]) -> [T; 4] {
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
pub(super) fn a<T: Lane>(y: [T; 4]) -> [T; 6] {
    let (s02, s13) = (y[0] + y[2], y[1] + y[3]);
    let (q02, q13) = (y[0] + y[2] * 4.0, y[1] * 2.0 + y[3] * 8.0);
    [y[0], s02 + s13, s02 - s13, q02 + q13, q02 - q13, y[3]]
}

pub(super) const SIXTH: f32 = 1.0 / 6.0;
pub(super) const TWELFTH: f32 = 1.0 / 12.0;
pub(super) const TWENTY_FOURTH: f32 = 1.0 / 24.0;

/// `G g` for one kernel row or column, on any lane type (each lane one kernel).
#[inline(always)]
pub(super) fn gk<T: Lane>(g: [T; 3]) -> [T; 6] {
    [
        g[0] * 0.25,
        (g[0] + g[1] + g[2]) * -SIXTH,
        (g[0] - g[1] + g[2]) * -SIXTH,
        g[0] * TWENTY_FOURTH + g[1] * TWELFTH + g[2] * SIXTH,
        g[0] * TWENTY_FOURTH - g[1] * TWELFTH + g[2] * SIXTH,
        g[2],
    ]
}

/// `Gᵀ u` (the adjoint of [`gk`]).
#[inline(always)]
pub(super) fn gkt<T: Lane>(u: [T; 6]) -> [T; 3] {
    [
        u[0] * 0.25 - (u[1] + u[2]) * SIXTH + (u[3] + u[4]) * TWENTY_FOURTH,
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
pub(super) const INPUT: u8 = 0;
/// `B v Bᵀ`: 6×6 → 6×6.
pub(super) const INPUT_GRAD: u8 = 1;
/// `Aᵀ m A`: 6×6 → 4×4.
pub(super) const OUTPUT: u8 = 2;
/// `A y Aᵀ`: 4×4 → 6×6.
pub(super) const OUTPUT_GRAD: u8 = 3;

/// Applies transform `TX` (`INPUT`: `Bᵀ d B`, 6×6 → 6×6; and the others above) in place.
#[inline(always)]
pub(super) fn apply<T: Lane, const TX: u8>(t: &mut [T; 36]) {
    match TX {
        INPUT => sep2!(t, bt, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]),
        INPUT_GRAD => sep2!(t, b, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]),
        OUTPUT => sep2!(t, at, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3]),
        _ => sep2!(t, a, [0, 1, 2, 3], [0, 1, 2, 3, 4, 5]),
    }
}

/// The side of a tile of `n` values (16 or 36).
pub(super) const fn side(n: usize) -> usize {
    if n == 16 { M4 } else { A6 }
}

/// Where a tile transform writes: a flat buffer at per-position offsets (plus the tile's base),
/// or the 36 position blocks of one image at the tile's row.
pub(super) trait Dst {
    /// The `len` values of position `p` from lane `k`, for the current tile.
    fn slot(&mut self, p: usize, k: usize, len: usize) -> &mut [f32];
}

/// A flat buffer: position p of the tile at `base + offs[p]`.
pub(super) struct Flat<'a, 'o> {
    pub(super) buf: &'a mut [f32],
    pub(super) offs: &'o [usize],
    pub(super) base: usize,
}

impl Dst for Flat<'_, '_> {
    #[inline(always)]
    fn slot(&mut self, p: usize, k: usize, len: usize) -> &mut [f32] {
        &mut self.buf[self.base + self.offs[p] + k..][..len]
    }
}

/// The position blocks of one image: position p of the tile at `rows[p][start..]`.
pub(super) struct Blocks<'a, 'b> {
    pub(super) rows: &'a mut [&'b mut [f32]],
    pub(super) start: usize,
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
pub(super) fn lanes<const I: usize, const O: usize, const TX: u8>(
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
pub(super) fn lanes_n<const N: usize, const I: usize, const O: usize, const TX: u8>(
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
pub(super) fn tile_offsets<const N: usize>(width: usize, c: usize) -> [usize; N] {
    let s = side(N);
    let mut o = [0; N];
    for (p, v) in o.iter_mut().enumerate() {
        *v = ((p / s) * width + p % s) * c;
    }
    o
}

/// Offsets of the 36 positions of one tile row in a `[36][N·T][width]` buffer.
pub(super) fn position_offsets(nt: usize, width: usize) -> [usize; P] {
    let mut o = [0; P];
    for (p, v) in o.iter_mut().enumerate() {
        *v = p * nt * width;
    }
    o
}

/// `U = G g Gᵀ` for every kernel of (O, C, 3, 3) weights, laid out `[36][C][O]` (what the
/// forward products read): the weights transposed to (C·9, O), so each input channel's
/// transforms run on lanes of output channels (16 or 8 kernels at a time, read and written
/// contiguously), input channels in parallel, each writing its 36 rows of `U` in place.
pub(in crate::kernels) fn kernel_transform(w: &[f32], o: usize, c: usize) -> Buf {
    let wt = transposed(w, o, c * 9);
    let mut u = Buf::scratch(P * c * o);
    // Input channel cc's rows: position pos at `u[(pos·C + cc)·O ..]`; every row written whole.
    super::by_part(&mut u, c, o)
        .into_par_iter()
        .zip(wt.par_chunks_exact(9 * o))
        .for_each(|(mut part, taps)| kernel_transform_rows(taps, o, &mut part));
    u
}

/// `Uᵀ [36][O][C]`, the same values as [`kernel_transform`] transposed position by position
/// (what the input-gradient products read): each output channel's kernels (C, 9), already
/// contiguous in the weights, transposed in cache to (9, C), their transforms on lanes of input
/// channels, output channels in parallel, each writing its 36 rows in place. No transpose of
/// the whole weights or of `U`.
pub(in crate::kernels) fn kernel_transform_t(w: &[f32], o: usize, c: usize) -> Buf {
    let mut ut = Buf::scratch(P * o * c);
    super::by_part(&mut ut, o, c)
        .into_par_iter()
        .zip(w.par_chunks_exact(c * 9))
        .for_each_init(
            || vec![0f32; 9 * c],
            |rows, (mut part, kernels)| kernel_transform_t_row(kernels, c, rows, &mut part),
        );
    ut
}

/// One output channel's row of `Uᵀ` (36 pieces of `len`) from its `len` kernels (len, 3, 3),
/// transposed to (9, len) in `rows` first.
fn kernel_transform_t_row(kernels: &[f32], len: usize, rows: &mut [f32], part: &mut [&mut [f32]]) {
    let src = Strided {
        data: kernels,
        rows: len,
        cols: 9,
        stride: 9,
    };
    transpose_into(src, rows, len);
    kernel_transform_rows(rows, len, part);
}

/// `U [36][C][o]` of a block of `o` output channels' kernels `w` (o, C, 3, 3), on the calling
/// thread, into `u`: the same values as their columns of [`kernel_transform`]. `wt` is room
/// for the (C·9, o) transpose of the block's weights.
pub(super) fn kernel_transform_block(w: &[f32], o: usize, c: usize, wt: &mut [f32], u: &mut [f32]) {
    let src = Strided {
        data: w,
        rows: o,
        cols: c * 9,
        stride: c * 9,
    };
    transpose_into(src, wt, o);
    for (cc, taps) in wt.chunks_exact(9 * o).enumerate() {
        let mut part = rows_of(u, o, (cc, c));
        kernel_transform_rows(taps, o, &mut part);
    }
}

/// The 36 rows of `len` values of row `r` in a `[36][rows][len]` buffer (no allocation: the
/// blocks' transforms take them once per row).
fn rows_of(buf: &mut [f32], len: usize, (r, rows): (usize, usize)) -> [&mut [f32]; P] {
    let mut it = buf.chunks_exact_mut(len).skip(r).step_by(rows);
    std::array::from_fn(|_| it.next().expect("a [36][rows][len] buffer"))
}

/// `Uᵀ [36][O][len]` of input channels `from..from + len` of the weights (O, C, 3, 3), on the
/// calling thread, into `ut`: the same values as those columns of [`kernel_transform_t`].
/// `rows` is room for 9·len values.
pub(super) fn kernel_transform_t_block(
    w: &[f32],
    (o, c): (usize, usize),
    (from, len): (usize, usize),
    rows: &mut [f32],
    ut: &mut [f32],
) {
    for oo in 0..o {
        let mut part = rows_of(ut, len, (oo, o));
        kernel_transform_t_row(&w[(oo * c + from) * 9..][..len * 9], len, rows, &mut part);
    }
}

/// Lanes `j…j+N` of one row of kernels' transforms: `rows` holds their 9 taps' rows of `len`
/// values, `part` their 36 positions' rows.
#[inline(always)]
fn transform_lanes<const N: usize>(rows: &[f32], len: usize, j: usize, part: &mut [&mut [f32]]) {
    // Loops, not `array::from_fn`: a closure compiled out of line would lose the vector
    // width of the `simd_kernel!` that calls this.
    let mut g = [Fx::<N>::ZERO; 9];
    for (k, v) in g.iter_mut().enumerate() {
        *v = Fx::load(&rows[k * len + j..]);
    }
    let cols = [
        gk([g[0], g[3], g[6]]),
        gk([g[1], g[4], g[7]]),
        gk([g[2], g[5], g[8]]),
    ];
    for i in 0..A6 {
        let row = gk([cols[0][i], cols[1][i], cols[2][i]]);
        for (jj, v) in row.into_iter().enumerate() {
            v.store(&mut part[i * A6 + jj][j..]);
        }
    }
}

simd_kernel! {
    /// The transforms (36 rows of `len`) of a row of `len` kernels (one input channel's for
    /// `U`, one output channel's for `Uᵀ`), from their taps' rows `[9][len]`. Each kernel's
    /// arithmetic is the same whatever its lane, so `U` and `Uᵀ` hold the same bits.
    fn kernel_transform_rows<'a, 'b>(rows: &'a [f32], len: usize, part: &'a mut [&'b mut [f32]]) {
        let mut j = 0;
        while j + 16 <= len {
            transform_lanes::<16>(rows, len, j, part);
            j += 16;
        }
        while j + 8 <= len {
            transform_lanes::<8>(rows, len, j, part);
            j += 8;
        }
        while j < len {
            transform_lanes::<1>(rows, len, j, part);
            j += 1;
        }
    }
}

/// The weight gradient (O, C, 3, 3) from `dUᵀ [36][O][C]`: `Gᵀ dU G` per kernel on lanes of
/// input channels, output channels in parallel, each into (9, C) and transposed in cache to
/// its (C, 9) rows of the result.
pub(in crate::kernels) fn kernel_grad_t(dut: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut dw = vec![0f32; o * c * 9];
    dw.par_chunks_exact_mut(c * 9).enumerate().for_each_init(
        || vec![0f32; 9 * c],
        |rows, (oo, out)| kernel_grad_one(dut, (o, c), oo, rows, out),
    );
    dw
}

/// Output channel `oo`'s kernel gradients `out` (C, 3, 3) from `dUᵀ [36][o][C]`, through
/// `rows` (room for 9·C values).
fn kernel_grad_one(
    dut: &[f32],
    (o, c): (usize, usize),
    oo: usize,
    rows: &mut [f32],
    out: &mut [f32],
) {
    kernel_grad_row(dut, c, o, oo, rows);
    let src = Strided {
        data: rows,
        rows: 9,
        cols: c,
        stride: c,
    };
    transpose_into(src, out, 9);
}

/// [`kernel_grad_t`] on the calling thread for a block of `o` output channels: their
/// gradients `dw` (o, C, 3, 3) from their `dUᵀ [36][o][C]`; `rows` is room for 9·C values.
pub(super) fn kernel_grad_block(dut: &[f32], o: usize, c: usize, rows: &mut [f32], dw: &mut [f32]) {
    for (oo, out) in dw.chunks_exact_mut(c * 9).enumerate() {
        kernel_grad_one(dut, (o, c), oo, rows, out);
    }
}

/// Lanes `j…j+N` of row `r`'s kernel gradients (`dUᵀ` holds `rows` rows of `len` per
/// position), written to its 9 taps' rows.
#[inline(always)]
fn grad_lanes<const N: usize>(
    du: &[f32],
    (len, rows, r): (usize, usize, usize),
    j: usize,
    part: &mut [f32],
) {
    // Gᵀ along the columns, then along the rows.
    // Loops, not `array::from_fn`: see `transform_lanes`.
    let mut cols = [[Fx::<N>::ZERO; 3]; 6];
    for (jc, col) in cols.iter_mut().enumerate() {
        let mut d = [Fx::<N>::ZERO; 6];
        for (i, v) in d.iter_mut().enumerate() {
            *v = Fx::load(&du[((i * A6 + jc) * rows + r) * len + j..]);
        }
        *col = gkt(d);
    }
    for i in 0..3 {
        let row = gkt([
            cols[0][i], cols[1][i], cols[2][i], cols[3][i], cols[4][i], cols[5][i],
        ]);
        for (k, v) in row.into_iter().enumerate() {
            v.store(&mut part[(i * 3 + k) * len + j..]);
        }
    }
}

simd_kernel! {
    /// Row `r`'s kernel gradients `[9][len]` from a `[36][rows][len]` transform gradient.
    fn kernel_grad_row<'a>(du: &'a [f32], len: usize, rows: usize, r: usize, part: &'a mut [f32]) {
        let mut j = 0;
        while j + 16 <= len {
            grad_lanes::<16>(du, (len, rows, r), j, part);
            j += 16;
        }
        while j + 8 <= len {
            grad_lanes::<8>(du, (len, rows, r), j, part);
            j += 8;
        }
        while j < len {
            grad_lanes::<1>(du, (len, rows, r), j, part);
            j += 1;
        }
    }
}
