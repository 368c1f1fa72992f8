//! The seed CNN's stage, `max_pool2d(relu(conv2d(x, w) + b), 2)`, as one operation.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{Geom, col2im, conv_image, conv2d, im2col};
use super::gemm::{Mat, gemm_into};
use super::ops::{conv_ops, cpu_values, hold, slice};
use super::pool::{relu_max_pool2, relu_pool_plane, unpool_plane};

/// `max_pool2d(relu(conv2d(x, w) + b), 2)` as one operation: each image is convolved into a
/// per-thread buffer and pooled straight into the output, so the full-size convolution output
/// and its gradient never exist as tensors (candle's backward pass would otherwise zero-fill and
/// add a gradient of that size for every step). The window maxima are recorded in the forward
/// pass; the backward pass works per image: unpool, weight and bias gradients, input gradient.
struct ConvPool {
    pad: usize,
    input_grad: bool,
    /// Per pooled output, where its maximum came from (filled by the forward pass).
    arg: std::sync::Mutex<Vec<u8>>,
}

impl ConvPool {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Geom> {
        Geom::new(x, w, self.pad)
    }

    fn forward(&self, g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> (Vec<f32>, Shape) {
        let (ck, p) = (g.ck(), g.p());
        let (hp, wp) = (g.ho / 2, g.wo / 2);
        let (img, pooled) = (g.c * g.h * g.w, g.o * hp * wp);
        let mut y = vec![0f32; g.n * pooled];
        let mut arg = vec![0u8; g.n * pooled];
        if pooled > 0 {
            y.par_chunks_mut(pooled)
                .zip(arg.par_chunks_mut(pooled))
                .enumerate()
                .for_each_init(
                    || (vec![0f32; ck * p], vec![0f32; g.o * p]),
                    |(col, yc), (n, (yn, an))| {
                        conv_image(g, &x[n * img..][..img], w, bias, col, yc);
                        relu_pool_plane(yc, g.ho, g.wo, yn, an);
                    },
                );
        }
        if let Ok(mut a) = self.arg.lock() {
            *a = arg;
        }
        (y, Shape::from((g.n, g.o, hp, wp)))
    }

    /// (dX when asked for, dW, dB when there is a bias) from the pooled output's gradient.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        gy: &Tensor,
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let g = Geom::new(x.dims(), w.dims(), self.pad)?;
        let (ck, p) = (g.ck(), g.p());
        let (hp, wp) = (g.ho / 2, g.wo / 2);
        let (img, pooled) = (g.c * g.h * g.w, g.o * hp * wp);
        if gy.dims() != [g.n, g.o, hp, wp] {
            candle_core::bail!("fused conv-pool gradient has shape {:?}", gy.dims())
        }
        let gy = gy.contiguous()?;
        let held = hold([x, w, &gy]);
        let [xv, wv, gv] = cpu_values(&held, "the fused conv-pool backward")?;
        let arg = self
            .arg
            .lock()
            .map_err(|_| candle_core::Error::Msg("conv-pool state poisoned".into()))?;
        if arg.len() != g.n * pooled {
            candle_core::bail!("the fused conv-pool backward ran before its forward pass")
        }
        // One image: unpool into gc, then dW += gc · colᵀ, dB += row sums of gc, and
        // (when asked) dXₙ = col2im(Wᵀ · gc).
        let per_image = |n: usize,
                         (dw, db, col, gc): &mut (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>),
                         gxn: Option<&mut [f32]>| {
            unpool_plane(
                &gv[n * pooled..][..pooled],
                &arg[n * pooled..][..pooled],
                g.ho,
                g.wo,
                gc,
                bias.then_some(db.as_mut_slice()),
            );
            im2col(&g, &xv[n * img..][..img], col);
            let a = Mat {
                data: gc,
                rs: p,
                cs: 1,
            };
            gemm_into(
                dw,
                g.o,
                ck,
                p,
                a,
                Mat {
                    data: col,
                    rs: 1,
                    cs: p,
                },
                true,
            );
            if let Some(gxn) = gxn {
                let wt = Mat {
                    data: wv,
                    rs: 1,
                    cs: ck,
                };
                gemm_into(col, ck, p, g.o, wt, a, false);
                col2im(&g, col, gxn);
            }
        };
        // Fixed parts of the batch, each on one thread in image order, added in order: the same
        // weight and bias gradients for any thread count.
        let part = |images: std::ops::Range<usize>, mut gx: Option<&mut [f32]>| {
            let mut s = (
                vec![0f32; g.o * ck],
                vec![0f32; g.o],
                vec![0f32; ck * p],
                vec![0f32; g.o * p],
            );
            let first = images.start;
            for n in images {
                let gxn = gx
                    .as_deref_mut()
                    .map(|b| &mut b[(n - first) * img..][..img]);
                per_image(n, &mut s, gxn);
            }
            let mut out = s.0;
            out.extend_from_slice(&s.1);
            out
        };
        let (gx, partial): (Option<Vec<f32>>, Vec<Vec<f32>>) = if self.input_grad {
            let mut gx = vec![0f32; g.n * img];
            let partial = gx
                .par_chunks_mut((super::part_len() * img).max(1))
                .zip(super::parts(g.n))
                .map(|(chunk, images)| part(images, Some(chunk)))
                .collect();
            (Some(gx), partial)
        } else {
            (
                None,
                super::parts(g.n).map(|images| part(images, None)).collect(),
            )
        };
        let mut dw = super::add_in_order(partial, g.o * ck + g.o);
        let db = dw.split_off(g.o * ck);
        let dev = x.device();
        let gx = match gx {
            Some(v) => Some(Tensor::from_vec(v, x.dims(), dev)?),
            None => None,
        };
        let dw = Tensor::from_vec(dw, w.dims(), dev)?;
        let db = if bias {
            Some(Tensor::from_vec(db, g.o, dev)?)
        } else {
            None
        };
        Ok((gx, dw, db))
    }
}

conv_ops!(
    ConvPool,
    "siam-conv2d-relu-max-pool2",
    "siam-conv2d-bias-relu-max-pool2"
);

/// `max_pool2d(relu(conv2d(x, w, padding) + bias), 2)` fused into one operation on the CPU
/// (stride 1; odd trailing rows and columns of the convolution output are dropped, as
/// [`relu_max_pool2`] does). Equal to [`conv2d`] followed by [`relu_max_pool2`], with the same
/// gradients, without the full-size intermediate tensor. `input_grad = false` skips the input's
/// gradient. Elsewhere it is candle's own ops.
pub fn conv2d_relu_max_pool2(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    input_grad: bool,
) -> Result<Tensor> {
    let mut all = vec![x, w];
    all.extend(bias);
    if !super::fast_path(&all) {
        return relu_max_pool2(&conv2d(x, w, bias, padding, input_grad)?);
    }
    let op = ConvPool {
        pad: padding,
        input_grad,
        arg: std::sync::Mutex::new(Vec::new()),
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{max_diff, rand};
    use candle_core::Var;

    /// The fused convolution + ReLU + pooling equals the two kernels it replaces — forward,
    /// and every gradient — with and without bias, padding, input gradient, odd sizes.
    #[test]
    fn fused_conv_pool_matches_conv_then_pool() {
        // (N, C, H, W, O, K, padding, bias, input gradient)
        for (i, &(n, c, h, w, o, k, pad, bias, ig)) in [
            (3, 1, 28, 28, 8, 5, 0, true, false),
            (2, 4, 12, 12, 6, 3, 0, true, true),
            (4, 3, 9, 7, 5, 3, 1, false, true),
            (1, 2, 6, 5, 3, 3, 0, true, true),
            (5, 2, 8, 8, 4, 3, 1, false, false),
            (2, 3, 5, 5, 2, 1, 0, true, true),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&rand(&[n, c, h, w], 10 + i as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c, k, k], 110 + i as u64)).unwrap();
            let b = Var::from_tensor(&rand(&[o], 210 + i as u64)).unwrap();
            let bias = bias.then_some(b.as_tensor());
            let fused = conv2d_relu_max_pool2(&x, &wt, bias, pad, ig).unwrap();
            let split = relu_max_pool2(&conv2d(&x, &wt, bias, pad, ig).unwrap()).unwrap();
            assert_eq!(fused.dims(), split.dims(), "case {i}: shape");
            assert!(max_diff(&fused, &split) < 1e-6, "case {i}: forward");
            let up = rand(fused.dims(), 310 + i as u64);
            let gf = (&fused * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gs = (&split * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut vars = vec![("w", wt.as_tensor())];
            if bias.is_some() {
                vars.push(("b", b.as_tensor()));
            }
            if ig {
                vars.push(("x", x.as_tensor()));
            } else {
                assert!(
                    gf.get(x.as_tensor()).is_none(),
                    "case {i}: dx not asked for"
                );
            }
            for (name, v) in vars {
                let d = max_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
                assert!(d < 1e-4, "case {i}: d{name} differs by {d}");
            }
        }
    }
}
