//! 2×2 max-pooling of a BatchNorm + ReLU activation, channel-last, and its gradient.

use rayon::prelude::*;

use crate::kernels::scratch::Buf;

/// The window position (0–3, row-major in the 2×2 window) of each pooled value's maximum, or
/// `NO_MAX` where that maximum is not positive (no gradient).
pub(in crate::kernels) const NO_MAX: u8 = 4;

/// 2×2 max-pooling of `relu(a·y + b)` (a and b per channel) over channel-last `y` (N, H, W, C)
/// into (N, H/2, W/2, C) (odd trailing rows and columns dropped), recording where each maximum
/// came from. The activation is computed as it is read, as [`affine_relu`](super::affine_relu)
/// computes it.
pub(in crate::kernels) fn max_pool2(
    z: &[f32],
    (a, b): (&[f32], &[f32]),
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> (Buf, Vec<u8>) {
    let (hp, wp) = (h / 2, w / 2);
    let (img, pimg) = (h * w * c, hp * wp * c);
    let mut out = Buf::scratch(n * pimg);
    let mut arg = vec![NO_MAX; n * pimg];
    if pimg == 0 {
        return (out, arg);
    }
    out.par_chunks_exact_mut(pimg)
        .zip(arg.par_chunks_exact_mut(pimg))
        .enumerate()
        .for_each(|(nn, (on, an))| pool_image(&z[nn * img..][..img], (a, b), (h, w, c), on, an));
    (out, arg)
}

simd_kernel! {
/// One image of [`max_pool2`].
fn pool_image<'a>(zn: &'a [f32], ab: (&'a [f32], &'a [f32]), hwc: (usize, usize, usize), on: &'a mut [f32], an: &'a mut [u8]) {
    let (h, w, c) = hwc;
    let (a, b) = (&ab.0[..c], &ab.1[..c]);

    let (hp, wp) = (h / 2, w / 2);
    for i in 0..hp {
        for j in 0..wp {
            let px = |di: usize, dj: usize| &zn[((2 * i + di) * w + 2 * j + dj) * c..][..c];
            let (p0, p1, p2, p3) = (px(0, 0), px(0, 1), px(1, 0), px(1, 1));
            let k = (i * wp + j) * c;
            let (op, ap) = (&mut on[k..][..c], &mut an[k..][..c]);
            for ch in 0..c {
                let act = |v: f32| (a[ch] * v + b[ch]).max(0.0);
                let (v0, v1, v2, v3) = (act(p0[ch]), act(p1[ch]), act(p2[ch]), act(p3[ch]));
                // Branch-free; the first maximum wins ties.
                let (m01, m23) = (v0.max(v1), v2.max(v3));
                let i01 = u8::from(v1 > v0);
                let i23 = 2 + u8::from(v3 > v2);
                let m = m01.max(m23);
                op[ch] = m;
                let at = if m23 > m01 { i23 } else { i01 };
                ap[ch] = if m > 0.0 { at } else { NO_MAX };
            }
        }
    }
}
}

/// The gradient of [`max_pool2`]: each pooled gradient goes to its window's maximum.
pub(in crate::kernels) fn unpool2(
    gp: &[f32],
    arg: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
) -> Buf {
    let (hp, wp) = (h / 2, w / 2);
    let (img, pimg) = (h * w * c, hp * wp * c);
    let mut gz = Buf::zeroed(n * img);
    if pimg == 0 {
        return gz;
    }
    gz.par_chunks_exact_mut(img)
        .enumerate()
        .for_each(|(nn, gn)| {
            let (gpn, an) = (&gp[nn * pimg..][..pimg], &arg[nn * pimg..][..pimg]);
            for i in 0..hp {
                for j in 0..wp {
                    let k = (i * wp + j) * c;
                    for ch in 0..c {
                        let at = an[k + ch];
                        if at != NO_MAX {
                            let (di, dj) = (usize::from(at / 2), usize::from(at % 2));
                            gn[((2 * i + di) * w + 2 * j + dj) * c + ch] = gpn[k + ch];
                        }
                    }
                }
            }
        });
    gz
}
