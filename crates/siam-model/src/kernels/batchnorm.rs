//! Training-mode BatchNorm, fused with ReLU or alone: two passes forward (statistics in f64, then
//! normalise), two backward (dβ and dγ, then dX).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{cpu_values, hold, slice};
use super::pool::planes_per_task;

/// Per-channel batch statistics of a training-mode BatchNorm forward pass.
#[derive(Debug, Default, Clone)]
struct BnState {
    mean: Vec<f32>,
    /// Biased variance (divided by the element count).
    var: Vec<f32>,
    inv_std: Vec<f32>,
}

/// `relu(γ·(x − mean)/√(var + ε) + β)` with the batch's own per-channel statistics, forward and
/// backward in a few passes over (N, C, H, W) instead of candle's dozen broadcast operations and
/// their gradients.
struct BnRelu {
    eps: f64,
    /// ReLU after the normalisation (else BatchNorm alone: a residual block's second one).
    relu: bool,
    state: std::sync::Arc<std::sync::Mutex<BnState>>,
}

/// (N, C, H·W) of a BatchNorm input.
fn bn_dims(dims: &[usize]) -> Result<(usize, usize, usize)> {
    match dims {
        [n, c, rest @ ..] => Ok((*n, *c, rest.iter().product())),
        d => candle_core::bail!("BatchNorm takes (N, C, ...), got {d:?}"),
    }
}

impl CustomOp3 for BnRelu {
    fn name(&self) -> &'static str {
        "siam-batch-norm-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, hw) = bn_dims(l1.dims())?;
        let (x, gamma, beta) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        if gamma.len() != c || beta.len() != c {
            candle_core::bail!("BatchNorm over {c} channels got {} weights", gamma.len())
        }
        if n * hw == 0 {
            candle_core::bail!("BatchNorm needs at least one value per channel")
        }
        // Per channel: two passes (mean, then centred squares) in f64.
        let stats: Vec<(f32, f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut sums = [0f64; 2];
                channel_moments(x, (c, hw, ch), &mut sums);
                let (mean, var) = (sums[0], sums[1]);
                (
                    mean as f32,
                    var as f32,
                    (1.0 / (var + self.eps).sqrt()) as f32,
                )
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        let per = planes_per_task(hw);
        y.par_chunks_mut(hw.max(1) * per)
            .zip(x.par_chunks(hw.max(1) * per))
            .enumerate()
            .for_each(|(k, (yp, xp))| {
                let ab: Vec<[f32; 2]> = (k * per..k * per + yp.len() / hw.max(1))
                    .map(|plane| {
                        let ch = plane % c;
                        let (mean, _, inv) = stats[ch];
                        let a = gamma[ch] * inv;
                        [a, beta[ch] - mean * a]
                    })
                    .collect();
                normalise(xp, &ab, self.relu, yp);
            });
        if let Ok(mut st) = self.state.lock() {
            st.mean = stats.iter().map(|s| s.0).collect();
            st.var = stats.iter().map(|s| s.1).collect();
            st.inv_std = stats.iter().map(|s| s.2).collect();
        }
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, hw) = bn_dims(x.dims())?;
        let st = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))?
            .clone();
        if st.mean.len() != c {
            candle_core::bail!("the BatchNorm backward ran before its forward pass")
        }
        let gy = gy.contiguous()?;
        let held = hold([x, res, &gy, gamma]);
        let [xv, yv, gv, wv] = cpu_values(&held, "the BatchNorm backward")?;
        let relu = self.relu;
        // Pass 1: dβ = Σ g, dγ = Σ g·x̂ with g = dY where the output is positive.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let mut s = [0f64; 2];
                let at = [st.mean[ch], st.inv_std[ch]];
                grad_sums(xv, yv, gv, (c, hw, ch), at, relu, &mut s);
                (s[0], s[1])
            })
            .collect();
        // Pass 2: dX = γ·inv/M · (M·g − dβ − x̂·dγ).
        let m = (n * hw) as f32;
        let mut gx = vec![0f32; xv.len()];
        let per = planes_per_task(hw);
        gx.par_chunks_mut(hw.max(1) * per)
            .enumerate()
            .for_each(|(k, gxp)| {
                let planes = gxp.len() / hw.max(1);
                // Per plane, of its channel: (γ·inv/M, mean, inv·dγ, dβ).
                let consts: Vec<[f32; 4]> = (k * per..k * per + planes)
                    .map(|plane| {
                        let ch = plane % c;
                        let (mean, inv) = (st.mean[ch], st.inv_std[ch]);
                        let (db, dg) = (sums[ch].0 as f32, sums[ch].1 as f32);
                        [wv[ch] * inv / m, mean, inv * dg, db]
                    })
                    .collect();
                let o = k * per * hw;
                let len = gxp.len();
                grad_input(
                    (&xv[o..][..len], &yv[o..][..len], &gv[o..][..len]),
                    &consts,
                    (m, relu),
                    gxp,
                );
            });
        let dev = x.device();
        let gx = Tensor::from_vec(gx, x.dims(), dev)?;
        let dgamma = Tensor::from_vec(sums.iter().map(|s| s.1 as f32).collect(), c, dev)?;
        let dbeta = Tensor::from_vec(sums.iter().map(|s| s.0 as f32).collect(), c, dev)?;
        Ok((Some(gx), Some(dgamma), Some(dbeta)))
    }
}

/// Independent partial sums per loop (vector lanes the CPU adds in parallel, not one chain of
/// dependent additions).
const LANES: usize = 16;

/// Σ v in f64, over [`LANES`] / 2 partial sums.
#[inline(always)]
fn sum64(v: &[f32], centre: f64, square: bool) -> f64 {
    let mut acc = [0f64; LANES / 2];
    let mut chunks = v.chunks_exact(LANES / 2);
    for ch in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            let d = f64::from(x) - centre;
            *a += if square { d * d } else { d };
        }
    }
    let mut t: f64 = acc.iter().sum();
    for &x in chunks.remainder() {
        let d = f64::from(x) - centre;
        t += if square { d * d } else { d };
    }
    t
}

simd_kernel! {
/// Channel `ch`'s mean and biased variance over the planes of (N, C, HW) `x`, in f64: the
/// mean first, then the centred squares.
fn channel_moments<'a>(x: &'a [f32], dims: (usize, usize, usize), out: &'a mut [f64; 2]) {
    let (c, hw, ch) = dims;
    let planes = x.len() / (c * hw);
    let plane = |i: usize| &x[(i * c + ch) * hw..][..hw];
    let m = (planes * hw) as f64;
    let mut sum = 0f64;
    for i in 0..planes {
        sum += sum64(plane(i), 0.0, false);
    }
    let mean = sum / m;
    let mut ss = 0f64;
    for i in 0..planes {
        ss += sum64(plane(i), mean, true);
    }
    *out = [mean, ss / m];
}
}

simd_kernel! {
/// `y = [relu](a·x + b)` plane by plane, `ab` holding each plane's (a, b).
fn normalise<'a>(x: &'a [f32], ab: &'a [[f32; 2]], relu: bool, y: &'a mut [f32]) {
    let hw = x.len() / ab.len().max(1);
    for ((yp, xp), &[a, b]) in y.chunks_exact_mut(hw.max(1)).zip(x.chunks_exact(hw.max(1))).zip(ab) {
        if relu {
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = (a * v + b).max(0.0);
            }
        } else {
            for (o, &v) in yp.iter_mut().zip(xp) {
                *o = a * v + b;
            }
        }
    }
}
}

/// One plane's (Σ g, Σ g·x̂) with g = dY where the output `y` is positive (or everywhere
/// without ReLU), over [`LANES`] partial sums.
#[inline(always)]
fn plane_grad_sums(
    (xp, yp, gp): (&[f32], &[f32], &[f32]),
    mean: f32,
    inv: f32,
    relu: bool,
) -> (f32, f32) {
    let (mut b, mut g) = ([0f32; LANES], [0f32; LANES]);
    let (mut tb, mut tg) = (0f32, 0f32);
    let n = xp.len() / LANES * LANES;
    for ((xs, ys), gs) in xp[..n]
        .chunks_exact(LANES)
        .zip(yp[..n].chunks_exact(LANES))
        .zip(gp[..n].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let gg = if ys[l] > 0.0 || !relu { gs[l] } else { 0.0 };
            b[l] += gg;
            g[l] += gg * (xs[l] - mean) * inv;
        }
    }
    for ((&xx, &yy), &gg) in xp[n..].iter().zip(&yp[n..]).zip(&gp[n..]) {
        let gg = if yy > 0.0 || !relu { gg } else { 0.0 };
        tb += gg;
        tg += gg * (xx - mean) * inv;
    }
    (b.iter().sum::<f32>() + tb, g.iter().sum::<f32>() + tg)
}

simd_kernel! {
/// Channel `ch`'s (dβ, dγ) over the planes of (N, C, HW): each plane summed in f32, the planes
/// added in f64 in order.
fn grad_sums<'a>(
    xv: &'a [f32],
    yv: &'a [f32],
    gv: &'a [f32],
    dims: (usize, usize, usize),
    at: [f32; 2],
    relu: bool,
    out: &'a mut [f64; 2],
) {
    let (c, hw, ch) = dims;
    let [mean, inv] = at;
    let (mut db, mut dg) = (0f64, 0f64);
    for i in 0..xv.len() / (c * hw) {
        let o = (i * c + ch) * hw;
        let planes = (&xv[o..][..hw], &yv[o..][..hw], &gv[o..][..hw]);
        let (b, g) = plane_grad_sums(planes, mean, inv, relu);
        db += f64::from(b);
        dg += f64::from(g);
    }
    *out = [db, dg];
}
}

simd_kernel! {
/// dX plane by plane, `consts` holding each plane's (γ·inv/M, mean, inv·dγ, dβ):
/// `dx = γ·inv/M · (M·g − dβ − (x − mean)·inv·dγ)`, g masked by ReLU as in the sums.
fn grad_input<'a>(
    xyg: (&'a [f32], &'a [f32], &'a [f32]),
    consts: &'a [[f32; 4]],
    m_relu: (f32, bool),
    gx: &'a mut [f32],
) {
    let (xv, yv, gv) = xyg;
    let (m, relu) = m_relu;
    let hw = (gx.len() / consts.len().max(1)).max(1);
    for (k, (d, &[scale, mean, idg, db])) in gx.chunks_exact_mut(hw).zip(consts).enumerate() {
        let o = k * hw;
        let (xp, yp, gp) = (&xv[o..][..hw], &yv[o..][..hw], &gv[o..][..hw]);
        for (((d, &xx), &yy), &gg) in d.iter_mut().zip(xp).zip(yp).zip(gp) {
            let gg = if yy > 0.0 || !relu { gg } else { 0.0 };
            *d = scale * (m * gg - db - (xx - mean) * idg);
        }
    }
}
}

/// Training-mode BatchNorm followed by ReLU, `relu(γ·(x − mean)/√(var + ε) + β)` with the
/// batch's per-channel statistics over (N, H, W), fused on the CPU. Returns the output and the
/// batch mean and biased variance (for the running statistics, which the caller updates).
/// Elsewhere it is candle's own ops.
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    batch_norm_train(x, gamma, beta, eps, true)
}

/// Training-mode BatchNorm, followed by ReLU when `relu`, fused on the CPU (see
/// [`batch_norm_relu_train`]): the output, the batch mean and the biased variance.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (_, c, _) = bn_dims(x.dims())?;
    if !super::fast_path(&[x, gamma, beta]) {
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        let mean = x.mean_keepdim(dims.as_slice())?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(dims.as_slice())?;
        let mut shape = vec![1; x.rank()];
        shape[1] = c;
        let y = centred
            .broadcast_div(&(&var + eps)?.sqrt()?)?
            .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
            .broadcast_add(&beta.reshape(shape.as_slice())?)?;
        let y = if relu { y.relu()? } else { y };
        return Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()));
    }
    let state = std::sync::Arc::new(std::sync::Mutex::new(BnState::default()));
    let op = BnRelu {
        eps,
        relu,
        state: state.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let st = state
        .lock()
        .map_err(|_| candle_core::Error::Msg("BatchNorm state poisoned".into()))?
        .clone();
    let dev = x.device();
    Ok((
        y,
        Tensor::from_vec(st.mean, c, dev)?,
        Tensor::from_vec(st.var, c, dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{max_diff, rand};
    use candle_core::Var;

    /// The fused op against the same formula in candle's ops (its fallback), with and without
    /// ReLU: output, batch statistics, and the gradients of x, γ and β; on planes shorter than
    /// the partial sums' lanes, of a whole number of them, and with a remainder.
    #[test]
    fn fused_batch_norm_matches_candle_ops_with_gradients() {
        let shapes = [[3, 4, 5, 6], [5, 3, 2, 2], [2, 2, 8, 4], [2, 3, 9, 9]];
        for (relu, shape) in [true, false]
            .into_iter()
            .flat_map(|r| shapes.map(|s| (r, s)))
        {
            let c = shape[1];
            let x = Var::from_tensor(&rand(&shape, 1)).unwrap();
            let g = Var::from_tensor(&(rand(&[c], 2) + 1.0).unwrap()).unwrap();
            let b = Var::from_tensor(&rand(&[c], 3)).unwrap();
            let up = rand(&shape, 4);
            let (y, m, v) = batch_norm_train(&x, &g, &b, 1e-5, relu).unwrap();
            // The reference: the fallback, forced through f64.
            let f = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
            let (x64, g64, b64) = (
                Var::from_tensor(&f(&x)).unwrap(),
                Var::from_tensor(&f(&g)).unwrap(),
                Var::from_tensor(&f(&b)).unwrap(),
            );
            let (yr, mr, vr) = batch_norm_train(&x64, &g64, &b64, 1e-5, relu).unwrap();
            let back = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap();
            assert!(max_diff(&y, &back(&yr)) < 1e-5, "relu {relu}: output");
            assert!(max_diff(&m, &back(&mr)) < 1e-6 && max_diff(&v, &back(&vr)) < 1e-6);
            let g1 = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&yr * &f(&up))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, a, r) in [("x", &x, &x64), ("gamma", &g, &g64), ("beta", &b, &b64)] {
                let d = max_diff(
                    g1.get(a.as_tensor()).unwrap(),
                    &back(g2.get(r.as_tensor()).unwrap()),
                );
                assert!(d < 1e-4, "relu {relu}: d{name} differs by {d}");
            }
            if !relu {
                // Without ReLU, negative outputs stay.
                let min: f32 = y.min_all().unwrap().to_scalar().unwrap();
                assert!(min < -0.5, "{min}");
            }
        }
    }
}
