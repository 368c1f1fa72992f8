//! The direct 3×3 convolution for inputs with few channels (the first layer on gray or RGB
//! images), channel-last, and its gradients.

use rayon::prelude::*;

use crate::kernels::add_in_order;
use crate::kernels::scratch::Buf;
use crate::kernels::winograd::Wino;

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
pub(in crate::kernels) fn direct_forward(g: &Wino, x: &[f32], w: &[f32], y: &mut [f32]) {
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
pub(in crate::kernels) fn direct_backward(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::nhwc::{bits, values};

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
