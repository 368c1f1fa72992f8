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
                    copy_shifted(dst, src, j as isize - pad);
                }
            }
        }
    }
}

/// `dst[k] = src[k + shift]` where that lies in `src`, zero elsewhere: one output row of
/// im2col at stride 1 (or of a stride phase), the padding's columns on either side zeroed.
fn copy_shifted(dst: &mut [f32], src: &[f32], shift: isize) {
    let (lo, hi) = inside(src.len(), dst.len(), 1, shift);
    dst[..lo].fill(0.0);
    if hi > lo {
        let s0 = (lo as isize + shift) as usize;
        dst[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
    }
    dst[hi..].fill(0.0);
}

/// [`im2col`] at a stride above 1. Kernels of at least stride² taps (7×7/2, 3×3/2) read each
/// input value several times: the channel is first split into its stride² phases
/// ([`Phases`]), in which every tap's view is a contiguous run, so the rows are copies;
/// smaller kernels (1×1/2) gather the columns straight from the input.
fn im2col_strided(
    g: &Geom,
    x: &[f32],
    col: &mut [f32],
    ld: usize,
    off: usize,
    chans: std::ops::Range<usize>,
) {
    if g.kh * g.kw < g.stride * g.stride {
        return im2col_gather(g, x, col, ld, off, chans);
    }
    let (p, c0) = (g.p(), chans.start);
    PHASES.with_borrow_mut(|buf| {
        for c in chans {
            let ph = Phases::split(g, &x[c * g.h * g.w..][..g.h * g.w], buf);
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &mut col[(((c - c0) * g.kh + i) * g.kw + j) * ld + off..][..p];
                    let (plane, rows, cols, di, dj) = ph.tap(g, i, j);
                    let plane = &ph.v[plane];
                    for oh in 0..g.ho {
                        let dst = &mut row[oh * g.wo..][..g.wo];
                        let r = oh as isize + di;
                        if r < 0 || r >= rows as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        copy_shifted(dst, &plane[r as usize * ph.wp..][..cols], dj);
                    }
                }
            }
        }
    });
}

thread_local! {
    /// [`Phases`]' buffer, one per thread (a channel's values: at most a few tens of KB).
    static PHASES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One channel (H, W) split by a stride s into its s² phases: phase (a, b) holds the values at
/// rows ≡ a and columns ≡ b (mod s), as a plane of `hp` × `wp` (of which
/// ⌈(H − a)/s⌉ × ⌈(W − b)/s⌉ are real). Tap (i, j) of output (oh, ow) reads input
/// (oh·s + i − pad, ow·s + j − pad): with i − pad = s·di + a and j − pad = s·dj + b, that is
/// phase (a, b) at (oh + di, ow + dj) — a contiguous run of the phase's row.
struct Phases<'a> {
    v: &'a mut Vec<f32>,
    hp: usize,
    wp: usize,
}

impl<'a> Phases<'a> {
    /// The phases of an (H, W) channel in `v`, sized but not filled.
    fn sized(g: &Geom, v: &'a mut Vec<f32>) -> Self {
        let s = g.stride;
        let (hp, wp) = (g.h.div_ceil(s), g.w.div_ceil(s));
        v.resize(s * s * hp * wp, 0.0);
        Self { v, hp, wp }
    }

    /// The phases of channel `x` (H, W).
    fn split(g: &Geom, x: &[f32], v: &'a mut Vec<f32>) -> Self {
        let ph = Self::sized(g, v);
        let s = g.stride;
        for a in 0..s {
            for r in 0..g.h.saturating_sub(a).div_ceil(s) {
                let src = &x[(r * s + a) * g.w..][..g.w];
                for b in 0..s {
                    let dst = &mut ph.v[((a * s + b) * ph.hp + r) * ph.wp..][..ph.wp];
                    for (d, &val) in dst.iter_mut().zip(src[b..].iter().step_by(s)) {
                        *d = val;
                    }
                }
            }
        }
        ph
    }

    /// Zeroed phases of an (H, W) channel, to accumulate a gradient in.
    fn zeroed(g: &Geom, v: &'a mut Vec<f32>) -> Self {
        v.clear();
        Self::sized(g, v)
    }

    /// Where tap (i, j) reads: its phase plane's range in the buffer, the plane's real rows
    /// and columns, and the shifts (di, dj).
    fn tap(
        &self,
        g: &Geom,
        i: usize,
        j: usize,
    ) -> (std::ops::Range<usize>, usize, usize, isize, isize) {
        let s = g.stride as isize;
        let (ti, tj) = (i as isize - g.pad as isize, j as isize - g.pad as isize);
        let (a, b) = (ti.rem_euclid(s) as usize, tj.rem_euclid(s) as usize);
        let len = self.hp * self.wp;
        let plane = (a * g.stride + b) * len..(a * g.stride + b + 1) * len;
        let rows = g.h.saturating_sub(a).div_ceil(g.stride);
        let cols = g.w.saturating_sub(b).div_ceil(g.stride);
        (plane, rows, cols, ti.div_euclid(s), tj.div_euclid(s))
    }

    /// Writes the phases back into the channel `x` (H, W): the inverse of [`Self::split`].
    fn merge(&self, g: &Geom, x: &mut [f32]) {
        let s = g.stride;
        for a in 0..s {
            for r in 0..g.h.saturating_sub(a).div_ceil(s) {
                let dst = &mut x[(r * s + a) * g.w..][..g.w];
                for b in 0..s {
                    let src = &self.v[((a * s + b) * self.hp + r) * self.wp..][..self.wp];
                    for (d, &val) in dst[b..].iter_mut().step_by(s).zip(src) {
                        *d = val;
                    }
                }
            }
        }
    }
}

/// [`im2col`] at a stride above 1, gathering: output column `ow` of tap `j` reads input column
/// `ow·stride + j − pad`; the columns that read inside the row are gathered without a test
/// each, the padding's on either side filled with zeros.
fn im2col_gather(
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

/// The adjoint of [`im2col_strided`]: through the phases where it splits them (each row
/// added as a contiguous run, then the phases merged into the channel), value by value
/// otherwise.
fn col2im_strided(g: &Geom, col: &[f32], x: &mut [f32], ld: usize, off: usize) {
    if g.kh * g.kw < g.stride * g.stride {
        return col2im_scatter(g, col, x, ld, off);
    }
    let p = g.p();
    PHASES.with_borrow_mut(|buf| {
        for c in 0..g.c {
            let ph = Phases::zeroed(g, buf);
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = &col[((c * g.kh + i) * g.kw + j) * ld + off..][..p];
                    let (plane, rows, cols, di, dj) = ph.tap(g, i, j);
                    let wp = ph.wp;
                    let plane = &mut ph.v[plane];
                    let (lo, hi) = inside(cols, g.wo, 1, dj);
                    if hi <= lo {
                        continue;
                    }
                    for oh in 0..g.ho {
                        let r = oh as isize + di;
                        if r < 0 || r >= rows as isize {
                            continue;
                        }
                        let s0 = (lo as isize + dj) as usize;
                        let dst = &mut plane[r as usize * wp + s0..][..hi - lo];
                        for (d, v) in dst.iter_mut().zip(&row[oh * g.wo + lo..oh * g.wo + hi]) {
                            *d += v;
                        }
                    }
                }
            }
            ph.merge(g, &mut x[c * g.h * g.w..][..g.h * g.w]);
        }
    });
}

/// [`col2im_strided`] value by value (kernels of fewer than stride² taps).
fn col2im_scatter(g: &Geom, col: &[f32], x: &mut [f32], ld: usize, off: usize) {
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
