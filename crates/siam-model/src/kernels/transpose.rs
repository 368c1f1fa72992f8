//! Matrix transposes for the layout changes around the convolutions (channel-first ⇄
//! channel-last activations, a tap product's rows, weights): on x86-64 with AVX2, 8×8 tiles
//! through registers (eight loads, 24 shuffles, eight stores), about twice as fast as one value
//! at a time; elsewhere, and for the edges that do not fill a tile, blocks of scalar copies.
//! Values are only moved, so every path gives the same result.

use rayon::prelude::*;

use super::scratch::Buf;

/// Side of the square blocks the scalar path copies (cache-friendly reads and writes).
const BLOCK: usize = 16;

/// Side of a register tile.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const TILE: usize = 8;

/// A strided matrix: row `i` is `data[i·stride..][..cols]`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub(super) data: &'a [f32],
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) stride: usize,
}

/// `dst[j·dst_stride + i] = src[i][j]` for every row `i` and column `j` of `src`: its transpose
/// written into `dst`, whose rows are `dst_stride` apart (the values between them untouched).
///
/// Panics if `dst` is too short for `src.cols` rows.
pub(super) fn transpose_into(src: Strided<'_>, dst: &mut [f32], dst_stride: usize) {
    let (m, n) = (src.rows, src.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        src.data.len() >= (m - 1) * src.stride + n && dst.len() >= (n - 1) * dst_stride + m,
        "transpose: {m}x{n} (stride {}) into {} values with stride {dst_stride}",
        src.stride,
        dst.len()
    );
    // The rows and columns the register tiles cover.
    let (mt, nt) = tiled(m, n);
    if mt > 0 && nt > 0 {
        tiles(src, dst, dst_stride, mt, nt);
    }
    // The edges: rows below the tiles, and columns right of them.
    scalar(src, dst, dst_stride, mt..m, 0..n);
    scalar(src, dst, dst_stride, 0..mt, nt..n);
}

/// Copies each image's `rows × cols` matrix in `src` into its transpose (`cols × rows`) in
/// `dst`, images in parallel: (N, C, P) ⇄ (N, P, C).
pub(super) fn transpose_images(src: &[f32], dst: &mut [f32], rows: usize, cols: usize) {
    transpose_images_then(src, dst, rows, cols, |_, _| {});
}

/// [`transpose_images`], then `then(i, image)` on each image `i` of `dst` as soon as it is
/// written (while it is in cache).
pub(super) fn transpose_images_then(
    src: &[f32],
    dst: &mut [f32],
    rows: usize,
    cols: usize,
    then: impl Fn(usize, &mut [f32]) + Sync,
) {
    let img = rows * cols;
    if img == 0 {
        return;
    }
    dst.par_chunks_exact_mut(img)
        .zip(src.par_chunks_exact(img))
        .enumerate()
        .for_each(|(i, (d, s))| {
            let s = Strided {
                data: s,
                rows,
                cols,
                stride: cols,
            };
            transpose_into(s, d, rows);
            then(i, d);
        });
}

/// Rows of the result per task of [`transposed_into`].
const ROWS_PER_TASK: usize = 32;

/// The transpose (cols × rows) of a packed `rows × cols` matrix — weights (O, C·KH·KW) to
/// (C·KH·KW, O), say —, blocks of its rows in parallel.
pub(super) fn transposed(m: &[f32], rows: usize, cols: usize) -> Buf {
    let mut t = Buf::scratch(rows * cols);
    transposed_into(m, rows, cols, &mut t);
    t
}

/// [`transposed`] written into `dst` (`rows · cols` values).
pub(super) fn transposed_into(m: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert_eq!(m.len(), rows * cols, "transposed: a {rows}x{cols} matrix");
    assert_eq!(dst.len(), rows * cols, "transposed: the result's length");
    if rows == 0 || cols == 0 {
        return;
    }
    dst.par_chunks_mut(ROWS_PER_TASK * rows)
        .enumerate()
        .for_each(|(b, d)| {
            let src = Strided {
                data: &m[b * ROWS_PER_TASK..],
                rows,
                cols: d.len() / rows,
                stride: cols,
            };
            transpose_into(src, d, rows);
        });
}

/// Rows and columns covered by whole register tiles (none without the instructions).
fn tiled(m: usize, n: usize) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if pulp::x86::V3::is_available() {
        return (m / TILE * TILE, n / TILE * TILE);
    }
    let _ = (m, n);
    (0, 0)
}

/// The scalar copy of `rows × cols` of `src`, in square blocks.
fn scalar(
    src: Strided<'_>,
    dst: &mut [f32],
    ds: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    for i0 in rows.clone().step_by(BLOCK) {
        for j0 in cols.clone().step_by(BLOCK) {
            for i in i0..(i0 + BLOCK).min(rows.end) {
                let s = &src.data[i * src.stride..];
                for j in j0..(j0 + BLOCK).min(cols.end) {
                    dst[j * ds + i] = s[j];
                }
            }
        }
    }
}

/// The first `mt × nt` values (whole tiles) through AVX registers.
#[cfg(target_arch = "x86_64")]
fn tiles(src: Strided<'_>, dst: &mut [f32], ds: usize, mt: usize, nt: usize) {
    let Some(v) = pulp::x86::V3::try_new() else {
        return scalar(src, dst, ds, 0..mt, 0..nt);
    };
    v.vectorize(
        #[inline(always)]
        || {
            // Tiles down a band of BLOCK rows before moving right: the band's source rows stay
            // in cache while its destination columns fill.
            for i0 in (0..mt).step_by(BLOCK) {
                for j in (0..nt).step_by(TILE) {
                    for i in (i0..(i0 + BLOCK).min(mt)).step_by(TILE) {
                        tile(v, src, dst, ds, i, j);
                    }
                }
            }
        },
    )
}

#[cfg(not(target_arch = "x86_64"))]
fn tiles(src: Strided<'_>, dst: &mut [f32], ds: usize, mt: usize, nt: usize) {
    scalar(src, dst, ds, 0..mt, 0..nt)
}

/// One 8×8 tile from row `i`, column `j` of `src`: the classic unpack / shuffle / 128-bit
/// permute sequence.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tile(v: pulp::x86::V3, src: Strided<'_>, dst: &mut [f32], ds: usize, i: usize, j: usize) {
    use core::arch::x86_64::__m256;
    let a = v.avx;
    let load = |r: usize| -> __m256 {
        let row: [f32; TILE] = src.data[(i + r) * src.stride + j..][..TILE]
            .try_into()
            .expect("a tile row");
        pulp::cast(row)
    };
    let r: [__m256; TILE] = std::array::from_fn(load);
    // Pairs of rows interleaved, then pairs of pairs: each 128-bit half holds a 4×4 transpose.
    let t = [
        a._mm256_unpacklo_ps(r[0], r[1]),
        a._mm256_unpackhi_ps(r[0], r[1]),
        a._mm256_unpacklo_ps(r[2], r[3]),
        a._mm256_unpackhi_ps(r[2], r[3]),
        a._mm256_unpacklo_ps(r[4], r[5]),
        a._mm256_unpackhi_ps(r[4], r[5]),
        a._mm256_unpacklo_ps(r[6], r[7]),
        a._mm256_unpackhi_ps(r[6], r[7]),
    ];
    let s = [
        a._mm256_shuffle_ps::<0x44>(t[0], t[2]),
        a._mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        a._mm256_shuffle_ps::<0x44>(t[1], t[3]),
        a._mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        a._mm256_shuffle_ps::<0x44>(t[4], t[6]),
        a._mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        a._mm256_shuffle_ps::<0x44>(t[5], t[7]),
        a._mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    // Low halves of rows 0–3 with low halves of rows 4–7 give columns 0–3; high halves 4–7.
    let out = [
        a._mm256_permute2f128_ps::<0x20>(s[0], s[4]),
        a._mm256_permute2f128_ps::<0x20>(s[1], s[5]),
        a._mm256_permute2f128_ps::<0x20>(s[2], s[6]),
        a._mm256_permute2f128_ps::<0x20>(s[3], s[7]),
        a._mm256_permute2f128_ps::<0x31>(s[0], s[4]),
        a._mm256_permute2f128_ps::<0x31>(s[1], s[5]),
        a._mm256_permute2f128_ps::<0x31>(s[2], s[6]),
        a._mm256_permute2f128_ps::<0x31>(s[3], s[7]),
    ];
    for (c, o) in out.into_iter().enumerate() {
        let col: [f32; TILE] = pulp::cast(o);
        dst[(j + c) * ds + i..][..TILE].copy_from_slice(&col);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape class: below a tile, whole tiles, tiles with edges on either side, more
    /// than one scalar block; packed and strided on both sides.
    #[test]
    fn transpose_into_matches_the_definition() {
        for (m, n) in [
            (1, 1),
            (3, 5),
            (8, 8),
            (9, 16),
            (16, 9),
            (37, 19),
            (64, 256),
            (256, 4),
        ] {
            for (ss, ds) in [(n, m), (n + 3, m + 5)] {
                let data: Vec<f32> = (0..m * ss).map(|v| v as f32).collect();
                let src = Strided {
                    data: &data,
                    rows: m,
                    cols: n,
                    stride: ss,
                };
                let mut dst = vec![-1f32; n * ds];
                transpose_into(src, &mut dst, ds);
                // The scalar path alone (what CPUs without AVX2 run) gives the same values.
                let mut alone = vec![-1f32; n * ds];
                scalar(src, &mut alone, ds, 0..m, 0..n);
                assert_eq!(alone, dst, "{m}x{n} strides {ss},{ds}: scalar path");
                for j in 0..n {
                    for i in 0..ds {
                        let want = if i < m { data[i * ss + j] } else { -1.0 };
                        assert_eq!(
                            dst[j * ds + i],
                            want,
                            "{m}x{n} strides {ss},{ds}: ({j},{i})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transposed_in_parallel_blocks() {
        for (rows, cols) in [(1, 1), (5, 3), (64, 576), (19, 100)] {
            let m: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
            let t = transposed(&m, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], m[r * cols + c], "{rows}x{cols}: ({r},{c})");
                }
            }
        }
    }
}
