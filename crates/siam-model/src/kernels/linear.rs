//! A linear layer `x · wᵀ` whose gradients come out contiguous.
//!
//! candle's `Linear` multiplies by the transposed view `w.t()`, so the weight's gradient
//! reaches the weight through the transpose's backward: a transposed (strided) tensor that
//! candle adds into a zero-filled one element by element with strided indexing. For the
//! convnet's flattened head (256 × 6,272 weights) that add took about a tenth of a training
//! step on the CPU. Here the forward is one product and the backward two, `gy · w` and
//! `gyᵀ · x`, each written contiguously.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{Mat, gemm_into};
use super::ops::slice;

/// Rows of the weight per parallel block of the forward product.
const ROWS: usize = 64;

struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "siam-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k, o) = match (l1.dims(), l2.dims()) {
            (&[n, k], &[o, k2]) if k == k2 => (n, k, o),
            (a, b) => candle_core::bail!("linear of shapes {a:?} and {b:?}"),
        };
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        // yᵀ (o×n) = w (o×k) · xᵀ (k×n), in fixed blocks of w's rows spread over rayon (each
        // block packs only its own rows of w; the same blocks for any thread count, so the
        // same result), then y = (yᵀ)ᵀ.
        let mut yt = vec![0f32; o * n];
        yt.par_chunks_mut(ROWS * n.max(1))
            .enumerate()
            .for_each(|(i, dst)| {
                let r0 = i * ROWS;
                let rows = dst.len() / n.max(1);
                gemm_into(
                    dst,
                    rows,
                    n,
                    k,
                    Mat {
                        data: &w[r0 * k..(r0 + rows) * k],
                        rs: k,
                        cs: 1,
                    },
                    Mat {
                        data: x,
                        rs: 1,
                        cs: k,
                    },
                    false,
                );
            });
        let mut y = vec![0f32; n * o];
        for (j, col) in yt.chunks_exact(n.max(1)).enumerate() {
            for (i, v) in col.iter().enumerate() {
                y[i * o + j] = *v;
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((n, o))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gx = gy.matmul(w)?;
        let gw = gy.t()?.matmul(x)?;
        Ok((Some(gx), Some(gw)))
    }
}

/// `x · wᵀ (+ b)` for `x` (N, in), `w` (out, in), `b` (out): candle's `Linear` with gradients
/// that reach `w` contiguously (one CPU product each way in f32; candle's ops elsewhere).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = if super::fast_path(&[x, w]) && x.rank() == 2 {
        x.contiguous()?.apply_op2(&w.contiguous()?, LinearOp)?
    } else {
        x.broadcast_matmul(&w.t()?)?
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{grads_of, max_diff, rand};
    use candle_core::Var;

    /// Forward and the gradients of x, w and b agree with candle's `Linear`.
    #[test]
    fn linear_matches_candle_with_gradients() {
        let x = Var::from_tensor(&rand(&[13, 37], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[9, 37], 2)).unwrap();
        let b = Var::from_tensor(&rand(&[9], 3)).unwrap();
        let up = rand(&[13, 9], 4);
        let ours = linear(&x, &w, Some(&b)).unwrap();
        let lin = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let theirs = candle_core::Module::forward(&lin, &x).unwrap();
        assert!(
            max_diff(&ours, &theirs) < 1e-5,
            "{}",
            max_diff(&ours, &theirs)
        );
        let g1 = grads_of(&ours, &up);
        let g2 = grads_of(&theirs, &up);
        for v in [&x, &w, &b] {
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-5, "{d}");
        }
        // The weight's gradient is contiguous (the point of the op).
        assert!(g1.get(&w).unwrap().is_contiguous());
        assert!(linear(&x, &rand(&[9, 36], 5), None).is_err());
        // More weight rows than one parallel block (64 + 64 + 22): the blocks join in place.
        let (x, w) = (rand(&[5, 40], 11), rand(&[150, 40], 12));
        let theirs = x.matmul(&w.t().unwrap()).unwrap();
        let d = max_diff(&linear(&x, &w, None).unwrap(), &theirs);
        assert!(d < 1e-5, "{d}");
    }

    /// Central differences of `Σ u · (x · wᵀ)` in f64 terms of the f32 op.
    #[test]
    fn linear_gradient_matches_finite_differences() {
        let x = rand(&[4, 6], 7);
        let w = rand(&[3, 6], 8);
        let up = rand(&[4, 3], 9);
        let f = |x: &Tensor, w: &Tensor| -> f64 {
            let y = linear(x, w, None).unwrap();
            f64::from(
                (y * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let g = grads_of(&linear(&xv, &wv, None).unwrap(), &up);
        let (gx, gw) = (g.get(&xv).unwrap(), g.get(&wv).unwrap());
        let h = 1e-2f32;
        for (t, grad, is_x) in [(&x, gx, true), (&w, gw, false)] {
            let vals = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gv = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..vals.len() {
                let shift = |d: f32| {
                    let mut v = vals.clone();
                    v[i] += d;
                    Tensor::from_vec(v, t.dims(), t.device()).unwrap()
                };
                let (p, m) = (shift(h), shift(-h));
                let fd = if is_x {
                    (f(&p, &w) - f(&m, &w)) / (2.0 * f64::from(h))
                } else {
                    (f(&x, &p) - f(&x, &m)) / (2.0 * f64::from(h))
                };
                assert!(
                    (fd - f64::from(gv[i])).abs() < 1e-3,
                    "{i}: {fd} vs {}",
                    gv[i]
                );
            }
        }
    }
}
