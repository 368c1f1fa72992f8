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
    match g.o {
        16 => direct_image_fixed::<16>(g, xn, taps, yn),
        32 => direct_image_fixed::<32>(g, xn, taps, yn),
        64 => direct_image_fixed::<64>(g, xn, taps, yn),
        _ => direct_image_any(g, xn, taps, yn),
    }
}
}

/// [`direct_image`] for `O` output channels known at compile time: each output pixel's sums
/// stay in registers. The same operations in the same order as [`direct_image_any`] (a product,
/// then a sum, per tap and channel), so the same bits.
#[inline(always)]
fn direct_image_fixed<const O: usize>(g: &Wino, xn: &[f32], taps: &[f32], yn: &mut [f32]) {
    let c = g.c;
    for (px, out) in yn.chunks_exact_mut(O).enumerate() {
        let (r, q) = (px / g.wo, px % g.wo);
        let mut acc = [0f32; O];
        for i in 0..3 {
            for j in 0..3 {
                let Some(s) = source(g, r, q, i, j) else {
                    continue;
                };
                for cc in 0..c {
                    let xv = xn[s * c + cc];
                    let wt: &[f32; O] = taps[(cc * 9 + i * 3 + j) * O..][..O]
                        .try_into()
                        .expect("O taps");
                    for (a, &w) in acc.iter_mut().zip(wt) {
                        *a += xv * w;
                    }
                }
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// [`direct_image`] for any number of output channels.
#[inline(always)]
fn direct_image_any(g: &Wino, xn: &[f32], taps: &[f32], yn: &mut [f32]) {
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
    match (g.c, g.o) {
        (1, 16) => direct_weight_fixed::<16>(g, xn, gn, dt),
        (1, 32) => direct_weight_fixed::<32>(g, xn, gn, dt),
        (1, 64) => direct_weight_fixed::<64>(g, xn, gn, dt),
        _ => direct_weight_any(g, xn, gn, dt),
    }
}
}

/// [`direct_weight_image`] for one input channel and `O` output channels known at compile
/// time: tap by tap, the tap's `O` sums in registers over every output pixel. Each sum takes
/// the same products in the same (pixel) order as in [`direct_weight_any`], so the same bits.
#[inline(always)]
fn direct_weight_fixed<const O: usize>(g: &Wino, xn: &[f32], gn: &[f32], dt: &mut [f32]) {
    for (tap, out) in dt.chunks_exact_mut(O).take(9).enumerate() {
        let (i, j) = (tap / 3, tap % 3);
        let mut acc: [f32; O] = out.try_into().expect("O sums");
        for (px, gp) in gn.chunks_exact(O).enumerate() {
            let (r, q) = (px / g.wo, px % g.wo);
            let Some(s) = source(g, r, q, i, j) else {
                continue;
            };
            let xv = xn[s];
            for (d, &gv) in acc.iter_mut().zip(gp) {
                *d += xv * gv;
            }
        }
        out.copy_from_slice(&acc);
    }
}

/// [`direct_weight_image`] for any channel counts.
#[inline(always)]
fn direct_weight_any(g: &Wino, xn: &[f32], gn: &[f32], dt: &mut [f32]) {
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
    match s.len() {
        16 => channel_sums_fixed::<16>(yn, centre, s),
        32 => channel_sums_fixed::<32>(yn, centre, s),
        64 => channel_sums_fixed::<64>(yn, centre, s),
        128 => channel_sums_fixed::<128>(yn, centre, s),
        _ => channel_sums_any(yn, centre, s),
    }
}
}

/// The generic path of [`channel_sums`] (any channel count).
#[inline(always)]
fn channel_sums_any(yn: &[f32], centre: Option<&[f64]>, s: &mut [f64]) {
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
pub(super) const NO_MAX: u8 = 4;

/// 2×2 max-pooling of `relu(a·y + b)` (a and b per channel) over channel-last `y` (N, H, W, C)
/// into (N, H/2, W/2, C) (odd trailing rows and columns dropped), recording where each maximum
/// came from. The activation is computed as it is read, as [`affine_relu`] computes it.
pub(super) fn max_pool2(
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

/// `relu(bn(y))` over (N, pixels, C) as the per-channel scale and shift of
/// `relu(scale·y + shift)`, with what the backward pass needs. The activation itself is applied
/// by what reads `y` next ([`max_pool2`], Winograd's input transform, or [`affine_relu`]).
pub(super) fn norm_saved(y: &[f32], n: usize, c: usize, norm: Norm<'_>) -> NormSaved {
    match norm {
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
    }
}

/// The backward pass of [`norm_saved`]'s activation from the output's gradient `gz`: (dY, and the
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
    let (grad, dp, dq) = norm_grad(y, gz, n, c, s, batch);
    let mut gy = Buf::scratch(y.len());
    gy.par_chunks_mut(c * 1024)
        .zip(y.par_chunks(c * 1024).zip(gz.par_chunks(c * 1024)))
        .for_each(|(gc, (yc, gzc))| grad.apply(yc, gzc, gc));
    (gy, dp, dq)
}

/// dY of [`norm_relu_backward`] as a per-pixel map from (y, the output's gradient), for a
/// consumer that computes it as it reads them (Winograd's output-gradient transform).
#[derive(Debug)]
pub(super) struct NormGrad {
    scale: Vec<f32>,
    shift: Vec<f32>,
    mean: Vec<f32>,
    k1: Vec<f32>,
    k2: Vec<f32>,
    k3: Vec<f32>,
}

impl NormGrad {
    /// dY over a run of whole pixels of y and the output's gradient: the same arithmetic,
    /// pixel by pixel, wherever the run starts.
    pub(super) fn apply(&self, y: &[f32], gz: &[f32], out: &mut [f32]) {
        norm_grad_run(
            y,
            gz,
            (&self.scale, &self.shift, &self.mean),
            (&self.k1, &self.k2, &self.k3),
            out,
        );
    }
}

/// [`norm_relu_backward`] without dY itself: the map that gives it ([`NormGrad::apply`]) and
/// the two per-channel parameters' gradients.
pub(super) fn norm_grad(
    y: &[f32],
    gz: &[f32],
    n: usize,
    c: usize,
    s: &NormSaved,
    batch: Option<&[f32]>,
) -> (NormGrad, Vec<f32>, Vec<f32>) {
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
    let grad = NormGrad {
        scale: scale.to_vec(),
        shift: shift.to_vec(),
        mean: mean.to_vec(),
        k1,
        k2,
        k3,
    };
    (grad, sgx, sg)
}

/// Per-channel (scale, shift, mean, inv) of [`norm_sums`].
/// [`channel_sums`] for `C` channels known at compile time: the sums in registers, the same
/// operations in the same order, so the same bits. Likewise [`norm_sums_fixed`] and
/// [`norm_grad_fixed`] for [`norm_sums`] and [`norm_grad_run`].
#[inline(always)]
fn channel_sums_fixed<const C: usize>(yn: &[f32], centre: Option<&[f64]>, s: &mut [f64]) {
    let mut acc: [f64; C] = s[..C].try_into().expect("C sums");
    match centre {
        None => {
            for px in yn.chunks_exact(C) {
                acc.iter_mut()
                    .zip(px)
                    .for_each(|(s, &v)| *s += f64::from(v));
            }
        }
        Some(m) => {
            let m: &[f64; C] = m[..C].try_into().expect("C centres");
            for px in yn.chunks_exact(C) {
                for ((s, &v), &m) in acc.iter_mut().zip(px).zip(m) {
                    let d = f64::from(v) - m;
                    *s += d * d;
                }
            }
        }
    }
    s[..C].copy_from_slice(&acc);
}

#[inline(always)]
fn norm_sums_fixed<const C: usize>(yn: &[f32], gn: &[f32], ch: Channels<'_>, acc: &mut [f64]) {
    let fix = |v: &[f32]| -> [f32; C] { v[..C].try_into().expect("C values") };
    let (scale, shift, mean, inv) = (fix(ch.0), fix(ch.1), fix(ch.2), fix(ch.3));
    for (yr, gr) in yn.chunks(C * 64).zip(gn.chunks(C * 64)) {
        let (mut pg, mut pgx) = ([0f32; C], [0f32; C]);
        for (yp, gp) in yr.chunks_exact(C).zip(gr.chunks_exact(C)) {
            for i in 0..C {
                let (y, g) = (yp[i], gp[i]);
                let g = if scale[i] * y + shift[i] > 0.0 {
                    g
                } else {
                    0.0
                };
                pg[i] += g;
                pgx[i] += g * ((y - mean[i]) * inv[i]);
            }
        }
        let (sg, sgx) = acc.split_at_mut(C);
        for (a, &p) in sg.iter_mut().zip(&pg) {
            *a += f64::from(p);
        }
        for (a, &p) in sgx.iter_mut().zip(&pgx) {
            *a += f64::from(p);
        }
    }
}

#[inline(always)]
fn norm_grad_fixed<const C: usize>(
    yc: &[f32],
    gzc: &[f32],
    (scale, shift, mean): (&[f32], &[f32], &[f32]),
    (k1, k2, k3): (&[f32], &[f32], &[f32]),
    gc: &mut [f32],
) {
    let fix = |v: &[f32]| -> [f32; C] { v[..C].try_into().expect("C values") };
    let (scale, shift, mean) = (fix(scale), fix(shift), fix(mean));
    let (k1, k2, k3) = (fix(k1), fix(k2), fix(k3));
    for ((gp, yp), gzp) in gc
        .chunks_exact_mut(C)
        .zip(yc.chunks_exact(C))
        .zip(gzc.chunks_exact(C))
    {
        for i in 0..C {
            let (y, g) = (yp[i], gzp[i]);
            let g = if scale[i] * y + shift[i] > 0.0 {
                g
            } else {
                0.0
            };
            gp[i] = k1[i] * g - k2[i] - k3[i] * (y - mean[i]);
        }
    }
}

type Channels<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32]);

simd_kernel! {
/// Per channel over one image: Σ g and Σ g·x̂ (into `acc`, 2·C), g the gradient where the
/// output `scale·y + shift` is positive, x̂ = (y − mean)·inv; f32 runs of 64 pixels.
fn norm_sums<'a>(yn: &'a [f32], gn: &'a [f32], ch: Channels<'a>, acc: &'a mut [f64]) {
    match ch.0.len() {
        16 => norm_sums_fixed::<16>(yn, gn, ch, acc),
        32 => norm_sums_fixed::<32>(yn, gn, ch, acc),
        64 => norm_sums_fixed::<64>(yn, gn, ch, acc),
        128 => norm_sums_fixed::<128>(yn, gn, ch, acc),
        _ => norm_sums_any(yn, gn, ch, acc),
    }
}
}

/// The generic path of [`norm_sums`] (any channel count).
#[inline(always)]
fn norm_sums_any(yn: &[f32], gn: &[f32], ch: Channels<'_>, acc: &mut [f64]) {
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

simd_kernel! {
/// `dY = k1·g − k2 − k3·(y − mean)` over a run of pixels, g as in [`norm_sums`].
fn norm_grad_run<'a>(yc: &'a [f32], gzc: &'a [f32], ch: (&'a [f32], &'a [f32], &'a [f32]), k: (&'a [f32], &'a [f32], &'a [f32]), gc: &'a mut [f32]) {
    match ch.0.len() {
        16 => norm_grad_fixed::<16>(yc, gzc, ch, k, gc),
        32 => norm_grad_fixed::<32>(yc, gzc, ch, k, gc),
        64 => norm_grad_fixed::<64>(yc, gzc, ch, k, gc),
        128 => norm_grad_fixed::<128>(yc, gzc, ch, k, gc),
        _ => norm_grad_any(yc, gzc, ch, k, gc),
    }
}
}

/// The generic path of [`norm_grad_run`] (any channel count).
#[inline(always)]
fn norm_grad_any(
    yc: &[f32],
    gzc: &[f32],
    ch: (&[f32], &[f32], &[f32]),
    k: (&[f32], &[f32], &[f32]),
    gc: &mut [f32],
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::rand;

    fn values(shape: &[usize], seed: u64) -> Vec<f32> {
        rand(shape, seed).flatten_all().unwrap().to_vec1().unwrap()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// BatchNorm's statistics, gradient sums and input gradient for channel counts known at
    /// compile time give the generic paths' results bit for bit.
    #[test]
    fn fixed_channel_norm_paths_equal_the_generic_paths_bit_for_bit() {
        for (s, c) in [16usize, 32, 64, 128].into_iter().enumerate() {
            let s = s as u64;
            // 150 pixels: two runs of 64 and a partial one.
            let (y, gz) = (values(&[150 * c], 50 + s), values(&[150 * c], 60 + s));
            let ch: Vec<Vec<f32>> = (0..6).map(|k| values(&[c], 70 + 10 * s + k)).collect();
            let centre: Vec<f64> = values(&[c], 90 + s).iter().map(|&v| f64::from(v)).collect();
            let f64bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for centre in [None, Some(&centre[..])] {
                let start: Vec<f64> = (0..c).map(|k| k as f64 * 0.25).collect();
                let (mut fast, mut any) = (start.clone(), start);
                channel_sums(&y, centre, &mut fast);
                channel_sums_any(&y, centre, &mut any);
                assert_eq!(f64bits(&fast), f64bits(&any), "channel sums, {c} channels");
            }
            let chs = (&ch[0][..], &ch[1][..], &ch[2][..], &ch[3][..]);
            let start: Vec<f64> = (0..2 * c).map(|k| k as f64 * 0.5).collect();
            let (mut fast, mut any) = (start.clone(), start);
            norm_sums(&y, &gz, chs, &mut fast);
            norm_sums_any(&y, &gz, chs, &mut any);
            assert_eq!(f64bits(&fast), f64bits(&any), "gradient sums, {c} channels");
            let (k, m) = ((&ch[3][..], &ch[4][..], &ch[5][..]), &ch[2][..]);
            let (mut fast, mut any) = (vec![0f32; y.len()], vec![1f32; y.len()]);
            norm_grad_run(&y, &gz, (&ch[0], &ch[1], m), k, &mut fast);
            norm_grad_any(&y, &gz, (&ch[0], &ch[1], m), k, &mut any);
            assert_eq!(bits(&fast), bits(&any), "input gradient, {c} channels");
        }
    }

    /// The direct convolution's paths for output channels known at compile time give the
    /// generic path's results bit for bit (forward and weight gradient), with and without
    /// padding, on square and odd shapes, one and three input channels.
    #[test]
    fn fixed_channel_paths_equal_the_generic_path_bit_for_bit() {
        for (s, &(h, w, c, o, pad)) in [
            (28, 28, 1, 32, 1),
            (7, 9, 1, 16, 1),
            (6, 5, 1, 64, 0),
            (8, 8, 3, 32, 1),
        ]
        .iter()
        .enumerate()
        {
            let g = Wino::new(1, c, o, h, w, pad).unwrap();
            let x = values(&[h * w * c], 10 + s as u64);
            let wts = values(&[o * c * 9], 20 + s as u64);
            let taps = taps_by_output(&wts, o, c);
            let (mut fast, mut any) = (vec![0f32; g.ho * g.wo * o], vec![1f32; g.ho * g.wo * o]);
            direct_image(&g, &x, &taps, &mut fast);
            direct_image_any(&g, &x, &taps, &mut any);
            assert_eq!(bits(&fast), bits(&any), "forward {h}x{w}x{c}->{o}");
            let gy = values(&[g.ho * g.wo * o], 30 + s as u64);
            let start = values(&[c * 9 * o], 40 + s as u64);
            let (mut fast, mut any) = (start.clone(), start);
            direct_weight_image(&g, &x, &gy, &mut fast);
            direct_weight_any(&g, &x, &gy, &mut any);
            assert_eq!(bits(&fast), bits(&any), "weights {h}x{w}x{c}->{o}");
        }
    }
}
