//! 2-D convolution (any stride, zero padding, optional bias) by im2col packing and one gemm per
//! image for the output, the weight gradient and the input gradient — the input gradient only
//! where the input needs one (never for the images themselves). Images are spread over rayon's
//! pool, each gemm runs on one thread, and every per-thread buffer is reused across the images it
//! handles.
//!
//! - this file: the geometry, the forward and backward passes, candle's custom ops;
//! - `pack.rs`: im2col packing and its adjoint col2im;
//! - `tests.rs`: against candle's conv2d and central differences.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{Mat, gemm_into};
use super::ops::{conv_ops, slice};
use super::scratch::Buf;
use super::transpose::{Strided, transpose_into};

mod pack;

pub(super) use pack::{col2im, im2col};
use pack::{col2im_ld, im2col_ld, im2col_rows};

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) pad: usize,
    pub(super) stride: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geom {
    pub(super) fn new(x: &[usize], w: &[usize], pad: usize) -> Result<Self> {
        Self::strided(x, w, pad, 1)
    }

    /// The geometry at `stride` (output side `(side + 2·pad − k) / stride + 1`).
    pub(super) fn strided(x: &[usize], w: &[usize], pad: usize, stride: usize) -> Result<Self> {
        if stride == 0 {
            candle_core::bail!("conv2d: stride 0")
        }
        let (&[n, c, h, wd], &[o, c2, kh, kw]) = (x, w) else {
            candle_core::bail!("conv2d takes (N, C, H, W) and (O, C, KH, KW), got {x:?} and {w:?}")
        };
        if c != c2 || h + 2 * pad < kh || wd + 2 * pad < kw {
            candle_core::bail!("conv2d: input {x:?} does not fit kernel {w:?} with padding {pad}")
        }
        Ok(Self {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            pad,
            stride,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (wd + 2 * pad - kw) / stride + 1,
        })
    }
    /// Rows of the packed column matrix: C·KH·KW.
    pub(super) fn ck(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions per image: HO·WO.
    pub(super) fn p(&self) -> usize {
        self.ho * self.wo
    }
}

/// One image's convolution: `yn (O, HO·WO) = W · im2col(xn) [+ b]`, packing into `col`.
pub(super) fn conv_image(
    g: &Geom,
    xn: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    col: &mut [f32],
    yn: &mut [f32],
) {
    let (ck, p) = (g.ck(), g.p());
    im2col(g, xn, col);
    if let Some(b) = bias {
        for (row, &bo) in yn.chunks_mut(p).zip(b) {
            row.fill(bo);
        }
    }
    let a = Mat {
        data: w,
        rs: ck,
        cs: 1,
    };
    let b = Mat {
        data: col,
        rs: p,
        cs: 1,
    };
    gemm_into(yn, g.o, p, ck, a, b, bias.is_some());
}

/// Below this many output positions per image, the images of a part (see
/// [`super::part_len`]) are packed side by side into one product: a ResNet's last stage at
/// 64×64 has 2×2 maps, and four columns a gemm would waste it.
const SMALL_OUTPUT: usize = 512;

/// Whether the convolution packs a part's images into one product.
fn batched(g: &Geom) -> bool {
    g.p() < SMALL_OUTPUT
}

/// dY of a part's images `(O, images·P)` gathered from (N, O, P), rows `ld` apart.
fn gather_part(g: &Geom, gy: &[f32], first: usize, images: usize, ld: usize) -> Buf {
    let (o, p) = (g.o, g.p());
    let mut d = Buf::scratch(o * ld);
    for i in 0..images {
        for oo in 0..o {
            d[oo * ld + i * p..][..p].copy_from_slice(&gy[((first + i) * o + oo) * p..][..p]);
        }
    }
    d
}

/// The row length for a packed matrix of `len`-value rows that a weight-gradient product
/// reads down its columns (a transposed operand): `len`, or 16 more where `len` is a multiple
/// of 64. Rows a multiple of 256 bytes apart share a few cache sets, and gemm reads such a
/// column at a third to a half of its speed: ResNet's stem at 64×64 (1024 positions per image),
/// 55 against 102 GFLOP/s on one Zen 4 core; 512-value rows, 2 KB apart, likewise.
fn padded(len: usize) -> usize {
    if len.is_multiple_of(64) {
        len + 16
    } else {
        len
    }
}

/// The forward pass, a part of images per product.
fn conv_forward_batched(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ck, p, img, per) = (g.ck(), g.p(), g.c * g.h * g.w, super::part_len());
    let mut y = vec![0f32; g.n * g.o * p];
    y.par_chunks_mut(per * g.o * p)
        .enumerate()
        .for_each(|(k, yk)| {
            let images = yk.len() / (g.o * p);
            let ld = images * p;
            let mut col = Buf::scratch(ck * ld);
            for i in 0..images {
                im2col_ld(g, &x[(k * per + i) * img..][..img], &mut col, ld, i * p);
            }
            let mut out = Buf::scratch(g.o * ld);
            let a = Mat {
                data: w,
                rs: ck,
                cs: 1,
            };
            let b = Mat {
                data: &col,
                rs: ld,
                cs: 1,
            };
            gemm_into(&mut out, g.o, ld, ck, a, b, false);
            for i in 0..images {
                for oo in 0..g.o {
                    let dst = &mut yk[(i * g.o + oo) * p..][..p];
                    dst.copy_from_slice(&out[oo * ld + i * p..][..p]);
                    if let Some(b) = bias {
                        dst.iter_mut().for_each(|v| *v += b[oo]);
                    }
                }
            }
        });
    y
}

/// Values of the whole batch's column matrix up to which [`conv_weight_grad_whole`] packs it
/// (256 MB).
const WHOLE_COL: usize = 1 << 26;

/// The product depth (a part's images × positions) up to which [`conv_weight_grad_whole`] is
/// faster: a part's partial gradient costs a write of every weight for that many products
/// each. Measured on ResNet-18's last stages (2×2 maps: 34 → 18 ms for 32 images and 512
/// channels); deeper products lose to the per-part ones (16×16 maps: 17 → 29 ms).
const WHOLE_DEPTH: usize = 128;

/// Output channels per product of [`conv_weight_grad_whole`]: a constant, so the values do not
/// depend on the thread count.
const ROWS_PER_TASK: usize = 32;

/// dW (O, C·KH·KW) = dY (O, N·P) · colᵀ (N·P, C·KH·KW) for small maps: the whole batch's
/// columns packed once (input channels in parallel), then one product per block of output
/// channels over every image at once — each dW value is one dot product over the batch, so
/// the sum has a fixed order, and no per-part partial gradients are written and added (what
/// makes [`conv_weight_grad_batched`] slow when the weights are large and the maps small: a
/// ResNet's last stage).
fn conv_weight_grad_whole(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let (ck, p, img, taps) = (g.ck(), g.p(), g.c * g.h * g.w, g.kh * g.kw);
    let (depth, ld) = (g.n * p, padded(g.n * p));
    let mut col = Buf::scratch(ck * ld);
    col.par_chunks_mut(taps * ld)
        .enumerate()
        .for_each(|(c, rows)| {
            for i in 0..g.n {
                im2col_rows(g, &x[i * img..][..img], rows, ld, i * p, c..c + 1);
            }
        });
    let dy = gather_part(g, gy, 0, g.n, ld);
    let mut dw = vec![0f32; g.o * ck];
    dw.par_chunks_mut(ROWS_PER_TASK * ck)
        .enumerate()
        .for_each(|(t, out)| {
            let rows = out.len() / ck;
            let a = Mat {
                data: &dy[t * ROWS_PER_TASK * ld..][..rows * ld],
                rs: ld,
                cs: 1,
            };
            let b = Mat {
                data: &col,
                rs: 1,
                cs: ld,
            };
            gemm_into(out, rows, ck, depth, a, b, false);
        });
    dw
}

/// dW, a part of images per product (k = images·P), the parts added in order.
fn conv_weight_grad_batched(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
    if g.p() * super::part_len() <= WHOLE_DEPTH && g.ck() * g.n * g.p() <= WHOLE_COL {
        return conv_weight_grad_whole(g, x, gy);
    }
    let (ck, p, img) = (g.ck(), g.p(), g.c * g.h * g.w);
    let partial: Vec<Buf> = super::parts(g.n)
        .map(|images| {
            let (first, count) = (images.start, images.len());
            let (depth, ld) = (count * p, padded(count * p));
            let mut col = Buf::scratch(ck * ld);
            for i in 0..count {
                im2col_ld(g, &x[(first + i) * img..][..img], &mut col, ld, i * p);
            }
            let dy = gather_part(g, gy, first, count, ld);
            let mut acc = Buf::scratch(g.o * ck);
            let a = Mat {
                data: &dy,
                rs: ld,
                cs: 1,
            };
            let b = Mat {
                data: &col,
                rs: 1,
                cs: ld,
            };
            gemm_into(&mut acc, g.o, ck, depth, a, b, false);
            acc
        })
        .collect();
    super::add_in_order(partial, g.o * ck)
}

/// dX, a part of images per product.
fn conv_input_grad_batched(g: &Geom, gy: &[f32], w: &[f32]) -> Vec<f32> {
    let (ck, p, img, per) = (g.ck(), g.p(), g.c * g.h * g.w, super::part_len());
    let mut gx = vec![0f32; g.n * img];
    gx.par_chunks_mut(per * img)
        .enumerate()
        .for_each(|(k, gxk)| {
            let images = gxk.len() / img;
            let ld = images * p;
            let dy = gather_part(g, gy, k * per, images, ld);
            let mut col = Buf::scratch(ck * ld);
            let a = Mat {
                data: w,
                rs: 1,
                cs: ck,
            };
            let b = Mat {
                data: &dy,
                rs: ld,
                cs: 1,
            };
            gemm_into(&mut col, ck, ld, g.o, a, b, false);
            for i in 0..images {
                col2im_ld(g, &col, &mut gxk[i * img..][..img], ld, i * p);
            }
        });
    gx
}

/// y = conv(x, w) [+ b]: the forward pass.
fn conv_forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    if batched(g) {
        return conv_forward_batched(g, x, w, bias);
    }
    let (ck, p) = (g.ck(), g.p());
    let mut y = vec![0f32; g.n * g.o * p];
    let img = g.c * g.h * g.w;
    y.par_chunks_mut(g.o * p).enumerate().for_each_init(
        || Buf::scratch(ck * p),
        |col, (n, yn)| conv_image(g, &x[n * img..][..img], w, bias, col, yn),
    );
    y
}

/// dW (O, C·KH·KW) = Σₙ dYₙ (O, P) · colₙᵀ (P, C·KH·KW), summed over fixed parts of the batch
/// in order (the same result for any thread count). Each part accumulates the transpose,
/// dWᵀ += colₙ · dYₙᵀ, so that gemm reads the packed columns row by row (its left operand)
/// rather than as a transposed right operand — 101 against 81 GFLOP/s on one Zen 4 core for
/// ResNet's 7×7 stem at 112×112 (64 × 147 × 3136) —, and is transposed once per part.
fn conv_weight_grad(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
    if batched(g) {
        return conv_weight_grad_batched(g, x, gy);
    }
    let (ck, p, ld) = (g.ck(), g.p(), padded(g.p()));
    let img = g.c * g.h * g.w;
    let partial: Vec<Buf> = super::parts(g.n)
        .map(|images| {
            let mut acc = Buf::zeroed(ck * g.o);
            let mut col = Buf::scratch(ck * ld);
            // dYₙ copied to rows `ld` apart where the padding differs.
            let mut dy = Buf::scratch(if ld == p { 0 } else { g.o * ld });
            for n in images {
                im2col_ld(g, &x[n * img..][..img], &mut col, ld, 0);
                let gyn = &gy[n * g.o * p..][..g.o * p];
                let dyt_rows = if ld == p {
                    gyn
                } else {
                    for (d, s) in dy.chunks_exact_mut(ld).zip(gyn.chunks_exact(p)) {
                        d[..p].copy_from_slice(s);
                    }
                    &dy[..]
                };
                let col = Mat {
                    data: &col,
                    rs: ld,
                    cs: 1,
                };
                let dyt = Mat {
                    data: dyt_rows,
                    rs: 1,
                    cs: ld,
                };
                gemm_into(&mut acc, ck, g.o, p, col, dyt, true);
            }
            let mut dw = Buf::scratch(g.o * ck);
            transpose_into(
                Strided {
                    data: &acc,
                    rows: ck,
                    cols: g.o,
                    stride: g.o,
                },
                &mut dw,
                ck,
            );
            dw
        })
        .collect();
    super::add_in_order(partial, g.o * ck)
}

/// dX: colₙ' (C·KH·KW, P) = Wᵀ · dYₙ, folded back with [`col2im`].
fn conv_input_grad(g: &Geom, gy: &[f32], w: &[f32]) -> Vec<f32> {
    if batched(g) {
        return conv_input_grad_batched(g, gy, w);
    }
    let (ck, p) = (g.ck(), g.p());
    let img = g.c * g.h * g.w;
    let mut gx = vec![0f32; g.n * img];
    gx.par_chunks_mut(img).enumerate().for_each_init(
        || Buf::scratch(ck * p),
        |col, (n, gxn)| {
            gemm_into(
                col,
                ck,
                p,
                g.o,
                Mat {
                    data: w,
                    rs: 1,
                    cs: ck,
                },
                Mat {
                    data: &gy[n * g.o * p..][..g.o * p],
                    rs: p,
                    cs: 1,
                },
                false,
            );
            col2im(g, col, gxn);
        },
    );
    gx
}

/// dB (O) = Σ over images and positions of dY.
fn bias_grad(g: &Geom, gy: &[f32]) -> Vec<f32> {
    let p = g.p();
    (0..g.o)
        .into_par_iter()
        .map(|o| {
            (0..g.n)
                .map(|n| gy[(n * g.o + o) * p..][..p].iter().sum::<f32>())
                .sum()
        })
        .collect()
}

struct Conv {
    pub(super) pad: usize,
    stride: usize,
    input_grad: bool,
}

impl Conv {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Geom> {
        Geom::strided(x, w, self.pad, self.stride)
    }

    fn forward(&self, g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> (Vec<f32>, Shape) {
        let y = conv_forward(g, x, w, bias);
        (y, Shape::from((g.n, g.o, g.ho, g.wo)))
    }

    /// (dX when asked for, dW, dB when the convolution has a bias).
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        gy: &Tensor,
        bias: bool,
    ) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let gy = gy.contiguous()?;
        let gw = x.apply_op2_no_bwd(&gy, &WeightGrad(self.pad, self.stride, w.dims4()?))?;
        let gx = if self.input_grad {
            Some(gy.apply_op2_no_bwd(w, &InputGrad(self.pad, self.stride, x.dims4()?))?)
        } else {
            None
        };
        let gb = if bias {
            Some(gy.apply_op1_no_bwd(&BiasGrad)?)
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}

conv_ops!(Conv, "siam-conv2d", "siam-conv2d-bias");

/// Padding, stride, and the weight's shape.
struct WeightGrad(usize, usize, (usize, usize, usize, usize));

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "siam-conv2d-weight-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (o, c, kh, kw) = self.2;
        let g = Geom::strided(l1.dims(), &[o, c, kh, kw], self.0, self.1)?;
        if l2.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!("conv2d weight gradient: dY has shape {:?}", l2.dims())
        }
        let gw = conv_weight_grad(&g, slice(s1, l1)?, slice(s2, l2)?);
        Ok((CpuStorage::F32(gw), Shape::from(self.2)))
    }
}

/// Padding, stride, and the input's shape.
struct InputGrad(usize, usize, (usize, usize, usize, usize));

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "siam-conv2d-input-grad"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = self.2;
        let g = Geom::strided(&[n, c, h, w], l2.dims(), self.0, self.1)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!("conv2d input gradient: dY has shape {:?}", l1.dims())
        }
        let gx = conv_input_grad(&g, slice(s1, l1)?, slice(s2, l2)?);
        Ok((CpuStorage::F32(gx), Shape::from(self.2)))
    }
}

struct BiasGrad;

impl CustomOp1 for BiasGrad {
    fn name(&self) -> &'static str {
        "siam-conv2d-bias-grad"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, o, h, w] = l.dims() else {
            candle_core::bail!("bias gradient takes (N, O, H, W), got {:?}", l.dims())
        };
        let g = Geom {
            n,
            c: 0,
            h: 0,
            w: 0,
            o,
            kh: 0,
            kw: 0,
            pad: 0,
            stride: 1,
            ho: h,
            wo: w,
        };
        Ok((CpuStorage::F32(bias_grad(&g, slice(s, l)?)), Shape::from(o)))
    }
}

/// 2-D convolution, stride 1, zero `padding`, with an optional bias of one value per output
/// channel. `input_grad = false` skips the input's gradient (for the images themselves).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    input_grad: bool,
) -> Result<Tensor> {
    conv2d_strided(x, w, bias, padding, 1, input_grad)
}

/// [`conv2d`] at any `stride` (ResNet's stride-2 convolutions, its 7×7 stem and 1×1
/// downsampling): output side `(side + 2·padding − k) / stride + 1`, as PyTorch's. Small maps
/// without bias go to [`super::conv2d_taps`] (one product per kernel tap, no products by the
/// padding's zeros).
pub fn conv2d_strided(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    input_grad: bool,
) -> Result<Tensor> {
    if bias.is_none() && super::taps::worth_it(x.dims(), w.dims(), padding, stride) {
        return super::conv2d_taps(x, w, padding, stride, input_grad);
    }
    conv2d_im2col(x, w, bias, padding, stride, input_grad)
}

/// [`conv2d_strided`] by im2col whatever the map's size (CPU and f32; candle's conv2d
/// elsewhere): for benchmarks and tests that compare it with the tap products.
pub fn conv2d_im2col(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    input_grad: bool,
) -> Result<Tensor> {
    let mut all = vec![x, w];
    all.extend(bias);
    if !super::fast_path(&all) {
        let y = x.conv2d(w, padding, stride, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        };
    }
    let op = Conv {
        pad: padding,
        stride,
        input_grad,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

#[cfg(test)]
mod tests;
