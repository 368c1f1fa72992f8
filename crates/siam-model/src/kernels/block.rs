//! The convnet's block as one operation on channel-last (N, H, W, C) activations:
//! `[pool2](relu(bn2(conv2(relu(bn1(conv1(x)))))))`, both convolutions 3×3 with padding 1 and no
//! bias; or a ResNet's BasicBlock without downsampling,
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + x)` ([`BlockEnd`]). The convolutions run by Winograd
//! F(4×4, 3×3) (a direct convolution for inputs of fewer than four channels, the first layer on
//! images); BatchNorm, ReLU and pooling are vector
//! operations over the channels. No full-size activation or gradient passes through candle's
//! graph: its backward pass sees only the block's input, output and one parameter vector.
//!
//! The parameters come packed in one vector, `[w1, p1, q1, w2, p2, q2]`: in training (p, q) are
//! BatchNorm's (γ, β) and the batch statistics normalise; in evaluation they are the per-channel
//! scale and shift folded from the running statistics. The batch statistics of a training
//! forward pass are reported for the caller to update the running statistics.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::nhwc::{
    Norm, NormSaved, affine_add_relu, affine_relu, direct_backward, direct_forward, max_pool2,
    norm_grad, norm_relu_backward, norm_saved, unpool2,
};
use super::ops::{cpu_values, hold, slice};
use super::scratch::Buf;
use super::winograd::{self, Act, GradOut, MIN_CHANNELS, Wino};

/// Images per chunk of an evaluation forward pass (bounded memory, warm caches).
const EVAL_CHUNK: usize = 64;

/// How a block ends after its second BatchNorm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BlockEnd {
    /// ReLU (the convnet's blocks without pooling).
    Relu,
    /// ReLU and 2×2 max-pooling.
    Pool,
    /// The block's input added, then ReLU: a ResNet BasicBlock whose shape does not change
    /// (stride 1, as many output channels as input ones, no downsampling).
    Residual,
}

/// The batch mean and biased variance of each BatchNorm of a training forward pass.
pub(crate) type BatchStats = [(Vec<f32>, Vec<f32>); 2];

/// One convolution's saved state: Winograd's transforms, or the input of a direct one.
#[derive(Debug)]
enum ConvSaved {
    Wino(winograd::Saved),
    Direct(Vec<f32>),
}

/// A convolution's weights as its forward pass uses them: Winograd's ([`winograd::Weights`]),
/// or as they are for a direct convolution.
#[derive(Debug)]
enum Prepared {
    Wino(winograd::Weights),
    Direct(Buf),
}

/// The weights `w` prepared for convolutions of geometry `g`.
fn prepare(w: &[f32], g: &Wino) -> Prepared {
    if g.c >= MIN_CHANNELS {
        Prepared::Wino(winograd::Weights::new(g, w))
    } else {
        let mut b = Buf::scratch(w.len());
        b.copy_from_slice(w);
        Prepared::Direct(b)
    }
}

/// One convolution of `act` applied to `x`; `w` as [`prepare`] made it. Winograd applies the
/// activation as it reads `x`; a direct convolution gets it written out first.
fn conv_forward(g: &Wino, x: &[f32], act: Act<'_>, w: &Prepared, keep: bool) -> (Buf, ConvSaved) {
    let mut y = Buf::scratch(g.n * g.ho * g.wo * g.o);
    let w = match w {
        Prepared::Wino(k) => {
            let s = winograd::forward_act(g, x, act, k, &mut y, keep);
            return (y, ConvSaved::Wino(s));
        }
        Prepared::Direct(w) => w,
    };
    let z = act.map(|(a, b)| {
        let mut z = Buf::scratch(x.len());
        affine_relu(x, a, b, &mut z);
        z
    });
    let x = z.as_deref().unwrap_or(x);
    direct_forward(g, x, w, &mut y);
    (
        y,
        ConvSaved::Direct(if keep { x.to_vec() } else { Vec::new() }),
    )
}

/// One convolution's backward pass, followed in the forward pass by the BatchNorm + ReLU
/// whose saved state is `norm`, from that activation's output gradient `gz` and the
/// convolution's output `y`: (dX when asked for, dW, dγ, dβ). Winograd computes the
/// convolution's output gradient as it reads `y` and `gz`; a direct convolution gets it written
/// out first.
fn conv_norm_backward(
    (g, s, w): (&Wino, &ConvSaved, &[f32]),
    (y, gz): (&[f32], &[f32]),
    norm: &NormSaved,
    gamma: Option<&[f32]>,
    input_grad: bool,
) -> (Option<Buf>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (n, o) = (g.n, g.o);
    match s {
        ConvSaved::Wino(s) => {
            let (grad, dp, dq) = norm_grad(y, gz, n, o, norm, gamma);
            let gy = GradOut::Norm { y, gz, grad: &grad };
            let (gx, gw) = winograd::backward_from(g, s, gy, w, input_grad);
            (gx, gw, dp, dq)
        }
        ConvSaved::Direct(x) => {
            let (gy, dp, dq) = norm_relu_backward(y, gz, n, o, norm, gamma);
            let (gx, gw) = direct_backward(g, x, w, &gy, input_grad);
            (gx, gw, dp, dq)
        }
    }
}

/// Everything the backward pass needs from a training forward pass.
#[derive(Debug)]
struct Saved {
    g1: Wino,
    g2: Wino,
    c1: ConvSaved,
    y1: Buf,
    n1: NormSaved,
    c2: ConvSaved,
    y2: Buf,
    n2: NormSaved,
    /// Where each pooled maximum came from (pooling blocks).
    arg: Vec<u8>,
}

/// The fused block.
pub(super) struct BlockOp {
    pub(super) cin: usize,
    pub(super) cout: usize,
    /// What follows the second BatchNorm.
    pub(super) end: BlockEnd,
    /// Compute the input's gradient (not for the images).
    pub(super) input_grad: bool,
    /// Batch statistics (training) with this ε, or `None`: the packed affine parameters.
    pub(super) batch_eps: Option<f64>,
    saved: Mutex<Option<Saved>>,
    stats: Arc<Mutex<Option<BatchStats>>>,
}

/// The parameter slices of a packed vector: (w1, p1, q1, w2, p2, q2).
type Params<'a> = (
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a [f32],
    &'a [f32],
);

impl BlockOp {
    pub(super) fn new(
        cin: usize,
        cout: usize,
        end: BlockEnd,
        input_grad: bool,
        batch_eps: Option<f64>,
    ) -> (Self, Arc<Mutex<Option<BatchStats>>>) {
        let stats = Arc::new(Mutex::new(None));
        (
            Self {
                cin,
                cout,
                end,
                input_grad,
                batch_eps,
                saved: Mutex::new(None),
                stats: stats.clone(),
            },
            stats,
        )
    }

    /// Length of the packed parameter vector.
    pub(super) fn param_len(cin: usize, cout: usize) -> usize {
        cout * cin * 9 + cout * cout * 9 + 4 * cout
    }

    fn split<'a>(&self, p: &'a [f32]) -> Result<Params<'a>> {
        let (c, o) = (self.cin, self.cout);
        if p.len() != Self::param_len(c, o) {
            candle_core::bail!(
                "conv block {c}->{o} takes {} parameters, got {}",
                Self::param_len(c, o),
                p.len()
            )
        }
        let (w1, r) = p.split_at(o * c * 9);
        let (p1, r) = r.split_at(o);
        let (q1, r) = r.split_at(o);
        let (w2, r) = r.split_at(o * o * 9);
        let (p2, q2) = r.split_at(o);
        Ok((w1, p1, q1, w2, p2, q2))
    }

    fn norm<'a>(&self, p: &'a [f32], q: &'a [f32]) -> Norm<'a> {
        match self.batch_eps {
            Some(eps) => Norm::Batch {
                gamma: p,
                beta: q,
                eps,
            },
            None => Norm::Affine { scale: p, shift: q },
        }
    }

    fn geometry(&self, dims: &[usize]) -> Result<(Wino, Wino)> {
        let &[n, h, w, c] = dims else {
            candle_core::bail!("conv block takes (N, H, W, C), got {dims:?}")
        };
        if c != self.cin {
            candle_core::bail!("conv block expects {} channels, got {c}", self.cin)
        }
        if self.end == BlockEnd::Residual && self.cout != c {
            candle_core::bail!(
                "a residual conv block keeps its channels: {c} in, {} out",
                self.cout
            )
        }
        let g1 = Wino::new(n, c, self.cout, h, w, 1)?;
        let g2 = Wino::new(n, self.cout, self.cout, g1.ho, g1.wo, 1)?;
        Ok((g1, g2))
    }

    /// The block on `n` images: the output and, with `keep`, the backward pass's state.
    /// `prepared` holds both convolutions' weights as [`prepare`] made them.
    fn run(
        &self,
        x: &[f32],
        params: Params<'_>,
        prepared: &(Prepared, Prepared),
        (g1, g2): (Wino, Wino),
        keep: bool,
    ) -> (Buf, Saved) {
        let (_, p1, q1, _, p2, q2) = params;
        let (w1, w2) = (&prepared.0, &prepared.1);
        let (n, o) = (g1.n, self.cout);
        let (y1, c1) = conv_forward(&g1, x, None, w1, keep);
        // Each BatchNorm + ReLU is applied by what reads its input next: the second
        // convolution, the pooling.
        let n1 = norm_saved(&y1, n, o, self.norm(p1, q1));
        let (y2, c2) = conv_forward(&g2, &y1, Some((&n1.scale, &n1.shift)), w2, keep);
        let n2 = norm_saved(&y2, n, o, self.norm(p2, q2));
        let (out, arg) = match self.end {
            BlockEnd::Pool => max_pool2(&y2, (&n2.scale, &n2.shift), n, g2.ho, g2.wo, o),
            BlockEnd::Relu => {
                let mut z2 = Buf::scratch(y2.len());
                affine_relu(&y2, &n2.scale, &n2.shift, &mut z2);
                (z2, Vec::new())
            }
            BlockEnd::Residual => {
                let mut z2 = Buf::scratch(y2.len());
                affine_add_relu(&y2, (&n2.scale, &n2.shift), x, &mut z2);
                (z2, Vec::new())
            }
        };
        let saved = Saved {
            g1,
            g2,
            c1,
            y1: if keep { y1 } else { Buf::default() },
            n1,
            c2,
            y2: if keep { y2 } else { Buf::default() },
            n2,
            arg,
        };
        (out, saved)
    }

    /// Both convolutions' weights prepared for the geometries `(g1, g2)`.
    fn prepare(
        &self,
        (w1, _, _, w2, _, _): Params<'_>,
        (g1, g2): (&Wino, &Wino),
    ) -> (Prepared, Prepared) {
        (prepare(w1, g1), prepare(w2, g2))
    }

    fn out_shape(&self, g2: &Wino) -> (usize, usize, usize, usize) {
        if self.end == BlockEnd::Pool {
            (g2.n, g2.ho / 2, g2.wo / 2, self.cout)
        } else {
            (g2.n, g2.ho, g2.wo, self.cout)
        }
    }
}

impl CustomOp2 for BlockOp {
    fn name(&self) -> &'static str {
        "siam-conv-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, p) = (slice(s1, l1)?, slice(s2, l2)?);
        let params = self.split(p)?;
        let (g1, g2) = self.geometry(l1.dims())?;
        let shape = self.out_shape(&g2);
        // Evaluation goes a chunk of images at a time: the weights are prepared for a chunk.
        let prepared = if self.batch_eps.is_some() || g1.n <= EVAL_CHUNK {
            self.prepare(params, (&g1, &g2))
        } else {
            let (c1, c2) = self.geometry(&[EVAL_CHUNK, g1.h, g1.w, g1.c])?;
            self.prepare(params, (&c1, &c2))
        };
        if self.batch_eps.is_some() {
            // Training: the whole batch at once (its statistics normalise every image).
            let (out, saved) = self.run(x, params, &prepared, (g1, g2), true);
            let stats = [
                (saved.n1.mean.clone(), saved.n1.var.clone()),
                (saved.n2.mean.clone(), saved.n2.var.clone()),
            ];
            if let Ok(mut s) = self.stats.lock() {
                *s = Some(stats);
            }
            if let Ok(mut s) = self.saved.lock() {
                *s = Some(saved);
            }
            return Ok((CpuStorage::F32(out.into_vec()), Shape::from(shape)));
        }
        // Evaluation: each image independently, a chunk at a time; nothing kept (a backward
        // pass, rare in evaluation, recomputes).
        if g1.n <= EVAL_CHUNK {
            let (out, _) = self.run(x, params, &prepared, (g1, g2), false);
            return Ok((CpuStorage::F32(out.into_vec()), Shape::from(shape)));
        }
        let img = g1.h * g1.w * g1.c;
        let per_out = shape.1 * shape.2 * shape.3;
        let mut out = vec![0f32; g1.n * per_out];
        for start in (0..g1.n).step_by(EVAL_CHUNK) {
            let k = EVAL_CHUNK.min(g1.n - start);
            let gk = self.geometry(&[k, g1.h, g1.w, g1.c])?;
            let (o, _) = self.run(&x[start * img..][..k * img], params, &prepared, gk, false);
            out[start * per_out..][..k * per_out].copy_from_slice(&o);
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        res: &Tensor,
        gout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gout, res) = (gout.contiguous()?, res.contiguous()?);
        let held = hold([x, params, &gout, &res]);
        let [xv, pv, gv, rv] = cpu_values(&held, "the conv block backward")?;
        let ps = self.split(pv)?;
        let mut lock = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("conv block state poisoned".into()))?;
        if lock.is_none() {
            let geo = self.geometry(x.dims())?;
            let prepared = self.prepare(ps, (&geo.0, &geo.1));
            *lock = Some(self.run(xv, ps, &prepared, geo, true).1);
        }
        let Some(s) = lock.as_ref() else {
            unreachable!("filled above")
        };
        let (w1, p1, _, w2, p2, _) = ps;
        let batch = self.batch_eps.is_some();
        let (n, o) = (s.g1.n, self.cout);
        let gz2 = match self.end {
            BlockEnd::Pool => unpool2(gv, &s.arg, n, s.g2.ho, s.g2.wo, o),
            BlockEnd::Relu => {
                let mut b = Buf::scratch(gv.len());
                b.copy_from_slice(gv);
                b
            }
            // The gradient through the final ReLU (the output is positive where it passes),
            // which goes both to the second BatchNorm and, as it is, to the input.
            BlockEnd::Residual => {
                let mut b = Buf::scratch(gv.len());
                b.par_iter_mut()
                    .zip(gv.par_iter().zip(rv.par_iter()))
                    .for_each(|(b, (&g, &z))| *b = if z > 0.0 { g } else { 0.0 });
                b
            }
        };
        let n2 = match self.end {
            BlockEnd::Residual => &s.n2.without_relu(),
            _ => &s.n2,
        };
        let (gz1, dw2, dp2, dq2) = conv_norm_backward(
            (&s.g2, &s.c2, w2),
            (&s.y2, &gz2),
            n2,
            batch.then_some(p2),
            true,
        );
        let skip = (self.end == BlockEnd::Residual).then_some(gz2);
        let gz1 = gz1.expect("the input gradient was asked for");
        let (gx, dw1, dp1, dq1) = conv_norm_backward(
            (&s.g1, &s.c1, w1),
            (&s.y1, &gz1),
            &s.n1,
            batch.then_some(p1),
            self.input_grad,
        );
        drop(gz1);
        let gx = gx.map(|mut gx| {
            if let Some(skip) = &skip {
                gx.par_iter_mut()
                    .zip(skip.par_iter())
                    .for_each(|(a, &b)| *a += b);
            }
            gx
        });
        drop(skip);
        let mut dp = Vec::with_capacity(pv.len());
        for part in [&dw1, &dp1, &dq1, &dw2, &dp2, &dq2] {
            dp.extend_from_slice(part);
        }
        let dev = x.device();
        let gx = gx
            .map(|v| Tensor::from_vec(v.into_vec(), x.dims(), dev))
            .transpose()?;
        Ok((gx, Some(Tensor::from_vec(dp, pv.len(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{grads_of, max_diff, rand};
    use candle_core::{D, Device, Var};

    /// The block with candle's own ops, on (N, C, H, W): conv2d, BatchNorm from the batch
    /// statistics (or the given scale and shift), ReLU, siam's separately tested pooling, or
    /// the residual add before the last ReLU.
    pub(super) fn reference(
        x: &Tensor,
        p: &[Tensor; 6],
        batch: bool,
        end: BlockEnd,
        eps: f64,
    ) -> Tensor {
        let bn = |y: Tensor, g: &Tensor, b: &Tensor| -> Tensor {
            let c = g.dim(0).unwrap();
            let (g, b) = (
                g.reshape((1, c, 1, 1)).unwrap(),
                b.reshape((1, c, 1, 1)).unwrap(),
            );
            if !batch {
                return y.broadcast_mul(&g).unwrap().broadcast_add(&b).unwrap();
            }
            let mean = y
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap();
            let d = y.broadcast_sub(&mean).unwrap();
            let var = d
                .sqr()
                .unwrap()
                .mean_keepdim(0)
                .unwrap()
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(3)
                .unwrap();
            d.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&g)
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
        };
        let y = bn(x.conv2d(&p[0], 1, 1, 1, 1).unwrap(), &p[1], &p[2])
            .relu()
            .unwrap();
        let y = bn(y.conv2d(&p[3], 1, 1, 1, 1).unwrap(), &p[4], &p[5]);
        match end {
            BlockEnd::Pool => crate::kernels::relu_max_pool2(&y.relu().unwrap()).unwrap(),
            BlockEnd::Relu => y.relu().unwrap(),
            BlockEnd::Residual => (y + x).unwrap().relu().unwrap(),
        }
    }

    /// The fused block against the reference: forward, the input's gradient and every
    /// parameter's, in training and evaluation; odd sizes, batch 1, one and three input
    /// channels (the direct first layer), a block of direct convolutions only, channel counts
    /// off the vector width, residual blocks (ResNet's, with the fixed-width paths of 64
    /// channels).
    #[test]
    fn matches_candle_ops_with_gradients() {
        use BlockEnd::{Pool, Relu, Residual};
        // (N, H, W, Cin, Cout, end)
        for (i, &(n, h, w, cin, cout, end)) in [
            (2, 7, 9, 1, 5, Pool),
            (1, 6, 6, 4, 8, Pool),
            (3, 14, 14, 3, 6, Pool),
            (2, 5, 5, 9, 4, Relu),
            (4, 8, 7, 16, 12, Relu),
            // Fewer than four channels: both convolutions direct.
            (2, 6, 6, 2, 3, Relu),
            (2, 9, 7, 12, 12, Residual),
            (3, 8, 8, 64, 64, Residual),
        ]
        .iter()
        .enumerate()
        {
            for batch in [true, false] {
                let s = 100 * i as u64 + u64::from(batch);
                let x = Var::from_tensor(&rand(&[n, cin, h, w], s)).unwrap();
                let shapes: [Vec<usize>; 6] = [
                    vec![cout, cin, 3, 3],
                    vec![cout],
                    vec![cout],
                    vec![cout, cout, 3, 3],
                    vec![cout],
                    vec![cout],
                ];
                let p: Vec<Var> = shapes
                    .iter()
                    .enumerate()
                    .map(|(k, d)| {
                        let t = rand(d, s + 10 + k as u64);
                        // γ (or the scale) around 1.
                        let t = if k == 1 || k == 4 {
                            (t + 1.0).unwrap()
                        } else {
                            t
                        };
                        Var::from_tensor(&t).unwrap()
                    })
                    .collect();
                let pt: [Tensor; 6] = std::array::from_fn(|k| p[k].as_tensor().clone());
                let eps = 1e-5;
                let theirs = reference(&x, &pt, batch, end, eps)
                    .permute((0, 2, 3, 1))
                    .unwrap();
                let packed = Tensor::cat(
                    &pt.iter()
                        .map(|t| t.flatten_all().unwrap())
                        .collect::<Vec<_>>(),
                    0,
                )
                .unwrap();
                let xn = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
                let (ours, stats) = crate::kernels::conv_block(
                    &xn,
                    &packed,
                    (cin, cout),
                    end,
                    true,
                    batch.then_some(eps),
                )
                .unwrap();
                assert_eq!(ours.dims(), theirs.dims(), "case {i}: shape");
                let theirs = theirs.contiguous().unwrap();
                // Relative to the outputs' size: unnormalised 64-channel blocks reach tens.
                let size = max_diff(&theirs, &theirs.zeros_like().unwrap());
                let d = max_diff(&ours, &theirs);
                assert!(
                    d < 1e-5 * (10.0 + size),
                    "case {i}, batch {batch}: forward differs by {d} (outputs up to {size})"
                );
                assert_eq!(
                    stats.is_some(),
                    batch,
                    "case {i}: statistics only in training"
                );
                let up = rand(ours.dims(), s + 50);
                let g1 = grads_of(&ours, &up);
                let g2 = grads_of(&theirs, &up);
                let d = max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap());
                assert!(d < 1e-3, "case {i}, batch {batch}: dx differs by {d}");
                for (k, v) in p.iter().enumerate() {
                    let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                    let scale = b
                        .abs()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .max(D::Minus1)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    let d = max_diff(a, b);
                    assert!(
                        d < 1e-4 * (1.0 + scale),
                        "case {i}, batch {batch}: parameter {k} gradient differs by {d} (scale {scale})"
                    );
                }
            }
        }
    }

    /// The activation applied by its reader — Winograd's input transform, the pooling — and
    /// its gradient computed inside Winograd's output-gradient transform give what the
    /// written-out activation and gradient give, bit for bit.
    #[test]
    fn fused_activation_and_its_gradient_equal_the_written_out_ones_bit_for_bit() {
        use super::super::nhwc::{NO_MAX, norm_grad};
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let values = crate::kernels::winograd::tests::values;
        let (n, h, w, c, o) = (3, 12, 10, 8, 16);
        let g = Wino::new(n, c, o, h, w, 1).unwrap();
        let y = values(n * h * w * c, 1);
        let (gamma, beta) = (values(c, 2), values(c, 3));
        let ns = norm_saved(
            &y,
            n,
            c,
            Norm::Batch {
                gamma: &gamma,
                beta: &beta,
                eps: 1e-5,
            },
        );
        let act = (&ns.scale[..], &ns.shift[..]);
        let mut z = Buf::scratch(y.len());
        affine_relu(&y, act.0, act.1, &mut z);
        // Pooling.
        let (fused, fused_arg) = max_pool2(&y, act, n, h, w, c);
        let ones = vec![1f32; c];
        let zero = vec![0f32; c];
        let (plain, plain_arg) = max_pool2(&z, (&ones, &zero), n, h, w, c);
        assert_eq!(bits(&fused), bits(&plain));
        assert_eq!(fused_arg, plain_arg);
        assert!(plain_arg.contains(&NO_MAX), "some windows all negative");
        // The convolution's forward pass.
        let wt = values(o * c * 9, 4);
        let u = winograd::Weights::new(&g, &wt);
        let (mut y_fused, mut y_plain) = (vec![0f32; n * h * w * o], vec![1f32; n * h * w * o]);
        let s_fused = winograd::forward_act(&g, &y, Some(act), &u, &mut y_fused, true);
        let s_plain = winograd::forward(&g, &z, &u, &mut y_plain, true);
        assert_eq!(bits(&y_fused), bits(&y_plain));
        // The backward pass through the activation (of the convolution's own output).
        let gz = values(n * h * w * o, 5);
        let (go, bo) = (values(o, 6), values(o, 7));
        let no = norm_saved(
            &y_fused,
            n,
            o,
            Norm::Batch {
                gamma: &go,
                beta: &bo,
                eps: 1e-5,
            },
        );
        let (gy, dp, dq) = norm_relu_backward(&y_fused, &gz, n, o, &no, Some(&go));
        let (grad, dp2, dq2) = norm_grad(&y_fused, &gz, n, o, &no, Some(&go));
        assert_eq!((bits(&dp), bits(&dq)), (bits(&dp2), bits(&dq2)));
        let (gx_plain, gw_plain) = winograd::backward(&g, &s_plain, &gy, &wt, true);
        let fused_gy = GradOut::Norm {
            y: &y_fused,
            gz: &gz,
            grad: &grad,
        };
        let (gx_fused, gw_fused) = winograd::backward_from(&g, &s_fused, fused_gy, &wt, true);
        assert_eq!(bits(&gw_fused), bits(&gw_plain));
        assert_eq!(bits(&gx_fused.unwrap()), bits(&gx_plain.unwrap()));
    }

    /// Every gradient against central finite differences of Σ up·block(x) in f64 (tiny blocks,
    /// training mode, with pooling and with the residual add).
    #[test]
    fn gradients_match_finite_differences() {
        // With the input added before the last ReLU, more outputs lie near its kink, where a
        // step of 2e-3 crosses it: the residual block's inputs are drawn from a seed whose
        // sampled points do not (seeds 8 and 11 put one within a step).
        for (end, cout, seed) in [(BlockEnd::Pool, 3, 5), (BlockEnd::Residual, 4, 7)] {
            finite_differences(end, cout, seed);
        }
    }

    fn finite_differences(end: BlockEnd, cout: usize, seed: u64) {
        let (n, h, w, cin) = (2, 5, 6, 4);
        let x: Vec<f32> = crate::kernels::winograd::tests::values(n * h * w * cin, seed);
        let plen = BlockOp::param_len(cin, cout);
        let mut p = crate::kernels::winograd::tests::values(plen, 6);
        // γ around 1 for both BatchNorms.
        let (o1, o2) = (cout * cin * 9, cout * cin * 9 + 2 * cout + cout * cout * 9);
        for k in 0..cout {
            p[o1 + k] += 1.0;
            p[o2 + k] += 1.0;
        }
        let dev = Device::Cpu;
        let run = |x: &[f32], p: &[f32]| -> (Tensor, Tensor, Tensor) {
            let xt = Var::from_vec(x.to_vec(), (n, h, w, cin), &dev).unwrap();
            let pt = Var::from_vec(p.to_vec(), plen, &dev).unwrap();
            let (y, _) =
                crate::kernels::conv_block(&xt, &pt, (cin, cout), end, true, Some(1e-5)).unwrap();
            (y, xt.as_tensor().clone(), pt.as_tensor().clone())
        };
        let (y, xt, pt) = run(&x, &p);
        let up = rand(y.dims(), 9);
        let f = |x: &[f32], p: &[f32]| -> f64 {
            let (y, _, _) = run(x, p);
            (y * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let g = grads_of(&y, &up);
        let gx = g
            .get(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gp = g.get(&pt).unwrap().to_vec1::<f32>().unwrap();
        let eps = 2e-3f32;
        for (vals, grads, what) in [(&x, &gx, "x"), (&p, &gp, "params")] {
            for k in (0..vals.len()).step_by(1 + vals.len() / 60) {
                let (mut a, mut b) = (vals.clone(), vals.clone());
                a[k] += eps;
                b[k] -= eps;
                let fd = if what == "x" {
                    f(&a, &p) - f(&b, &p)
                } else {
                    f(&x, &a) - f(&x, &b)
                } / (2.0 * f64::from(eps));
                let d = (fd - f64::from(grads[k])).abs();
                assert!(
                    d < 1e-3 * (1.0 + fd.abs()),
                    "{end:?}: d{what}[{k}]: {} vs finite difference {fd}",
                    grads[k]
                );
            }
        }
    }
}
