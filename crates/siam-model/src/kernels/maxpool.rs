//! Max-pooling with any window, stride and padding (PyTorch's `max_pool2d(x, k, s, p)`,
//! padding never chosen): ResNet's 3×3 stride-2 pooling, whose backward candle lacks (it
//! supports only windows equal to the stride). The CPU op records nothing: the backward finds
//! each window's first maximum again, as PyTorch routes the gradient to one position.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::ops::slice;
use super::pool::planes_per_task;

/// Output side of a `k`-window, stride-`s`, padding-`p` pooling of `n` values.
fn out_side(n: usize, k: usize, s: usize, p: usize) -> Result<usize> {
    if k == 0 || s == 0 || p * 2 > k {
        candle_core::bail!("max-pooling window {k}, stride {s}, padding {p} is not valid")
    }
    if n + 2 * p < k {
        candle_core::bail!(
            "max-pooling window {k} is larger than the padded side {}",
            n + 2 * p
        )
    }
    Ok((n + 2 * p - k) / s + 1)
}

/// `max_pool2d(x, kernel, stride, padding)` on (N, C, H, W), as PyTorch computes it (padding
/// is never the maximum). Its gradient goes to each window's first maximum.
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    out_side(h, kernel, stride, padding)?;
    out_side(w, kernel, stride, padding)?;
    if !super::fast_path(&[x]) {
        return composed(x, kernel, stride, padding);
    }
    x.contiguous()?.apply_op1(MaxPool {
        k: kernel,
        s: stride,
        p: padding,
    })
}

/// The same with candle's ops (CUDA, Metal, other dtypes): the maximum over the window's
/// `kernel²` strided views of the input padded with its own minimum.
fn composed(x: &Tensor, k: usize, s: usize, p: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (ho, wo) = (out_side(h, k, s, p)?, out_side(w, k, s, p)?);
    let x = if p > 0 {
        // Padding by a value below every input: it is never the maximum.
        let low = (x.min_all()?.detach() - 1.0)?.to_dtype(x.dtype())?;
        let rows = low.broadcast_as((n, c, p, w))?;
        let x = Tensor::cat(&[&rows, x, &rows], 2)?;
        let cols = low.broadcast_as((n, c, h + 2 * p, p))?;
        Tensor::cat(&[&cols, &x, &cols], 3)?
    } else {
        x.clone()
    };
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    // Rows (and columns) dy, dy + s, …: pad to a multiple of s, split, take phase dy % s.
    let strided =
        |t: &Tensor, dim: usize, start: usize, count: usize, len: usize| -> Result<Tensor> {
            let need = start + count * s;
            let t = if need > len {
                let extra = need - len;
                let mut shape = t.dims().to_vec();
                shape[dim] = extra;
                Tensor::cat(&[t, &Tensor::zeros(shape, t.dtype(), t.device())?], dim)?
            } else {
                t.clone()
            };
            let t = t.narrow(dim, start, count * s)?;
            let mut shape = t.dims().to_vec();
            shape[dim] = count;
            shape.insert(dim + 1, s);
            t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
        };
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        let rows = strided(&x, 2, dy, ho, hp)?;
        for dx in 0..k {
            let v = strided(&rows, 3, dx, wo, wp)?;
            out = Some(match out {
                None => v,
                Some(o) => o.maximum(&v)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty pooling window".into()))
}

#[derive(Clone, Copy)]
struct MaxPool {
    k: usize,
    s: usize,
    p: usize,
}

impl MaxPool {
    /// The output's height and width.
    fn sides(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        Ok((
            out_side(h, self.k, self.s, self.p)?,
            out_side(w, self.k, self.s, self.p)?,
        ))
    }

    /// The outputs among `0..on` whose windows lie inside `0..n` (no clipping).
    fn interior(&self, n: usize, on: usize) -> std::ops::Range<usize> {
        let (s, k, p) = (self.s, self.k, self.p);
        let lo = p.div_ceil(s).min(on);
        let hi = if n + p >= k {
            ((n + p - k) / s + 1).clamp(lo, on)
        } else {
            lo
        };
        lo..hi
    }

    /// The window of output (oh, ow): its rows and columns clipped to the image.
    fn window(&self, o: usize, n: usize) -> std::ops::Range<usize> {
        let start = (o * self.s) as isize - self.p as isize;
        let end = (start + self.k as isize).min(n as isize);
        (start.max(0) as usize)..(end.max(0) as usize)
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "siam-max-pool2d"
    }
    fn cpu_fwd(&self, st: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let (ho, wo) = self.sides(h, w)?;
        let x = slice(st, l)?;
        let mut y = vec![0f32; n * c * ho * wo];
        let pool = *self;
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .with_min_len(planes_per_task(h * w))
            .for_each_init(
                || vec![0f32; h * wo],
                |rows, (yp, xp)| pool_plane(pool, xp, (h, w), rows, yp),
            );
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            res,
            &gy.contiguous()?,
            &MaxPoolGrad(*self),
        )?))
    }
}

/// The larger of `m` and `v`, NaN winning, `m` on ties: scanning a window in order with it
/// keeps the first maximum, as PyTorch does.
#[inline(always)]
fn first_max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() { v } else { m }
}

simd_kernel! {
/// One (H, W) plane pooled into `yp` (HO, WO), separably: each input row's maxima over the
/// windows' columns into `rows` (H, WO), then each output row the maximum of its window's
/// rows — the same values as scanning each window row by row (the first maximum kept on ties,
/// so even a zero's sign), in k + k/s comparisons per output instead of k².
fn pool_plane<'a>(
    pool: MaxPool,
    xp: &'a [f32],
    hw: (usize, usize),
    rows: &'a mut [f32],
    yp: &'a mut [f32],
) {
    let (h, w) = hw;
    let wo = rows.len() / h.max(1);
    // The outputs whose windows lie inside the row: no clipping, and for ResNet's 3-wide
    // window three values in order.
    let (s, k, p) = (pool.s, pool.k, pool.p);
    let std::ops::Range { start: lo, end: hi } = pool.interior(w, wo);
    let clipped = |xr: &[f32], ow: usize| {
        xr[pool.window(ow, w)]
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| first_max(m, v))
    };
    for (xr, hr) in xp.chunks_exact(w).zip(rows.chunks_exact_mut(wo)) {
        for ow in (0..lo).chain(hi..wo) {
            hr[ow] = clipped(xr, ow);
        }
        let inner = &mut hr[lo..hi];
        let from = lo * s - p;
        if k == 3 {
            for (m, v) in inner.iter_mut().zip(xr[from..].windows(3).step_by(s)) {
                *m = first_max(first_max(v[0], v[1]), v[2]);
            }
        } else {
            for (m, v) in inner.iter_mut().zip(xr[from..].windows(k).step_by(s)) {
                *m = v[1..].iter().fold(v[0], |m, &v| first_max(m, v));
            }
        }
    }
    for (oh, yr) in yp.chunks_exact_mut(wo).enumerate() {
        yr.fill(f32::NEG_INFINITY);
        for r in pool.window(oh, h) {
            for (y, &v) in yr.iter_mut().zip(&rows[r * wo..][..wo]) {
                *y = first_max(*y, v);
            }
        }
    }
}
}

/// The gradient of a [`MaxPool`], with its geometry.
struct MaxPoolGrad(MaxPool);

impl CustomOp3 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "siam-max-pool2d-grad"
    }
    /// (x, y, dY) → dX: each output's dY goes to the first position of its window equal to
    /// the maximum; overlapping windows add.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let pool = self.0;
        let (n, c, h, w) = l1.shape().dims4()?;
        let (ho, wo) = pool.sides(h, w)?;
        let (x, y, gy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        if y.len() != n * c * ho * wo || gy.len() != y.len() {
            candle_core::bail!(
                "max-pool gradient has shape {:?}, expected ({n}, {c}, {ho}, {wo})",
                l3.dims()
            )
        }
        let mut gx = vec![0f32; x.len()];
        gx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(y.par_chunks(ho * wo).zip(gy.par_chunks(ho * wo)))
            .with_min_len(planes_per_task(h * w))
            .for_each(|((gp, xp), (yp, gyp))| {
                let (inner_h, inner_w) = (pool.interior(h, ho), pool.interior(w, wo));
                // A 3×3 window inside the image: nine fixed offsets from its corner.
                let nine = [0, 1, 2, w, w + 1, w + 2, 2 * w, 2 * w + 1, 2 * w + 2];
                for oh in 0..ho {
                    let rows = pool.window(oh, h);
                    for ow in 0..wo {
                        let m = yp[oh * wo + ow];
                        if pool.k == 3
                            && !m.is_nan()
                            && inner_h.contains(&oh)
                            && inner_w.contains(&ow)
                        {
                            let base = (oh * pool.s - pool.p) * w + ow * pool.s - pool.p;
                            // Which of the nine equal the maximum, as bits, then the first:
                            // no branch on where the maximum is (it is anywhere).
                            let hits = nine
                                .iter()
                                .enumerate()
                                .fold(0u32, |b, (j, &o)| b | (u32::from(xp[base + o] == m) << j));
                            if hits != 0 {
                                gp[base + nine[hits.trailing_zeros() as usize]] +=
                                    gyp[oh * wo + ow];
                            }
                            continue;
                        }
                        let cols = pool.window(ow, w);
                        // The window's first position holding the maximum, row by row.
                        let at = rows.clone().find_map(|r| {
                            let row = &xp[r * w..][cols.clone()];
                            let q = if m.is_nan() {
                                row.iter().position(|v| v.is_nan())
                            } else {
                                row.iter().position(|&v| v == m)
                            };
                            q.map(|q| r * w + cols.start + q)
                        });
                        if let Some(i) = at {
                            gp[i] += gyp[oh * wo + ow];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(gx), Shape::from(l1.dims())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{distinct, max_diff};

    /// PyTorch's `max_pool2d(x, 3, 2, 1)`, recorded: on an alternating ramp
    /// `x = torch.arange(20.).reshape(1,1,4,5) * torch.tensor([1.,-1.]).repeat(10)[:20].reshape(1,1,4,5)`
    /// → `[6, 8, 8, 16, 18, 18]`; on `x = -(torch.arange(20.).reshape(1,1,4,5) + 1)` (all
    /// negative, so zero padding would give zeros) → `[-1, -2, -4, -6, -7, -9]`.
    #[test]
    fn matches_pytorch_on_signed_values() {
        let dev = candle_core::Device::Cpu;
        let alt: Vec<f32> = (0..20)
            .map(|i| i as f32 * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let neg: Vec<f32> = (0..20).map(|i| -(i as f32) - 1.0).collect();
        for (v, want) in [
            (alt, [6., 8., 8., 16., 18., 18.]),
            (neg, [-1., -2., -4., -6., -7., -9.]),
        ] {
            let x = Tensor::from_vec(v, (1, 1, 4, 5), &dev).unwrap();
            let y: Vec<f32> = max_pool2d(&x, 3, 2, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(y, want);
            let c: Vec<f32> = composed(&x, 3, 2, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(c, want);
        }
    }

    #[test]
    fn forward_and_backward_equal_the_composed_ops() {
        for (shape, k, s, p) in [
            ([2, 3, 9, 8], 3, 2, 1),
            ([1, 2, 7, 7], 3, 2, 0),
            ([2, 2, 6, 5], 2, 2, 0),
            ([1, 3, 8, 9], 3, 1, 1),
        ] {
            let x = candle_core::Var::from_tensor(&distinct(&shape, 7)).unwrap();
            let y = max_pool2d(x.as_tensor(), k, s, p).unwrap();
            let r = composed(x.as_tensor(), k, s, p).unwrap();
            assert_eq!(max_diff(&y, &r), 0.0, "{shape:?} {k} {s} {p}");
            // A weighted sum, so each output's gradient differs.
            let wts = distinct(y.dims(), 11);
            let g = (y * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (r * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (g.get(&x).unwrap(), gr.get(&x).unwrap());
            assert!(
                max_diff(a, b) < 1e-6,
                "{shape:?} {k} {s} {p}: {}",
                max_diff(a, b)
            );
        }
    }

    /// The separable forward pass gives each window's first maximum in row-major order, bit for
    /// bit: values drawn from {−0, +0, 1, NaN} (ties, zeros of both signs, NaN winning), for
    /// several windows, strides and paddings.
    #[test]
    fn separable_forward_equals_the_window_scan_bit_for_bit() {
        let vals = [-0.0f32, 0.0, 1.0, f32::NAN, 0.0, -0.0, 1.0, 0.0];
        for (h, w, k, s, p) in [
            (9, 8, 3, 2, 1),
            (7, 7, 3, 2, 0),
            (6, 5, 2, 2, 0),
            (8, 9, 3, 1, 1),
        ] {
            let x: Vec<f32> = (0..2 * h * w).map(|i| vals[(i * 7 + i / 5) % 8]).collect();
            let t = Tensor::from_vec(x.clone(), (1, 2, h, w), &candle_core::Device::Cpu).unwrap();
            let pool = MaxPool { k, s, p };
            let y: Vec<f32> = max_pool2d(&t, k, s, p)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (ho, wo) = pool.sides(h, w).unwrap();
            let mut want = Vec::new();
            for xp in x.chunks(h * w) {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let mut m = f32::NEG_INFINITY;
                        for r in pool.window(oh, h) {
                            for &v in &xp[r * w..][pool.window(ow, w)] {
                                if v > m || v.is_nan() {
                                    m = v;
                                }
                            }
                        }
                        want.push(m);
                    }
                }
            }
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "{h}x{w} {k} {s} {p}");
        }
    }

    /// On ties each output's gradient goes to the first maximum of its window in row-major
    /// order (PyTorch's choice), inside the image and at its edges, NaN windows included: the
    /// gradient equals the definition's bit for bit.
    #[test]
    fn gradient_goes_to_the_first_maximum_on_ties() {
        let vals = [
            0.0f32,
            1.0,
            1.0,
            0.0,
            1.0,
            f32::NAN,
            0.0,
            1.0,
            1.0,
            1.0,
            0.0,
        ];
        for (h, w, k, s, p) in [
            (9, 8, 3, 2, 1),
            (8, 9, 3, 1, 1),
            (7, 7, 3, 2, 0),
            (6, 5, 2, 2, 0),
        ] {
            let n = 2 * h * w;
            let x: Vec<f32> = (0..n).map(|i| vals[(i * 5 + i / 7) % vals.len()]).collect();
            let t = Tensor::from_vec(x.clone(), (1, 2, h, w), &candle_core::Device::Cpu).unwrap();
            let v = candle_core::Var::from_tensor(&t).unwrap();
            let pool = MaxPool { k, s, p };
            let (ho, wo) = pool.sides(h, w).unwrap();
            let wts: Vec<f32> = (0..2 * ho * wo).map(|i| 1.0 + i as f32).collect();
            let wt = Tensor::from_vec(wts.clone(), (1, 2, ho, wo), t.device()).unwrap();
            let y = max_pool2d(v.as_tensor(), k, s, p).unwrap();
            let ys: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let g = (y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
            let got: Vec<f32> = g.get(&v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let mut want = vec![0f32; n];
            for c in 0..2 {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let o = (c * ho + oh) * wo + ow;
                        let m = ys[o];
                        let first = pool
                            .window(oh, h)
                            .flat_map(|r| pool.window(ow, w).map(move |q| (c * h + r) * w + q))
                            .find(|&i| x[i] == m || (m.is_nan() && x[i].is_nan()));
                        want[first.unwrap()] += wts[o];
                    }
                }
            }
            assert_eq!(got, want, "{h}x{w} {k} {s} {p}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let x = distinct(&[1, 2, 7, 6], 3);
        let wts = distinct(&[1, 2, 4, 3], 5);
        let f = |t: &Tensor| -> f64 {
            f64::from(
                (max_pool2d(t, 3, 2, 1).unwrap() * &wts)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let g = (max_pool2d(v.as_tensor(), 3, 2, 1).unwrap() * &wts)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g: Vec<f32> = g.get(&v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-3f32;
        for i in (0..xs.len()).step_by(5) {
            let bump = |d: f32| {
                let mut v = xs.clone();
                v[i] += d;
                f(&Tensor::from_vec(v, x.dims(), x.device()).unwrap())
            };
            let fd = (bump(eps) - bump(-eps)) / (2.0 * f64::from(eps));
            assert!((fd - f64::from(g[i])).abs() < 1e-2, "{i}: {fd} vs {}", g[i]);
        }
    }
}
