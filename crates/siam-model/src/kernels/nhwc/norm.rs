//! BatchNorm + ReLU on channel-last activations: the batch statistics, the per-channel scale
//! and shift of `relu(scale·y + shift)`, its application, and its backward pass.

use rayon::prelude::*;

use crate::kernels::add_in_order;
use crate::kernels::scratch::Buf;

/// Per-channel batch statistics of (N, pixels, C) values: the mean and the biased variance,
/// two passes in f64.
pub(in crate::kernels) fn batch_stats(y: &[f32], n: usize, c: usize) -> (Vec<f64>, Vec<f64>) {
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
pub(in crate::kernels) fn affine_relu(y: &[f32], a: &[f32], b: &[f32], z: &mut [f32]) {
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

/// `z = relu(a·y + b + r)` over (pixels, C): a residual block's end, its second BatchNorm, the
/// add of the block's input `r` and the ReLU in one pass.
pub(in crate::kernels) fn affine_add_relu(
    y: &[f32],
    (a, b): (&[f32], &[f32]),
    r: &[f32],
    z: &mut [f32],
) {
    let c = a.len();
    z.par_chunks_mut(c * 1024)
        .zip(y.par_chunks(c * 1024).zip(r.par_chunks(c * 1024)))
        .for_each(|(zc, (yc, rc))| affine_add_relu_run(yc, rc, a, b, zc));
}

simd_kernel! {
fn affine_add_relu_run<'a>(yc: &'a [f32], rc: &'a [f32], a: &'a [f32], b: &'a [f32], zc: &'a mut [f32]) {
    let c = a.len();
    let (a, b) = (&a[..c], &b[..c]);
    for ((zp, yp), rp) in zc.chunks_exact_mut(c).zip(yc.chunks_exact(c)).zip(rc.chunks_exact(c)) {
        for ((((z, &y), &r), &a), &b) in zp.iter_mut().zip(yp).zip(rp).zip(a).zip(b) {
            *z = (a * y + b + r).max(0.0);
        }
    }
}
}

/// How a block's BatchNorm normalises.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) enum Norm<'a> {
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
pub(in crate::kernels) struct NormSaved {
    /// The per-channel scale and shift the forward pass applied.
    pub(in crate::kernels) scale: Vec<f32>,
    pub(in crate::kernels) shift: Vec<f32>,
    /// Batch mode: the batch mean and 1/√(var + ε), and the biased variance (for the running
    /// statistics).
    pub(in crate::kernels) mean: Vec<f32>,
    pub(in crate::kernels) inv_std: Vec<f32>,
    pub(in crate::kernels) var: Vec<f32>,
}

impl NormSaved {
    /// The same BatchNorm without its ReLU, for the backward pass of a BatchNorm whose output
    /// is added to something before the ReLU (a residual block's second one, whose output
    /// gradient comes already masked by that ReLU): the shift enters the backward pass only
    /// in the test `scale·y + shift > 0`, which a shift of +∞ makes pass everywhere.
    pub(in crate::kernels) fn without_relu(&self) -> Self {
        Self {
            shift: vec![f32::INFINITY; self.shift.len()],
            ..self.clone()
        }
    }
}

/// `relu(bn(y))` over (N, pixels, C) as the per-channel scale and shift of
/// `relu(scale·y + shift)`, with what the backward pass needs. The activation itself is applied
/// by what reads `y` next ([`max_pool2`](super::max_pool2), Winograd's input transform, or
/// [`affine_relu`]).
pub(in crate::kernels) fn norm_saved(y: &[f32], n: usize, c: usize, norm: Norm<'_>) -> NormSaved {
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
pub(in crate::kernels) fn norm_relu_backward(
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
pub(in crate::kernels) struct NormGrad {
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
    pub(in crate::kernels) fn apply(&self, y: &[f32], gz: &[f32], out: &mut [f32]) {
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
pub(in crate::kernels) fn norm_grad(
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
    use crate::kernels::nhwc::{bits, values};

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
}
