//! 3×3 stride-1 convolution of channel-first (N, C, H, W) tensors by Winograd F(4×4, 3×3): the
//! channel-last kernels of [`super::winograd`] between a transpose in and a transpose out. This
//! is most of ResNet's work (every 3×3 convolution but the first of stages 2–4); the transposes
//! cost a copy of the input and the output, the multiply stage a quarter of im2col's products.
//!
//! The op keeps nothing between its forward and backward passes: the backward pass transforms
//! its input again (a pass over the input, small beside the products), so evaluation and frozen
//! layers hold no Winograd state.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::ops::{cpu_values, hold, slice};
use super::scratch::Buf;
use super::transpose::{transpose_images, transpose_images_then};
use super::winograd::{self, MIN_CHANNELS, Wino};

/// (N, C, P) → (N, P, C), images in parallel.
fn to_channel_last(x: &[f32], n: usize, c: usize, p: usize) -> Buf {
    let mut y = Buf::scratch(n * c * p);
    transpose_images(x, &mut y, c, p);
    y
}

/// (N, P, C) → (N, C, P), images in parallel.
fn to_channel_first(x: &[f32], n: usize, c: usize, p: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * c * p];
    transpose_images(x, &mut y, p, c);
    y
}

/// The convolution of channel-first `x` by `w`, by Winograd: its output channel-last
/// (N, HO·WO, O).
fn forward_channel_last(g: &Wino, x: &[f32], w: &[f32]) -> Buf {
    let xt = to_channel_last(x, g.n, g.c, g.h * g.w);
    let u = winograd::Weights::new(g, w);
    let mut y = Buf::scratch(g.n * g.ho * g.wo * g.o);
    winograd::forward(g, &xt, &u, &mut y, false);
    y
}

/// The op: zero padding, and whether the input's gradient is wanted.
struct Conv3x3 {
    pad: usize,
    input_grad: bool,
}

impl Conv3x3 {
    fn geometry(&self, x: &[usize], w: &[usize]) -> Result<Wino> {
        let (&[n, c, h, wd], &[o, wc, 3, 3]) = (x, w) else {
            candle_core::bail!(
                "winograd conv3x3 takes (N, C, H, W) and (O, C, 3, 3), got {x:?} and {w:?}"
            )
        };
        if c != wc {
            candle_core::bail!("winograd conv3x3: the input has {c} channels, the weights {wc}")
        }
        Wino::new(n, c, o, h, wd, self.pad)
    }
}

impl CustomOp2 for Conv3x3 {
    fn name(&self) -> &'static str {
        "siam-winograd-conv3x3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1.dims(), l2.dims())?;
        let y = forward_channel_last(&g, slice(s1, l1)?, slice(s2, l2)?);
        let y = to_channel_first(&y, g.n, g.o, g.ho * g.wo);
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let g = self.geometry(x.dims(), w.dims())?;
        if gy.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!("winograd conv3x3 backward: dY has shape {:?}", gy.dims())
        }
        let (gx, gw) = {
            let held = hold([x, w, &gy]);
            let [xv, wv, gv] = cpu_values(&held, "the winograd conv3x3 backward")?;
            let xt = to_channel_last(xv, g.n, g.c, g.h * g.w);
            let saved = winograd::saved(&g, &xt);
            drop(xt);
            let gyt = to_channel_last(gv, g.n, g.o, g.ho * g.wo);
            let (gx, gw) = winograd::backward(&g, &saved, &gyt, wv, self.input_grad);
            (gx.map(|gx| to_channel_first(&gx, g.n, g.c, g.h * g.w)), gw)
        };
        let gx = gx
            .map(|v| Tensor::from_vec(v, x.dims(), x.device()))
            .transpose()?;
        let gw = Tensor::from_vec(gw, w.dims(), w.device())?;
        Ok((gx, Some(gw)))
    }
}

/// Whether Winograd beats the direct convolutions on this convolution. Its multiply stage
/// reads the weights' transform, 4× the weights, once per batch (and a training pass makes
/// the transposed transform and the weights' gradient from the transform's): with few tiles in
/// the batch (a ResNet's last stages: 2×2 or 4×4 maps, 256 or 512 channels) these cost more than
/// the products saved, and a 2×2 map fills a quarter of its one 4×4 tile. Measured on
/// ResNet-18's shapes (`xtask/examples/resnet_layers.rs` against the same layer forced through
/// [`conv3x3_winograd`], figures in docs/BENCHMARKS.md), in training and in evaluation alike:
/// Winograd wins when the batch has at least a sixteenth as many tiles as there are input
/// channels and the tiles are at least half filled — stage 4 at 112×112 (512 channels, 4×4
/// maps) from 32 images (training 23 against 29 ms; level at 16, 11 against 18 ms the other
/// way at 8), stage 3 at 64×64 (256 channels, 4×4 maps) from 16.
fn worth_it(g: &Wino) -> bool {
    let tiles = g.ho.div_ceil(4) * g.wo.div_ceil(4);
    let filled = 2 * g.ho * g.wo >= 16 * tiles;
    filled && TILES_PER_CHANNEL * g.n * tiles >= g.c
}

/// Input channels per tile of the batch up to which Winograd is faster ([`worth_it`]).
const TILES_PER_CHANNEL: usize = 16;

/// Whether [`conv3x3`] runs this convolution by Winograd (and so whether a ResNet block of two
/// such convolutions fits the fused channel-last block, [`super::conv_block`]).
pub(crate) fn conv3x3_by_winograd(x: &Tensor, w: &Tensor, padding: usize) -> bool {
    by_winograd(x, w, padding).is_some()
}

/// A 3×3 convolution without bias, stride 1, zero `padding`, of (N, C, H, W) by (O, C, 3, 3):
/// Winograd F(4×4, 3×3) on the CPU in f32 with at least four input channels where it is faster
/// (`worth_it`), [`super::conv2d`] otherwise (one product per tap on small maps, im2col on the
/// others).
/// `input_grad = false` skips the input's gradient.
pub fn conv3x3(x: &Tensor, w: &Tensor, padding: usize, input_grad: bool) -> Result<Tensor> {
    if by_winograd(x, w, padding).is_none() {
        return super::conv2d(x, w, None, padding, input_grad);
    }
    let op = Conv3x3 {
        pad: padding,
        input_grad,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// The geometry when a 3×3 convolution runs by Winograd (CPU, f32, at least four input
/// channels, [`worth_it`]); `None` otherwise.
fn by_winograd(x: &Tensor, w: &Tensor, padding: usize) -> Option<Wino> {
    let op = Conv3x3 {
        pad: padding,
        input_grad: false,
    };
    let eligible = super::fast_path(&[x, w]) && w.dims().len() == 4 && w.dims()[1] >= MIN_CHANNELS;
    eligible
        .then(|| op.geometry(x.dims(), w.dims()).ok())
        .flatten()
        .filter(worth_it)
}

/// `[relu](conv3x3(x, w)·scale[o] + shift[o] [+ residual])` — a convolution followed by a
/// BatchNorm in evaluation folded into a scale and shift (with a residual block's add and its
/// ReLU) — in evaluation without gradients, by Winograd: the map is applied to each image's
/// output as its transpose to channel-first leaves it in cache, instead of a pass of its own.
/// `None` where it does not apply (a tracked input, or a shape [`conv3x3`] would not run by
/// Winograd): the caller runs the two ops.
pub(crate) fn conv3x3_affine_inference(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    (scale, shift): (&Tensor, &Tensor),
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let mut ts = vec![x, w, scale, shift];
    ts.extend(residual);
    if !super::fast_path(&ts) || ts.iter().any(|t| t.track_op()) {
        return Ok(None);
    }
    let Some(g) = by_winograd(x, w, padding) else {
        return Ok(None);
    };
    let out = [g.n, g.o, g.ho, g.wo];
    if scale.elem_count() != g.o || shift.elem_count() != g.o {
        candle_core::bail!(
            "conv3x3 with {} output channels got {} scales and {} shifts",
            g.o,
            scale.elem_count(),
            shift.elem_count()
        )
    }
    if let Some(r) = residual.filter(|r| r.dims() != out) {
        candle_core::bail!("a residual of shape {:?} for {out:?}", r.dims())
    }
    let (s, t): (Vec<f32>, Vec<f32>) = (
        scale.flatten_all()?.to_vec1()?,
        shift.flatten_all()?.to_vec1()?,
    );
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let r = residual.map(Tensor::contiguous).transpose()?;
    let y = {
        let held = hold([&x, &w, r.as_ref().unwrap_or(&x)]);
        let [xv, wv, rv] = cpu_values(&held, "conv3x3 with BatchNorm")?;
        let rv = r.is_some().then_some(rv);
        let yt = forward_channel_last(&g, xv, wv);
        let p = g.ho * g.wo;
        let mut y = vec![0f32; g.n * g.o * p];
        transpose_images_then(&yt, &mut y, p, g.o, |i, img| {
            for (ch, yp) in img.chunks_exact_mut(p).enumerate() {
                let rp = rv.map(|r| &r[(i * g.o + ch) * p..][..p]);
                super::affine::plane(yp, None, rp, (s[ch], t[ch]), relu);
            }
        });
        y
    };
    Tensor::from_vec(y, &out, x.device()).map(Some)
}

/// [`conv3x3`] by Winograd whatever the shape (CPU, f32, at least four input channels; an
/// error otherwise): for benchmarks and tests that compare it with im2col.
pub fn conv3x3_winograd(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    input_grad: bool,
) -> Result<Tensor> {
    if !super::fast_path(&[x, w]) || w.dims().get(1).is_none_or(|&c| c < MIN_CHANNELS) {
        candle_core::bail!(
            "winograd conv3x3 takes f32 CPU tensors with at least {MIN_CHANNELS} input channels"
        )
    }
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        Conv3x3 {
            pad: padding,
            input_grad,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{grads_of, max_diff, rand};
    use candle_core::Var;

    /// Forward and both gradients against candle's conv2d, on square, odd, oblong and
    /// one-tile maps, with padding 1 and 0.
    #[test]
    fn conv3x3_matches_candle_with_gradients() {
        for (k, &(n, c, o, h, wd, pad)) in [
            (2, 4, 8, 8, 8, 1),
            (3, 8, 5, 7, 7, 1),
            (2, 6, 4, 5, 9, 1),
            (1, 16, 16, 4, 4, 1),
            (2, 5, 3, 6, 11, 0),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&rand(&[n, c, h, wd], 10 + k as u64)).unwrap();
            let w = Var::from_tensor(&rand(&[o, c, 3, 3], 20 + k as u64)).unwrap();
            let r = rand(&[n, o, h + 2 * pad - 2, wd + 2 * pad - 2], 30 + k as u64);
            let ours = conv3x3(&x, &w, pad, true).unwrap();
            let theirs = x.conv2d(&w, pad, 1, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            let scale = (c * 9) as f32 * 0.25;
            assert!(
                max_diff(&ours, &theirs) < 1e-5 * scale,
                "forward {k}: {}",
                max_diff(&ours, &theirs)
            );
            let g1 = grads_of(&ours, &r);
            let g2 = grads_of(&theirs, &r);
            for v in [&x, &w] {
                let (a, b) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let bound = 1e-5 * (n * o * 9) as f32 * 0.25;
                assert!(max_diff(a, b) < bound, "gradient {k}: {}", max_diff(a, b));
            }
        }
    }

    /// Without the input's gradient only the weights get one; the result is the same.
    #[test]
    fn conv3x3_without_the_input_gradient() {
        let x = Var::from_tensor(&rand(&[2, 4, 6, 6], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[4, 4, 3, 3], 2)).unwrap();
        let y = conv3x3(&x, &w, 1, false).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        let full = conv3x3(&x, &w, 1, true).unwrap();
        let gf = full.sum_all().unwrap().backward().unwrap();
        assert_eq!(
            max_diff(g.get(&w).unwrap(), gf.get(&w).unwrap()),
            0.0,
            "the weight gradient does not depend on the input gradient"
        );
    }

    /// Winograd from a sixteenth as many tiles in the batch as input channels (one 4×4 tile
    /// per image, 32 channels: two images, not one), never on 2×2 maps; what it computes there,
    /// gradients included, is candle's convolution.
    #[test]
    fn winograd_from_a_tile_per_sixteen_channels() {
        let w = Var::from_tensor(&rand(&[8, 32, 3, 3], 5)).unwrap();
        let one = rand(&[1, 32, 4, 4], 6);
        let two = rand(&[2, 32, 4, 4], 7);
        assert!(!conv3x3_by_winograd(&one, &w, 1));
        assert!(conv3x3_by_winograd(&two, &w, 1));
        // A 2×2 map fills a quarter of its tile: direct whatever the batch.
        let small = rand(&[64, 32, 2, 2], 8);
        assert!(!conv3x3_by_winograd(&small, &w, 1));
        let x = Var::from_tensor(&two).unwrap();
        let ours = conv3x3(&x, &w, 1, true).unwrap();
        let theirs = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        let scale = 9.0 * 32.0;
        assert!(max_diff(&ours, &theirs) < 1e-5 * scale);
        let r = rand(&[2, 8, 4, 4], 9);
        let (g1, g2) = (grads_of(&ours, &r), grads_of(&theirs, &r));
        for v in [&x, &w] {
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-5 * scale, "gradient: {d}");
        }
    }

    /// Fewer than four input channels go to the im2col convolution: still candle's values.
    #[test]
    fn few_channels_fall_back() {
        let x = rand(&[2, 3, 7, 7], 3);
        let w = rand(&[4, 3, 3, 3], 4);
        let ours = conv3x3(&x, &w, 1, true).unwrap();
        let theirs = x.conv2d(&w, 1, 1, 1, 1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);
    }

    /// The fused inference op equals the convolution followed by the affine map (same bits),
    /// with and without the residual and the ReLU; it declines tracked inputs and shapes that
    /// do not run by Winograd, and names a residual of the wrong shape.
    #[test]
    fn conv3x3_affine_inference_equals_the_two_ops() {
        let (x, w) = (rand(&[3, 8, 9, 7], 1), rand(&[6, 8, 3, 3], 2));
        let (s, t) = ((rand(&[6], 3) * 4.0).unwrap(), rand(&[6], 4));
        let r = rand(&[3, 6, 9, 7], 5);
        for (relu, res) in [
            (false, None),
            (true, None),
            (true, Some(&r)),
            (false, Some(&r)),
        ] {
            let fused = conv3x3_affine_inference(&x, &w, 1, (&s, &t), relu, res)
                .unwrap()
                .expect("runs by Winograd");
            let y = conv3x3(&x, &w, 1, false).unwrap();
            let two = crate::kernels::scale_shift(&y, &s, &t, relu, res).unwrap();
            assert_eq!(
                max_diff(&fused, &two),
                0.0,
                "relu {relu}, residual {}",
                res.is_some()
            );
        }
        let wv = Var::from_tensor(&w).unwrap();
        let tracked = conv3x3_affine_inference(&x, &wv, 1, (&s, &t), true, None).unwrap();
        assert!(tracked.is_none(), "a tracked weight keeps the graph's ops");
        let few = conv3x3_affine_inference(
            &rand(&[1, 3, 9, 7], 6),
            &rand(&[6, 3, 3, 3], 7),
            1,
            (&s, &t),
            true,
            None,
        );
        assert!(few.unwrap().is_none(), "three input channels: not Winograd");
        let bad =
            conv3x3_affine_inference(&x, &w, 1, (&s, &t), true, Some(&rand(&[3, 6, 9, 6], 8)));
        assert!(bad.is_err());
    }

    #[test]
    fn transposes_invert_each_other() {
        let (n, c, p) = (3, 19, 37);
        let v: Vec<f32> = (0..n * c * p).map(|i| i as f32).collect();
        let t = to_channel_last(&v, n, c, p);
        assert_eq!(t[1], v[p], "channel 1 of pixel 0");
        assert_eq!(t[c], v[1], "channel 0 of pixel 1");
        assert_eq!(to_channel_first(&t, n, c, p), v);
    }
}
