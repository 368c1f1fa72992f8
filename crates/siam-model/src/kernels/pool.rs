//! ReLU fused with 2×2 max-pooling, and the per-plane pooling and unpooling helpers of the fused
//! convolution stages: window maxima recorded in the forward pass, gradients routed to them.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::slice;

/// `max_pool2d(relu(x), 2)` in one pass (equal to `relu(max_pool2d(x, 2))`); odd trailing rows
/// and columns are dropped as candle's pooling does. Its gradient goes to each window's
/// maximum when that maximum is positive.
pub fn relu_max_pool2(x: &Tensor) -> Result<Tensor> {
    if !super::fast_path(&[x]) {
        return x.relu()?.max_pool2d(2);
    }
    x.contiguous()?.apply_op1(ReluPool)
}

struct ReluPool;

fn pool_dims(dims: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match dims {
        &[n, c, h, w] => Ok((n * c, h, w, 0)),
        d => candle_core::bail!("max-pooling takes (N, C, H, W), got {d:?}"),
    }
}

/// Planes per rayon task: enough work to amortise the scheduling.
pub(super) fn planes_per_task(plane: usize) -> usize {
    (16384 / plane.max(1)).max(1)
}

impl CustomOp1 for ReluPool {
    fn name(&self) -> &'static str {
        "siam-relu-max-pool2"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, _) = pool_dims(l.dims())?;
        let x = slice(s, l)?;
        let (ho, wo) = (h / 2, w / 2);
        let mut y = vec![0f32; planes * ho * wo];
        if ho * wo > 0 {
            y.par_chunks_mut(ho * wo)
                .zip(x.par_chunks(h * w))
                .with_min_len(planes_per_task(h * w))
                .for_each(|(yp, xp)| {
                    for (oh, yr) in yp.chunks_exact_mut(wo).enumerate() {
                        let r0 = &xp[2 * oh * w..][..2 * wo];
                        let r1 = &xp[(2 * oh + 1) * w..][..2 * wo];
                        for ((y, a), b) in yr
                            .iter_mut()
                            .zip(r0.chunks_exact(2))
                            .zip(r1.chunks_exact(2))
                        {
                            *y = a[0].max(a[1]).max(b[0].max(b[1])).max(0.0);
                        }
                    }
                });
        }
        let d = l.dims();
        Ok((CpuStorage::F32(y), Shape::from((d[0], d[1], ho, wo))))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            res,
            &gy.contiguous()?,
            &ReluPoolGrad,
        )?))
    }
}

struct ReluPoolGrad;

impl CustomOp3 for ReluPoolGrad {
    fn name(&self) -> &'static str {
        "siam-relu-max-pool2-grad"
    }
    /// (x, y, dY) → dX: each positive window maximum (the first position equal to y in the
    /// window) receives its dY.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (planes, h, w, _) = pool_dims(l1.dims())?;
        let (x, y, gy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (ho, wo) = (h / 2, w / 2);
        if y.len() != planes * ho * wo || gy.len() != y.len() {
            candle_core::bail!(
                "max-pool gradient has shape {:?}, expected ({planes}, {ho}, {wo})",
                l3.dims()
            )
        }
        let mut gx = vec![0f32; x.len()];
        if ho * wo > 0 {
            gx.par_chunks_mut(h * w)
                .zip(x.par_chunks(h * w))
                .zip(y.par_chunks(ho * wo).zip(gy.par_chunks(ho * wo)))
                .with_min_len(planes_per_task(h * w))
                .for_each(|((gp, xp), (yp, gyp))| {
                    for oh in 0..ho {
                        for ow in 0..wo {
                            let k = oh * wo + ow;
                            let m = yp[k];
                            if m > 0.0 {
                                let base = 2 * oh * w + 2 * ow;
                                let at = [base, base + 1, base + w, base + w + 1]
                                    .into_iter()
                                    .find(|&i| xp[i] == m)
                                    .unwrap_or(base);
                                gp[at] += gyp[k];
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(gx), Shape::from(l1.dims())))
    }
}

/// The window position (0–3, row-major in the 2×2 window) of each pooled output's maximum, or
/// [`NO_MAX`] where that maximum is not positive (ReLU'd away: no gradient).
pub(super) const NO_MAX: u8 = 4;

/// ReLU and 2×2 max-pooling of one image's (O, HO, WO) convolution output into (O, HO/2, WO/2),
/// recording where each maximum came from.
pub(super) fn relu_pool_plane(yc: &[f32], ho: usize, wo: usize, out: &mut [f32], arg: &mut [u8]) {
    let (hp, wp) = (ho / 2, wo / 2);
    for ((yp, op), ap) in yc
        .chunks_exact(ho * wo)
        .zip(out.chunks_exact_mut(hp * wp))
        .zip(arg.chunks_exact_mut(hp * wp))
    {
        for i in 0..hp {
            let r0 = &yp[2 * i * wo..][..2 * wp];
            let r1 = &yp[(2 * i + 1) * wo..][..2 * wp];
            let (orow, arow) = (&mut op[i * wp..][..wp], &mut ap[i * wp..][..wp]);
            for j in 0..wp {
                let (v0, v1, v2, v3) = (r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]);
                // Branch-free (the comparisons are data-dependent and unpredictable); the
                // first maximum wins ties, as in `relu_max_pool2`.
                let (m01, m23) = (v0.max(v1), v2.max(v3));
                let i01 = u8::from(v1 > v0);
                let i23 = 2 + u8::from(v3 > v2);
                let m = m01.max(m23);
                let at = if m23 > m01 { i23 } else { i01 };
                orow[j] = m.max(0.0);
                arow[j] = if m > 0.0 { at } else { NO_MAX };
            }
        }
    }
}

/// Scatters one image's pooled gradient (O, HO/2, WO/2) back to its window maxima in the
/// convolution output's gradient (O, HO, WO), which is overwritten, and adds each channel's
/// gradient sum to `db` (the bias gradient) when given.
pub(super) fn unpool_plane(
    gp: &[f32],
    arg: &[u8],
    ho: usize,
    wo: usize,
    gc: &mut [f32],
    mut db: Option<&mut [f32]>,
) {
    let (hp, wp) = (ho / 2, wo / 2);
    gc.fill(0.0);
    for (o, ((gpp, ap), gcp)) in gp
        .chunks_exact(hp * wp)
        .zip(arg.chunks_exact(hp * wp))
        .zip(gc.chunks_exact_mut(ho * wo))
        .enumerate()
    {
        // Eight running sums: independent additions instead of one long dependency chain.
        let mut lanes = [0f32; 8];
        for i in 0..hp {
            for j in 0..wp {
                let k = i * wp + j;
                let a = ap[k];
                if a != NO_MAX {
                    let (di, dj) = (usize::from(a / 2), usize::from(a % 2));
                    gcp[(2 * i + di) * wo + 2 * j + dj] = gpp[k];
                    lanes[k % 8] += gpp[k];
                }
            }
        }
        if let Some(db) = db.as_deref_mut() {
            db[o] += lanes.iter().sum::<f32>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{distinct, max_diff, rand};
    use candle_core::{DType, Device, Var};

    /// The forward pass equals candle's; the gradient equals central finite differences.
    /// (candle 0.11.1's own max-pool gradient scales each window's gradient by the share of
    /// maxima in the window — 1/4 for the usual single maximum — so it is no reference; here it
    /// checks only that ours is exactly 4× it where the window has one positive maximum.)
    #[test]
    fn relu_max_pool_matches_the_forward_and_finite_differences() {
        for (i, dims) in [[2, 3, 8, 8], [1, 2, 7, 9], [3, 1, 24, 24]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&distinct(dims, 50 + i as u64)).unwrap();
            let ours = relu_max_pool2(&x).unwrap();
            let theirs = x.relu().unwrap().max_pool2d(2).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(&ours, &theirs) < 1e-7, "case {i}: forward");
            let up = rand(ours.dims(), 400 + i as u64);
            let g = (&ours * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let gc = (&theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = gc
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            // (candle's backward also misplaces gradients for odd sizes: even sizes only.)
            if dims[2] % 2 == 0 && dims[3] % 2 == 0 {
                for (a, b) in g.iter().zip(&gc) {
                    assert!((a - 4.0 * b).abs() < 1e-5, "case {i}: {a} vs candle {b}");
                }
            }
            if i < 2 {
                let x0 = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let n = x0.len();
                let eps = 0.25 / n as f32;
                let f = |v: &[f32]| -> f64 {
                    let t = Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap();
                    let y = relu_max_pool2(&t).unwrap();
                    (y * &up)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                for k in 0..n {
                    let mut p = x0.clone();
                    p[k] += eps;
                    let mut m = x0.clone();
                    m[k] -= eps;
                    let fd = (f(&p) - f(&m)) / (2.0 * f64::from(eps));
                    assert!(
                        (fd - f64::from(g[k])).abs() < 2e-2,
                        "case {i}, element {k}: {fd} vs {}",
                        g[k]
                    );
                }
            }
        }
    }
}
