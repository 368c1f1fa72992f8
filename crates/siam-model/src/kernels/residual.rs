//! A residual block's end, `relu(y + identity)`, as one pass forward and one backward, instead
//! of candle's add and ReLU (two passes and a temporary each way).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{cpu_values, hold, slice};

/// Values per task.
const CHUNK: usize = 1 << 14;

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "siam-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("add-relu of shapes {:?} and {:?}", l1.dims(), l2.dims())
        }
        let (a, b) = (slice(s1, l1)?, slice(s2, l2)?);
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                    *y = (a + b).max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    /// Both inputs get the output's gradient where the output is positive (ReLU's gradient at
    /// 0 is 0, as candle's and PyTorch's).
    fn bwd(
        &self,
        a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let g = {
            let held = hold([res, &gy]);
            let [y, gv] = cpu_values(&held, "the add-relu backward")?;
            let mut g = vec![0f32; y.len()];
            g.par_chunks_mut(CHUNK)
                .zip(y.par_chunks(CHUNK).zip(gv.par_chunks(CHUNK)))
                .for_each(|(g, (y, gv))| {
                    for ((g, &y), &gv) in g.iter_mut().zip(y).zip(gv) {
                        *g = if y > 0.0 { gv } else { 0.0 };
                    }
                });
            g
        };
        let g = Tensor::from_vec(g, a.dims(), a.device())?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `relu(a + b)` for two tensors of one shape: one CPU pass each way in f32, candle's ops
/// elsewhere.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !super::fast_path(&[a, b]) {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{distinct, grads_of, max_diff, rand};
    use candle_core::Var;

    /// Forward and both gradients equal candle's add + ReLU (exactly: the same f32 sums).
    #[test]
    fn add_relu_matches_candle_with_gradients() {
        let a = Var::from_tensor(&rand(&[3, 5, 7, 9], 1)).unwrap();
        let b = Var::from_tensor(&rand(&[3, 5, 7, 9], 2)).unwrap();
        let up = rand(&[3, 5, 7, 9], 3);
        let ours = add_relu(&a, &b).unwrap();
        let theirs = (a.as_tensor() + b.as_tensor()).unwrap().relu().unwrap();
        assert_eq!(max_diff(&ours, &theirs), 0.0);
        let g1 = grads_of(&ours, &up);
        let g2 = grads_of(&theirs, &up);
        for v in [&a, &b] {
            assert_eq!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()), 0.0);
        }
        assert!(add_relu(&a, &rand(&[3, 5, 7, 8], 4)).is_err());
    }

    /// Central differences of `Σ u · relu(a + b)` on inputs whose sums stay away from 0.
    #[test]
    fn add_relu_gradient_matches_finite_differences() {
        let shape = [2, 3, 4, 5];
        let a = distinct(&shape, 7);
        let b = (distinct(&shape, 8) * 0.5).unwrap();
        let up = rand(&shape, 9);
        let f = |a: &Tensor| -> f64 {
            let y = add_relu(a, &b).unwrap();
            f64::from(
                (y * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let av = Var::from_tensor(&a).unwrap();
        let y = add_relu(&av, &b).unwrap();
        let grads = grads_of(&y, &up);
        let ga: Vec<f32> = grads
            .get(&av)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let sums: Vec<f32> = (&a + &b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-3f32;
        let mut checked = 0;
        for i in 0..base.len() {
            if sums[i].abs() < 4.0 * h {
                continue;
            }
            let mut p = base.clone();
            p[i] += h;
            let mut m = base.clone();
            m[i] -= h;
            let tp = Tensor::from_vec(p, &shape, a.device()).unwrap();
            let tm = Tensor::from_vec(m, &shape, a.device()).unwrap();
            let fd = (f(&tp) - f(&tm)) / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(ga[i])).abs() < 1e-2,
                "value {i}: analytic {} numeric {fd}",
                ga[i]
            );
            checked += 1;
        }
        assert!(checked > base.len() / 2, "only {checked} values checked");
    }
}
