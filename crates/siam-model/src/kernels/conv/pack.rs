//! im2col packing and its adjoint col2im: one image (C, H, W) to the column matrix
//! (C·KH·KW, HO·WO) of its kernel taps, at stride 1 a contiguous output row at a time.

use super::Geom;

/// Packs one image (C, H, W) into col (C·KH·KW, HO·WO): each row holds one kernel tap's view
/// of the (zero-padded) input, copied a contiguous output row at a time.
pub(in crate::kernels) fn im2col(g: &Geom, x: &[f32], col: &mut [f32]) {
    im2col_ld(g, x, col, g.p(), 0);
}

/// [`im2col`] into columns `off..off + HO·WO` of a matrix whose rows are `ld` long (a part
/// of images packed side by side).
pub(super) fn im2col_ld(g: &Geom, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    im2col_rows(g, x, col, ld, off, 0..g.c)
}

/// [`im2col_ld`] of input channels `chans` only, into a matrix whose first row is channel
/// `chans.start`'s first tap.
pub(super) fn im2col_rows(
    g: &Geom,
    x: &[f32],
    col: &mut [f32],
    ld: usize,
    off: usize,
    chans: std::ops::Range<usize>,
) {
    if g.stride != 1 {
        return im2col_strided(g, x, col, ld, off, chans);
    }
    let (p, pad, c0) = (g.p(), g.pad as isize, chans.start);
    for c in chans {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[(((c - c0) * g.kh + i) * g.kw + j) * ld + off..][..p];
                for oh in 0..g.ho {
                    let dst = &mut row[oh * g.wo..][..g.wo];
                    let ih = oh as isize + i as isize - pad;
                    if ih < 0 || ih >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &x[(c * g.h + ih as usize) * g.w..][..g.w];
                    // Output column ow reads input column ow + j − pad.
                    let lo = (pad - j as isize).clamp(0, g.wo as isize) as usize;
                    let hi = (g.w as isize + pad - j as isize).clamp(0, g.wo as isize) as usize;
                    dst[..lo].fill(0.0);
                    if hi > lo {
                        let s0 = (lo as isize + j as isize - pad) as usize;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                    }
                    dst[hi.max(lo)..].fill(0.0);
                }
            }
        }
    }
}

/// [`im2col`] at a stride above 1: output column `ow` of tap `j` reads input column
/// `ow·stride + j − pad`; the columns that read inside the row are gathered without a test
/// each, the padding's on either side filled with zeros.
fn im2col_strided(
    g: &Geom,
    x: &[f32],
    col: &mut [f32],
    ld: usize,
    off: usize,
    chans: std::ops::Range<usize>,
) {
    let (p, pad, s, c0) = (g.p(), g.pad as isize, g.stride as isize, chans.start);
    for c in chans {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[(((c - c0) * g.kh + i) * g.kw + j) * ld + off..][..p];
                for oh in 0..g.ho {
                    let dst = &mut row[oh * g.wo..][..g.wo];
                    let ih = oh as isize * s + i as isize - pad;
                    if ih < 0 || ih >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &x[(c * g.h + ih as usize) * g.w..][..g.w];
                    let (lo, hi) = inside(g.w, g.wo, s, j as isize - pad);
                    dst[..lo].fill(0.0);
                    if hi > lo {
                        let s0 = (lo as isize * s + j as isize - pad) as usize;
                        for (d, &v) in dst[lo..hi]
                            .iter_mut()
                            .zip(src[s0..].iter().step_by(g.stride))
                        {
                            *d = v;
                        }
                    }
                    dst[hi.max(lo)..].fill(0.0);
                }
            }
        }
    }
}

/// The output columns `lo..hi` whose input column `ow·stride + shift` lies in `0..w`, of `wo`
/// (`lo == hi` when none does).
fn inside(w: usize, wo: usize, stride: isize, shift: isize) -> (usize, usize) {
    // ow·stride + shift ≥ 0 from ⌈−shift / stride⌉; ≤ w − 1 up to ⌊(w − 1 − shift) / stride⌋.
    let lo = if shift >= 0 {
        0
    } else {
        (-shift + stride - 1) / stride
    };
    let last = w as isize - 1 - shift;
    let hi = if last < 0 { 0 } else { last / stride + 1 };
    let lo = (lo as usize).min(wo);
    (lo, (hi as usize).clamp(lo, wo))
}

/// The adjoint of [`im2col_strided`].
fn col2im_strided(g: &Geom, col: &[f32], x: &mut [f32], ld: usize, off: usize) {
    let (p, pad, s) = (g.p(), g.pad as isize, g.stride as isize);
    x.fill(0.0);
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * ld + off..][..p];
                for oh in 0..g.ho {
                    let ih = oh as isize * s + i as isize - pad;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let dst = &mut x[(c * g.h + ih as usize) * g.w..][..g.w];
                    for (ow, &v) in row[oh * g.wo..][..g.wo].iter().enumerate() {
                        let iw = ow as isize * s + j as isize - pad;
                        if iw >= 0 && iw < g.w as isize {
                            dst[iw as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds col (C·KH·KW, HO·WO) back onto one image's gradient (C, H, W): the adjoint of
/// [`im2col`].
pub(in crate::kernels) fn col2im(g: &Geom, col: &[f32], x: &mut [f32]) {
    col2im_ld(g, col, x, g.p(), 0);
}

/// [`col2im`] from columns `off..off + HO·WO` of rows `ld` long.
pub(super) fn col2im_ld(g: &Geom, col: &[f32], x: &mut [f32], ld: usize, off: usize) {
    if g.stride != 1 {
        return col2im_strided(g, col, x, ld, off);
    }
    let (p, pad) = (g.p(), g.pad as isize);
    x.fill(0.0);
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * ld + off..][..p];
                for oh in 0..g.ho {
                    let ih = oh as isize + i as isize - pad;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let dst = &mut x[(c * g.h + ih as usize) * g.w..][..g.w];
                    let src = &row[oh * g.wo..][..g.wo];
                    let lo = (pad - j as isize).clamp(0, g.wo as isize) as usize;
                    let hi = (g.w as isize + pad - j as isize).clamp(0, g.wo as isize) as usize;
                    if hi > lo {
                        let s0 = (lo as isize + j as isize - pad) as usize;
                        for (d, s) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// `inside` is exactly the output columns whose input column lies in the row, for every
    /// small width, output width, stride and shift (padding on either side, none inside).
    #[test]
    fn inside_is_the_columns_that_read_the_row() {
        for w in 0..9 {
            for wo in 0..9 {
                for stride in 1..4isize {
                    for shift in -6..7isize {
                        let (lo, hi) = super::inside(w, wo, stride, shift);
                        let expected: Vec<usize> = (0..wo)
                            .filter(|&ow| (0..w as isize).contains(&(ow as isize * stride + shift)))
                            .collect();
                        let got: Vec<usize> = (lo..hi).collect();
                        assert_eq!(
                            got, expected,
                            "w {w}, wo {wo}, stride {stride}, shift {shift}"
                        );
                    }
                }
            }
        }
    }
}
