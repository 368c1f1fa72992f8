//! Fast CPU kernels for the encoders' hot operations, as candle custom ops with their
//! backward passes: 2-D convolution (stride 1, zero padding) through im2col packing and one
//! gemm per image for the output, the weight gradient and the input gradient — the input
//! gradient only where the input needs one (never for the images themselves) — and ReLU fused
//! with 2×2 max-pooling. Images are spread over rayon's pool, each gemm runs on one thread,
//! and every per-thread buffer is reused across the images it handles.
//!
//! On CUDA and Metal, and for other dtypes, the functions fall back to candle's own ops, so
//! callers use them unconditionally.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// A row-major or strided read-only matrix view for [`gemm_into`].
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    /// Distance between consecutive rows.
    rs: usize,
    /// Distance between consecutive columns.
    cs: usize,
}

impl Mat<'_> {
    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// `dst (m×n, row-major) = [dst +] a (m×k) · b (k×n)` on the calling thread.
fn gemm_into(dst: &mut [f32], m: usize, n: usize, k: usize, a: Mat<'_>, b: Mat<'_>, acc: bool) {
    assert!(
        dst.len() >= m * n && a.fits(m, k) && b.fits(k, n),
        "gemm_into: bad shapes"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assertion above bounds every element gemm reads ((m−1)·rs + (k−1)·cs within
    // `a`, likewise for `b`) and writes (m·n within `dst`); the slices cannot alias because
    // `dst` is borrowed mutably while `a` and `b` are shared borrows.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &[usize], w: &[usize], pad: usize) -> Result<Self> {
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
            ho: h + 2 * pad - kh + 1,
            wo: wd + 2 * pad - kw + 1,
        })
    }
    /// Rows of the packed column matrix: C·KH·KW.
    fn ck(&self) -> usize {
        self.c * self.kh * self.kw
    }
    /// Output positions per image: HO·WO.
    fn p(&self) -> usize {
        self.ho * self.wo
    }
}

/// Packs one image (C, H, W) into col (C·KH·KW, HO·WO): each row holds one kernel tap's view
/// of the (zero-padded) input, copied a contiguous output row at a time.
fn im2col(g: &Geom, x: &[f32], col: &mut [f32]) {
    let (p, pad) = (g.p(), g.pad as isize);
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut col[((c * g.kh + i) * g.kw + j) * p..][..p];
                for oh in 0..g.ho {
                    let dst = &mut row[oh * g.wo..][..g.wo];
                    let ih = oh as isize + i as isize - pad;
                    if ih < 0 || ih >= g.h as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &x[(c * g.h + ih as usize) * g.w..][..g.w];
                    // Output column ow reads input column ow + j − pad.
                    let lo = (pad - j as isize).clamp(0, g.wo as isize) as usize;
                    let hi = (g.w as isize + pad - j as isize).clamp(0, g.wo as isize) as usize;
                    dst[..lo].fill(0.0);
                    if hi > lo {
                        let s0 = (lo as isize + j as isize - pad) as usize;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
                    }
                    dst[hi.max(lo)..].fill(0.0);
                }
            }
        }
    }
}

/// Adds col (C·KH·KW, HO·WO) back onto one image's gradient (C, H, W): the adjoint of
/// [`im2col`].
fn col2im(g: &Geom, col: &[f32], x: &mut [f32]) {
    let (p, pad) = (g.p(), g.pad as isize);
    x.fill(0.0);
    for c in 0..g.c {
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &col[((c * g.kh + i) * g.kw + j) * p..][..p];
                for oh in 0..g.ho {
                    let ih = oh as isize + i as isize - pad;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let dst = &mut x[(c * g.h + ih as usize) * g.w..][..g.w];
                    let src = &row[oh * g.wo..][..g.wo];
                    let lo = (pad - j as isize).clamp(0, g.wo as isize) as usize;
                    let hi = (g.w as isize + pad - j as isize).clamp(0, g.wo as isize) as usize;
                    if hi > lo {
                        let s0 = (lo as isize + j as isize - pad) as usize;
                        for (d, s) in dst[s0..s0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("siam kernels take contiguous tensors"),
    }
}

/// One image's convolution: `yn (O, HO·WO) = W · im2col(xn) [+ b]`, packing into `col`.
fn conv_image(
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

/// Read access to tensors' storage, held while their values are in use.
type Held<'a> = (candle_core::StorageRef<'a>, &'a Layout);

fn hold<const N: usize>(ts: [&Tensor; N]) -> [Held<'_>; N] {
    ts.map(|t| t.storage_and_layout())
}

/// The contiguous f32 values of held CPU tensors (the backward passes' inputs); `what` names
/// the operation in the error for other devices.
fn cpu_values<'a, const N: usize>(held: &'a [Held<'_>; N], what: &str) -> Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for (o, (s, l)) in out.iter_mut().zip(held) {
        let candle_core::Storage::Cpu(s) = &**s else {
            candle_core::bail!("{what} runs on the CPU")
        };
        *o = slice(s, l)?;
    }
    Ok(out)
}

/// y = conv(x, w) [+ b]: the forward pass.
fn conv_forward(g: &Geom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (ck, p) = (g.ck(), g.p());
    let mut y = vec![0f32; g.n * g.o * p];
    let img = g.c * g.h * g.w;
    y.par_chunks_mut(g.o * p).enumerate().for_each_init(
        || vec![0f32; ck * p],
        |col, (n, yn)| conv_image(g, &x[n * img..][..img], w, bias, col, yn),
    );
    y
}

/// dW (O, C·KH·KW) = Σₙ dYₙ (O, P) · colₙᵀ (P, C·KH·KW), accumulated per thread.
fn conv_weight_grad(g: &Geom, x: &[f32], gy: &[f32]) -> Vec<f32> {
    let (ck, p) = (g.ck(), g.p());
    let img = g.c * g.h * g.w;
    (0..g.n)
        .into_par_iter()
        .fold(
            || (vec![0f32; g.o * ck], vec![0f32; ck * p]),
            |(mut acc, mut col), n| {
                im2col(g, &x[n * img..][..img], &mut col);
                gemm_into(
                    &mut acc,
                    g.o,
                    ck,
                    p,
                    Mat {
                        data: &gy[n * g.o * p..][..g.o * p],
                        rs: p,
                        cs: 1,
                    },
                    Mat {
                        data: &col,
                        rs: 1,
                        cs: p,
                    },
                    true,
                );
                (acc, col)
            },
        )
        .map(|(acc, _)| acc)
        .reduce(
            || vec![0f32; g.o * ck],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// dX: colₙ' (C·KH·KW, P) = Wᵀ · dYₙ, folded back with [`col2im`].
fn conv_input_grad(g: &Geom, gy: &[f32], w: &[f32]) -> Vec<f32> {
    let (ck, p) = (g.ck(), g.p());
    let img = g.c * g.h * g.w;
    let mut gx = vec![0f32; g.n * img];
    gx.par_chunks_mut(img).enumerate().for_each_init(
        || vec![0f32; ck * p],
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
    pad: usize,
    input_grad: bool,
}

impl Conv {
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
        let gw = x.apply_op2_no_bwd(&gy, &WeightGrad(self.pad, w.dims4()?))?;
        let gx = if self.input_grad {
            Some(gy.apply_op2_no_bwd(w, &InputGrad(self.pad, x.dims4()?))?)
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

/// The candle op traits for a convolution-like op with an optional bias: `forward` makes the
/// output from (geometry, x, w, bias), `backward` the gradients of x, w and the bias.
macro_rules! conv_ops {
    ($op:ty, $name:literal, $name_bias:literal) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let g = Geom::new(l1.dims(), l2.dims(), self.pad)?;
                let (y, shape) = self.forward(&g, slice(s1, l1)?, slice(s2, l2)?, None);
                Ok((CpuStorage::F32(y), shape))
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                _res: &Tensor,
                gy: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                let (gx, gw, _) = self.backward(x, w, gy, false)?;
                Ok((gx, Some(gw)))
            }
        }

        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name_bias
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
                let g = Geom::new(l1.dims(), l2.dims(), self.pad)?;
                let b = slice(s3, l3)?;
                if b.len() != g.o {
                    candle_core::bail!("conv2d bias has {} values for {} channels", b.len(), g.o)
                }
                let (y, shape) = self.forward(&g, slice(s1, l1)?, slice(s2, l2)?, Some(b));
                Ok((CpuStorage::F32(y), shape))
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                _b: &Tensor,
                _res: &Tensor,
                gy: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                let (gx, gw, gb) = self.backward(x, w, gy, true)?;
                Ok((gx, Some(gw), gb))
            }
        }
    };
}

conv_ops!(Conv, "siam-conv2d", "siam-conv2d-bias");

struct WeightGrad(usize, (usize, usize, usize, usize));

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
        let (o, c, kh, kw) = self.1;
        let g = Geom::new(l1.dims(), &[o, c, kh, kw], self.0)?;
        if l2.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!("conv2d weight gradient: dY has shape {:?}", l2.dims())
        }
        let gw = conv_weight_grad(&g, slice(s1, l1)?, slice(s2, l2)?);
        Ok((CpuStorage::F32(gw), Shape::from(self.1)))
    }
}

struct InputGrad(usize, (usize, usize, usize, usize));

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
        let (n, c, h, w) = self.1;
        let g = Geom::new(&[n, c, h, w], l2.dims(), self.0)?;
        if l1.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!("conv2d input gradient: dY has shape {:?}", l1.dims())
        }
        let gx = conv_input_grad(&g, slice(s1, l1)?, slice(s2, l2)?);
        Ok((CpuStorage::F32(gx), Shape::from(self.1)))
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
            ho: h,
            wo: w,
        };
        Ok((CpuStorage::F32(bias_grad(&g, slice(s, l)?)), Shape::from(o)))
    }
}

fn fast_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
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
    let mut all = vec![x, w];
    all.extend(bias);
    if !fast_path(&all) {
        let y = x.conv2d(w, padding, 1, 1, 1)?;
        return match bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
            None => Ok(y),
        };
    }
    let op = Conv {
        pad: padding,
        input_grad,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// `max_pool2d(relu(x), 2)` in one pass (equal to `relu(max_pool2d(x, 2))`); odd trailing rows
/// and columns are dropped as candle's pooling does. Its gradient goes to each window's
/// maximum when that maximum is positive.
pub fn relu_max_pool2(x: &Tensor) -> Result<Tensor> {
    if !fast_path(&[x]) {
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
fn planes_per_task(plane: usize) -> usize {
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
const NO_MAX: u8 = 4;

/// ReLU and 2×2 max-pooling of one image's (O, HO, WO) convolution output into (O, HO/2, WO/2),
/// recording where each maximum came from.
fn relu_pool_plane(yc: &[f32], ho: usize, wo: usize, out: &mut [f32], arg: &mut [u8]) {
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
fn unpool_plane(
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
        let init = || {
            (
                vec![0f32; g.o * ck],
                vec![0f32; g.o],
                vec![0f32; ck * p],
                vec![0f32; g.o * p],
            )
        };
        let add = |mut a: (Vec<f32>, Vec<f32>), b: (Vec<f32>, Vec<f32>)| {
            a.0.iter_mut().zip(&b.0).for_each(|(x, y)| *x += y);
            a.1.iter_mut().zip(&b.1).for_each(|(x, y)| *x += y);
            a
        };
        let zero = || (vec![0f32; g.o * ck], vec![0f32; g.o]);
        let (gx, (dw, db)) = if self.input_grad {
            let mut gx = vec![0f32; g.n * img];
            let acc = gx
                .par_chunks_mut(img.max(1))
                .enumerate()
                .fold(init, |mut s, (n, gxn)| {
                    per_image(n, &mut s, Some(gxn));
                    s
                })
                .map(|s| (s.0, s.1))
                .reduce(zero, add);
            (Some(gx), acc)
        } else {
            let acc = (0..g.n)
                .into_par_iter()
                .fold(init, |mut s, n| {
                    per_image(n, &mut s, None);
                    s
                })
                .map(|s| (s.0, s.1))
                .reduce(zero, add);
            (None, acc)
        };
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
    if !fast_path(&all) {
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
                for (o, &v) in yp.iter_mut().zip(xp) {
                    *o = (a * v + b).max(0.0);
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
                        let gg = if yy > 0.0 { gg } else { 0.0 };
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
                    let gg = if yy > 0.0 { gg } else { 0.0 };
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
    let (_, c, _) = bn_dims(x.dims())?;
    if !fast_path(&[x, gamma, beta]) {
        let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
        let mean = x.mean_keepdim(dims.as_slice())?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(dims.as_slice())?;
        let mut shape = vec![1; x.rank()];
        shape[1] = c;
        let y = centred
            .broadcast_div(&(&var + eps)?.sqrt()?)?
            .broadcast_mul(&gamma.reshape(shape.as_slice())?)?
            .broadcast_add(&beta.reshape(shape.as_slice())?)?
            .relu()?;
        return Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()));
    }
    let state = std::sync::Arc::new(std::sync::Mutex::new(BnState::default()));
    let op = BnRelu {
        eps,
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
pub(crate) mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Forward and every gradient against candle's own conv2d + broadcast bias.
    #[test]
    fn conv2d_matches_candle_with_gradients() {
        // (N, C, H, W, O, K, padding)
        for (i, &(n, c, h, w, o, k, pad)) in [
            (3, 2, 9, 7, 4, 3, 0),
            (2, 1, 28, 28, 5, 5, 0),
            (4, 3, 8, 8, 6, 3, 1),
            (1, 1, 5, 6, 2, 1, 0),
            (5, 4, 6, 5, 3, 3, 1),
            (2, 2, 4, 4, 3, 5, 2),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&rand(&[n, c, h, w], i as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c, k, k], 100 + i as u64)).unwrap();
            let b = Var::from_tensor(&rand(&[o], 200 + i as u64)).unwrap();
            let up = rand(
                &[n, o, h + 2 * pad - k + 1, w + 2 * pad - k + 1],
                300 + i as u64,
            );
            let ours = conv2d(&x, &wt, Some(&b), pad, true).unwrap();
            let theirs = x
                .conv2d(&wt, pad, 1, 1, 1)
                .unwrap()
                .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5, "case {i}: forward");
            let g1 = (&ours * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (name, v) in [
                ("x", x.as_tensor()),
                ("w", wt.as_tensor()),
                ("b", b.as_tensor()),
            ] {
                let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-4, "case {i}: d{name} differs by {d}");
            }
            // Without bias, and without the input's gradient.
            let nb = conv2d(&x, &wt, None, pad, false).unwrap();
            assert!(max_diff(&nb, &x.conv2d(&wt, pad, 1, 1, 1).unwrap()) < 1e-5);
            let g = nb.sum_all().unwrap().backward().unwrap();
            assert!(
                g.get(x.as_tensor()).is_none(),
                "no input gradient was asked for"
            );
            assert!(g.get(wt.as_tensor()).is_some());
        }
    }

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

    /// Distinct values spaced 1/n apart (no ties, no kinks within ±1/(2n)), shuffled.
    fn distinct(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut v: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 - 0.5).collect();
        let mut s = seed | 1;
        for i in (1..n).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.swap(i, (s % (i as u64 + 1)) as usize);
        }
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

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
