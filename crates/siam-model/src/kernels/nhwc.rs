//! Channel-last (N, H, W, C) building blocks of the fused convnet block: a direct 3×3
//! convolution for inputs with few channels (the first layer on gray or RGB images), BatchNorm
//! statistics, normalisation + ReLU and their gradient, 2×2 max-pooling and its gradient. Every
//! operation is a vector operation over the channels of a pixel.
//!
//! Every reduction over images (batch statistics, weight gradients) is a partial sum per image,
//! computed in parallel, then added in image order: the result is bit-identical for any thread
//! count and any machine load.

use rayon::prelude::*;

use super::add_in_order;
use super::scratch::Buf;
use super::winograd::Wino;

/// Weights (O, C, 3, 3) as `[C·9][O]`: the taps of each input channel with the output channels
/// contiguous.
fn taps_by_output(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0f32; c * 9 * o];
    for oo in 0..o {
        for k in 0..c * 9 {
            t[k * o + oo] = w[oo * c * 9 + k];
        }
    }
    t
}

/// The input pixel a tap reads: output (r, q), tap (i, j), or `None` in the padding.
#[inline(always)]
fn source(g: &Wino, r: usize, q: usize, i: usize, j: usize) -> Option<usize> {
    let (rr, qq) = ((r + i).checked_sub(g.pad)?, (q + j).checked_sub(g.pad)?);
    (rr < g.h && qq < g.w).then_some(rr * g.w + qq)
}

/// Direct 3×3 convolution of channel-last `x` (N, H, W, C) into `y` (N, HO, WO, O).
pub(super) fn direct_forward(g: &Wino, x: &[f32], w: &[f32], y: &mut [f32]) {
    let taps = taps_by_output(w, g.o, g.c);
    let (img, out) = (g.h * g.w * g.c, g.ho * g.wo * g.o);
    y.par_chunks_exact_mut(out)
        .enumerate()
        .for_each(|(n, yn)| direct_image(g, &x[n * img..][..img], &taps, yn));
}

simd_kernel! {
/// One image of [`direct_forward`].
fn direct_image<'a>(g: &'a Wino, xn: &'a [f32], taps: &'a [f32], yn: &'a mut [f32]) {
    let (c, o) = (g.c, g.o);
    for r in 0..g.ho {
        for q in 0..g.wo {
            let acc = &mut yn[(r * g.wo + q) * o..][..o];
            acc.fill(0.0);
            for i in 0..3 {
                for j in 0..3 {
                    let Some(s) = source(g, r, q, i, j) else {
                        continue;
                    };
                    for cc in 0..c {
                        let xv = xn[s * c + cc];
                        let wt = &taps[(cc * 9 + i * 3 + j) * o..][..o];
                        acc.iter_mut().zip(wt).for_each(|(a, &w)| *a += xv * w);
                    }
                }
            }
        }
    }
}
}

/// (dX when asked for, dW (O, C, 3, 3)) of [`direct_forward`] from `gy` (N, HO, WO, O).
pub(super) fn direct_backward(
    g: &Wino,
    x: &[f32],
    w: &[f32],
    gy: &[f32],
    input_grad: bool,
) -> (Option<Buf>, Vec<f32>) {
    let (c, o) = (g.c, g.o);
    let (img, out) = (g.h * g.w * c, g.ho * g.wo * o);
    let parts: Vec<Vec<f32>> = (0..g.n)
        .into_par_iter()
        .map(|n| {
            let mut dt = vec![0f32; c * 9 * o];
            direct_weight_image(g, &x[n * img..][..img], &gy[n * out..][..out], &mut dt);
            dt
        })
        .collect();
    let dt = add_in_order(parts, c * 9 * o);
    let mut gw = vec![0f32; o * c * 9];
    for oo in 0..o {
        for k in 0..c * 9 {
            gw[oo * c * 9 + k] = dt[k * o + oo];
        }
    }
    let gx = input_grad.then(|| {
        let taps = taps_by_output(w, o, c);
        let mut gx = Buf::zeroed(g.n * img);
        gx.par_chunks_exact_mut(img)
            .enumerate()
            .for_each(|(n, gxn)| direct_input_image(g, &gy[n * out..][..out], &taps, gxn));
        gx
    });
    (gx, gw)
}

simd_kernel! {
/// One image's weight gradient of [`direct_forward`], as `[C·9][O]`.
fn direct_weight_image<'a>(g: &'a Wino, xn: &'a [f32], gn: &'a [f32], dt: &'a mut [f32]) {
    let (c, o) = (g.c, g.o);
    for r in 0..g.ho {
        for q in 0..g.wo {
            let gp = &gn[(r * g.wo + q) * o..][..o];
            for i in 0..3 {
                for j in 0..3 {
                    let Some(s) = source(g, r, q, i, j) else {
                        continue;
                    };
                    for cc in 0..c {
                        let xv = xn[s * c + cc];
                        let d = &mut dt[(cc * 9 + i * 3 + j) * o..][..o];
                        d.iter_mut().zip(gp).for_each(|(d, &gv)| *d += xv * gv);
                    }
                }
            }
        }
    }
}
}

simd_kernel! {
/// One image's input gradient of [`direct_forward`] (added into a zeroed `gxn`).
fn direct_input_image<'a>(g: &'a Wino, gn: &'a [f32], taps: &'a [f32], gxn: &'a mut [f32]) {
    let (c, o) = (g.c, g.o);
    for r in 0..g.ho {
        for q in 0..g.wo {
            let gp = &gn[(r * g.wo + q) * o..][..o];
            for i in 0..3 {
                for j in 0..3 {
                    let Some(s) = source(g, r, q, i, j) else {
                        continue;
                    };
                    for cc in 0..c {
                        let wt = &taps[(cc * 9 + i * 3 + j) * o..][..o];
                        gxn[s * c + cc] += wt.iter().zip(gp).map(|(a, b)| a * b).sum::<f32>();
                    }
                }
            }
        }
    }
}
}

/// Per-channel batch statistics of (N, pixels, C) values: the mean and the biased variance,
/// two passes in f64.
pub(super) fn batch_stats(y: &[f32], n: usize, c: usize) -> (Vec<f64>, Vec<f64>) {
    let img = (y.len() / n.max(1)).max(1);
    let count = (y.len() / c.max(1)) as f64;
    let per_image = |centre: Option<&[f64]>| -> Vec<f64> {
        let parts = y
            .par_chunks_exact(img)
            .map(|yn| {
                let mut s = vec![0f64; c];
                channel_sums(yn, centre, &mut s);
                s
            })
            .collect();
        add_in_order(parts, c)
    };
    let mean: Vec<f64> = per_image(None).into_iter().map(|s| s / count).collect();
    let var = per_image(Some(&mean))
        .into_iter()
        .map(|s| s / count)
        .collect();
    (mean, var)
}

simd_kernel! {
/// Per channel, Σ v (no centre) or Σ (v − centre)² over one image's pixels, in f64.
fn channel_sums<'a>(yn: &'a [f32], centre: Option<&'a [f64]>, s: &'a mut [f64]) {
    let c = s.len();
    match centre {
        None => {
            for px in yn.chunks_exact(c) {
                s.iter_mut().zip(px).for_each(|(s, &v)| *s += f64::from(v));
            }
        }
        Some(m) => {
            let m = &m[..c];
            for px in yn.chunks_exact(c) {
                for ((s, &v), &m) in s.iter_mut().zip(px).zip(m) {
                    let d = f64::from(v) - m;
                    *s += d * d;
                }
            }
        }
    }
}
}

/// `z = max(0, a[c]·y + b[c])` over (N, pixels, C).
pub(super) fn affine_relu(y: &[f32], a: &[f32], b: &[f32], z: &mut [f32]) {
    let c = a.len();
    z.par_chunks_mut(c * 1024)
        .zip(y.par_chunks(c * 1024))
        .for_each(|(zc, yc)| affine_relu_run(yc, a, b, zc));
}

simd_kernel! {
fn affine_relu_run<'a>(yc: &'a [f32], a: &'a [f32], b: &'a [f32], zc: &'a mut [f32]) {
    let c = a.len();
    let (a, b) = (&a[..c], &b[..c]);
    for (zp, yp) in zc.chunks_exact_mut(c).zip(yc.chunks_exact(c)) {
        for (((z, &y), &a), &b) in zp.iter_mut().zip(yp).zip(a).zip(b) {
            *z = (a * y + b).max(0.0);
        }
    }
}
}

/// The window position (0–3, row-major in the 2×2 window) of each pooled value's maximum, or
/// `NO_MAX` where that maximum is not positive (no gradient).
const NO_MAX: u8 = 4;

/// 2×2 max-pooling of channel-last (N, H, W, C) into (N, H/2, W/2, C) (odd trailing rows and
/// columns dropped), recording where each maximum came from.
pub(super) fn max_pool2(z: &[f32], n: usize, h: usize, w: usize, c: usize) -> (Buf, Vec<u8>) {
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
        .for_each(|(nn, (on, an))| pool_image(&z[nn * img..][..img], (h, w, c), on, an));
    (out, arg)
}

simd_kernel! {
/// One image of [`max_pool2`].
fn pool_image<'a>(zn: &'a [f32], hwc: (usize, usize, usize), on: &'a mut [f32], an: &'a mut [u8]) {
    let (h, w, c) = hwc;

    let (hp, wp) = (h / 2, w / 2);
    for i in 0..hp {
        for j in 0..wp {
            let px = |di: usize, dj: usize| &zn[((2 * i + di) * w + 2 * j + dj) * c..][..c];
            let (p0, p1, p2, p3) = (px(0, 0), px(0, 1), px(1, 0), px(1, 1));
            let k = (i * wp + j) * c;
            let (op, ap) = (&mut on[k..][..c], &mut an[k..][..c]);
            for ch in 0..c {
                let (v0, v1, v2, v3) = (p0[ch], p1[ch], p2[ch], p3[ch]);
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
pub(super) fn unpool2(gp: &[f32], arg: &[u8], n: usize, h: usize, w: usize, c: usize) -> Buf {
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

/// How a block's BatchNorm normalises.
#[derive(Debug, Clone, Copy)]
pub(super) enum Norm<'a> {
    /// Training: the batch's statistics, with γ, β and ε.
    Batch {
        gamma: &'a [f32],
        beta: &'a [f32],
        eps: f64,
    },
    /// Evaluation: a per-channel scale and shift (γ/√(running var + ε), β − running mean·scale).
    Affine { scale: &'a [f32], shift: &'a [f32] },
}

/// What a BatchNorm + ReLU forward pass keeps for its backward pass.
#[derive(Debug, Clone, Default)]
pub(super) struct NormSaved {
    /// The per-channel scale and shift the forward pass applied.
    pub(super) scale: Vec<f32>,
    pub(super) shift: Vec<f32>,
    /// Batch mode: the batch mean and 1/√(var + ε), and the biased variance (for the running
    /// statistics).
    pub(super) mean: Vec<f32>,
    pub(super) inv_std: Vec<f32>,
    pub(super) var: Vec<f32>,
}

/// `relu(bn(y))` over (N, pixels, C): the output and what the backward pass needs.
pub(super) fn norm_relu_forward(y: &[f32], n: usize, c: usize, norm: Norm<'_>) -> (Buf, NormSaved) {
    let saved = match norm {
        Norm::Batch { gamma, beta, eps } => {
            let (mean, var) = batch_stats(y, n, c);
            let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            let scale: Vec<f32> = (0..c)
                .map(|k| (f64::from(gamma[k]) * inv[k]) as f32)
                .collect();
            let shift: Vec<f32> = (0..c)
                .map(|k| (f64::from(beta[k]) - mean[k] * f64::from(gamma[k]) * inv[k]) as f32)
                .collect();
            NormSaved {
                scale,
                shift,
                mean: mean.iter().map(|&m| m as f32).collect(),
                inv_std: inv.iter().map(|&i| i as f32).collect(),
                var: var.iter().map(|&v| v as f32).collect(),
            }
        }
        Norm::Affine { scale, shift } => NormSaved {
            scale: scale.to_vec(),
            shift: shift.to_vec(),
            ..Default::default()
        },
    };
    let mut z = Buf::scratch(y.len());
    affine_relu(y, &saved.scale, &saved.shift, &mut z);
    (z, saved)
}

/// The backward pass of [`norm_relu_forward`] from the output's gradient `gz`: (dY, and the
/// gradients of the two per-channel parameters — dγ and dβ in batch mode, d(scale) and
/// d(shift) in affine mode). `batch` is γ in batch mode, `None` in affine mode.
pub(super) fn norm_relu_backward(
    y: &[f32],
    gz: &[f32],
    n: usize,
    c: usize,
    s: &NormSaved,
    batch: Option<&[f32]>,
) -> (Buf, Vec<f32>, Vec<f32>) {
    let img = y.len() / n.max(1);
    let count = (y.len() / c.max(1)) as f32;
    // x̂ = (y − mean)·inv in batch mode, y itself in affine mode (the parameter multiplies y).
    let (mean, inv) = match batch {
        Some(_) => (s.mean.clone(), s.inv_std.clone()),
        None => (vec![0f32; c], vec![1f32; c]),
    };
    let (scale, shift) = (&s.scale[..c], &s.shift[..c]);
    let (mean, inv) = (&mean[..c], &inv[..c]);
    // Per image, in f64 over f32 runs of 64 pixels: Σ g and Σ g·x̂, g the gradient where the
    // output is positive.
    let parts: Vec<Vec<f64>> = y
        .par_chunks_exact(img.max(1))
        .zip(gz.par_chunks_exact(img.max(1)))
        .map(|(yn, gn)| {
            let mut acc = vec![0f64; 2 * c];
            norm_sums(yn, gn, (scale, shift, mean, inv), &mut acc);
            acc
        })
        .collect();
    let acc = add_in_order(parts, 2 * c);
    let sg: Vec<f32> = acc[..c].iter().map(|&v| v as f32).collect();
    let sgx: Vec<f32> = acc[c..].iter().map(|&v| v as f32).collect();
    // dY = k1·g − k2 − k3·(y − mean): in batch mode k1 = γ·inv, k2 = k1·Σg/M,
    // k3 = k1·inv·Σ(g·x̂)/M; in affine mode dY = scale·g.
    let (k1, k2, k3): (Vec<f32>, Vec<f32>, Vec<f32>) = match batch {
        Some(gamma) => {
            let k1: Vec<f32> = (0..c).map(|k| gamma[k] * inv[k]).collect();
            let k2 = (0..c).map(|k| k1[k] * sg[k] / count).collect();
            let k3 = (0..c).map(|k| k1[k] * inv[k] * sgx[k] / count).collect();
            (k1, k2, k3)
        }
        None => (scale.to_vec(), vec![0.0; c], vec![0.0; c]),
    };
    let (k1, k2, k3) = (&k1[..c], &k2[..c], &k3[..c]);
    let mut gy = Buf::scratch(y.len());
    gy.par_chunks_mut(c * 1024)
        .zip(y.par_chunks(c * 1024).zip(gz.par_chunks(c * 1024)))
        .for_each(|(gc, (yc, gzc))| norm_grad_run(yc, gzc, (scale, shift, mean), (k1, k2, k3), gc));
    (gy, sgx, sg)
}

/// Per-channel (scale, shift, mean, inv) of [`norm_sums`].
type Channels<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32]);

simd_kernel! {
/// Per channel over one image: Σ g and Σ g·x̂ (into `acc`, 2·C), g the gradient where the
/// output `scale·y + shift` is positive, x̂ = (y − mean)·inv; f32 runs of 64 pixels.
fn norm_sums<'a>(yn: &'a [f32], gn: &'a [f32], ch: Channels<'a>, acc: &'a mut [f64]) {
    let (scale, shift, mean, inv) = ch;

    let c = scale.len();
    let (mut pg, mut pgx) = (vec![0f32; c], vec![0f32; c]);
    for (yr, gr) in yn.chunks(c * 64).zip(gn.chunks(c * 64)) {
        pg.fill(0.0);
        pgx.fill(0.0);
        for (yp, gp) in yr.chunks_exact(c).zip(gr.chunks_exact(c)) {
            for ((((((pg, pgx), &y), &g), &a), &b), (&m, &iv)) in pg
                .iter_mut()
                .zip(pgx.iter_mut())
                .zip(yp)
                .zip(gp)
                .zip(scale)
                .zip(shift)
                .zip(mean.iter().zip(inv))
            {
                let g = if a * y + b > 0.0 { g } else { 0.0 };
                *pg += g;
                *pgx += g * ((y - m) * iv);
            }
        }
        let (sg, sgx) = acc.split_at_mut(c);
        for (a, &p) in sg.iter_mut().zip(&pg) {
            *a += f64::from(p);
        }
        for (a, &p) in sgx.iter_mut().zip(&pgx) {
            *a += f64::from(p);
        }
    }
}
}

simd_kernel! {
/// `dY = k1·g − k2 − k3·(y − mean)` over a run of pixels, g as in [`norm_sums`].
fn norm_grad_run<'a>(yc: &'a [f32], gzc: &'a [f32], ch: (&'a [f32], &'a [f32], &'a [f32]), k: (&'a [f32], &'a [f32], &'a [f32]), gc: &'a mut [f32]) {
    let ((scale, shift, mean), (k1, k2, k3)) = (ch, k);


    let c = scale.len();
    for ((gp, yp), gzp) in gc
        .chunks_exact_mut(c)
        .zip(yc.chunks_exact(c))
        .zip(gzc.chunks_exact(c))
    {
        for (((((((d, &y), &g), &a), &b), &m), (&k1, &k2)), &k3) in gp
            .iter_mut()
            .zip(yp)
            .zip(gzp)
            .zip(scale)
            .zip(shift)
            .zip(mean)
            .zip(k1.iter().zip(k2))
            .zip(k3)
        {
            let g = if a * y + b > 0.0 { g } else { 0.0 };
            *d = k1 * g - k2 - k3 * (y - m);
        }
    }
}
}
