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
        let m = (n * hw) as f64;
        if n * hw == 0 {
            candle_core::bail!("BatchNorm needs at least one value per channel")
        }
        // Per channel: two passes (mean, then centred squares) in f64.
        let stats: Vec<(f32, f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let planes = (0..n).map(|i| &x[(i * c + ch) * hw..][..hw]);
                let sum: f64 = planes
                    .clone()
                    .map(|p| p.iter().map(|&v| f64::from(v)).sum::<f64>())
                    .sum();
                let mean = sum / m;
                let ss: f64 = planes
                    .map(|p| {
                        p.iter()
                            .map(|&v| {
                                let d = f64::from(v) - mean;
                                d * d
                            })
                            .sum::<f64>()
                    })
                    .sum();
                let var = ss / m;
                (
                    mean as f32,
                    var as f32,
                    (1.0 / (var + self.eps).sqrt()) as f32,
                )
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw.max(1))
            .zip(x.par_chunks(hw.max(1)))
            .enumerate()
            .with_min_len(planes_per_task(hw))
            .for_each(|(k, (yp, xp))| {
                let ch = k % c;
                let (mean, _, inv) = stats[ch];
                let a = gamma[ch] * inv;
                let b = beta[ch] - mean * a;
                if self.relu {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = (a * v + b).max(0.0);
                    }
                } else {
                    for (o, &v) in yp.iter_mut().zip(xp) {
                        *o = a * v + b;
                    }
                }
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
                let (mean, inv) = (st.mean[ch], st.inv_std[ch]);
                let (mut db, mut dg) = (0f64, 0f64);
                for i in 0..n {
                    let o = (i * c + ch) * hw;
                    let (xp, yp, gp) = (&xv[o..][..hw], &yv[o..][..hw], &gv[o..][..hw]);
                    let (mut b, mut g) = (0f32, 0f32);
                    for ((&xx, &yy), &gg) in xp.iter().zip(yp).zip(gp) {
                        let gg = if yy > 0.0 || !relu { gg } else { 0.0 };
                        b += gg;
                        g += gg * (xx - mean) * inv;
                    }
                    db += f64::from(b);
                    dg += f64::from(g);
                }
                (db, dg)
            })
            .collect();
        // Pass 2: dX = γ·inv/M · (M·g − dβ − x̂·dγ).
        let m = (n * hw) as f32;
        let mut gx = vec![0f32; xv.len()];
        gx.par_chunks_mut(hw.max(1))
            .enumerate()
            .with_min_len(planes_per_task(hw))
            .for_each(|(k, gxp)| {
                let ch = k % c;
                let (mean, inv) = (st.mean[ch], st.inv_std[ch]);
                let (db, dg) = (sums[ch].0 as f32, sums[ch].1 as f32);
                let scale = wv[ch] * inv / m;
                let o = k * hw;
                let (xp, yp, gp) = (&xv[o..][..hw], &yv[o..][..hw], &gv[o..][..hw]);
                for (((d, &xx), &yy), &gg) in gxp.iter_mut().zip(xp).zip(yp).zip(gp) {
                    let gg = if yy > 0.0 || !relu { gg } else { 0.0 };
                    *d = scale * (m * gg - db - (xx - mean) * inv * dg);
                }
            });
        let dev = x.device();
        let gx = Tensor::from_vec(gx, x.dims(), dev)?;
        let dgamma = Tensor::from_vec(sums.iter().map(|s| s.1 as f32).collect(), c, dev)?;
        let dbeta = Tensor::from_vec(sums.iter().map(|s| s.0 as f32).collect(), c, dev)?;
        Ok((Some(gx), Some(dgamma), Some(dbeta)))
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
    /// ReLU: output, batch statistics, and the gradients of x, γ and β.
    #[test]
    fn fused_batch_norm_matches_candle_ops_with_gradients() {
        for relu in [true, false] {
            let x = Var::from_tensor(&rand(&[3, 4, 5, 6], 1)).unwrap();
            let g = Var::from_tensor(&(rand(&[4], 2) + 1.0).unwrap()).unwrap();
            let b = Var::from_tensor(&rand(&[4], 3)).unwrap();
            let up = rand(&[3, 4, 5, 6], 4);
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
