//! Convolution as one product per kernel tap, for small maps (a ResNet's last stages at 64×64:
//! 4×4 and 2×2 maps of 256 and 512 channels).
//!
//! im2col multiplies every tap by every output position, zero padding included: on a 2×2 map a
//! 3×3 kernel with padding 1 reads 16 real inputs out of the 36 it packs, so 56 % of its
//! products are by zero, and its weight gradient is one product of depth N·P (128 for 32
//! images) writing all of dW. Here the activations are laid out position by position, images
//! within a position, channels last — `(P, N, C)`, one row per (position, image) — and each
//! tap is a product of the rows it really reads: output rows `r…r+len` += input rows
//! `s…s+len` · W_tapᵀ, with `len` = N·(the tap's valid run of output columns), merged across
//! output rows where both sides stay contiguous (a 2×2 map's centre tap is one product of all
//! 4·N rows). Only the real products are computed, forward and backward, and the weight
//! gradient of a tap is one product over the rows it reads. At stride 2 the input's positions
//! are grouped by stride phase ([`Order`]), so a tap's runs are whole output rows there too.
//!
//! The op takes and returns channel-first tensors (N, C, H, W), rearranging on the way in and
//! out (cheap on small maps). Work is split in fixed blocks of output channels (the output and
//! dW) or input channels (dX), so results do not depend on the thread count.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::conv::Geom;
use super::gemm::{Mat, gemm_into};
use super::ops::{cpu_values, hold, slice};
use super::scratch::Buf;
use super::transpose::{Strided, transpose_images, transpose_into, transposed};

/// Channels per block of the parallel split (a constant, so the values do not depend on the
/// thread count).
const BLOCK: usize = 64;

/// One product of a tap: `len` rows from output row `out` and input row `inp` (rows of the
/// `(P, N, C)` layouts, so `len` is a multiple of N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    out: usize,
    inp: usize,
    len: usize,
}

/// The runs of tap `(di, dj)`: output position (oh, ow) reads input
/// (oh·stride + di − pad, ow·stride + dj − pad) when it lies inside the map, at row block
/// `index[ih·W + iw]` of the input's rows ([`Order`]); consecutive positions whose rows are
/// contiguous on both sides merge into one run.
fn runs(g: &Geom, index: &[usize], di: usize, dj: usize) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    let inside = |o: usize, d: usize, side: usize| {
        let i = (o * g.stride + d) as isize - g.pad as isize;
        (i >= 0 && (i as usize) < side).then_some(i as usize)
    };
    for oh in 0..g.ho {
        let Some(ih) = inside(oh, di, g.h) else {
            continue;
        };
        for ow in 0..g.wo {
            let Some(iw) = inside(ow, dj, g.w) else {
                continue;
            };
            let run = Run {
                out: (oh * g.wo + ow) * g.n,
                inp: index[ih * g.w + iw] * g.n,
                len: g.n,
            };
            match out.last_mut() {
                Some(r) if r.out + r.len == run.out && r.inp + r.len == run.inp => r.len += g.n,
                _ => out.push(run),
            }
        }
    }
    out
}

/// Every tap's runs, taps in the weights' order (row-major over the kernel), on the input's
/// rows in `order`.
fn all_runs(g: &Geom, order: &Order) -> Vec<Vec<Run>> {
    (0..g.kh)
        .flat_map(|i| (0..g.kw).map(move |j| (i, j)))
        .map(|(i, j)| runs(g, &order.index, i, j))
        .collect()
}

/// The order of the input's positions in its rows. At stride 1, raster order: a tap's
/// consecutive output positions read consecutive inputs. At stride s > 1 they read every s-th
/// input, so in raster order every run would be one position (N rows: products too small to
/// run at gemm's speed); the positions are grouped instead by stride phase (ih mod s,
/// iw mod s), each phase in raster order, where a tap's consecutive output positions read
/// consecutive rows of one phase — runs of whole output rows, as at stride 1.
#[derive(Debug)]
struct Order {
    /// The raster position (ih·W + iw) of each row block; `None` for raster order.
    raster: Option<Vec<usize>>,
    /// The row block of each raster position.
    index: Vec<usize>,
}

impl Order {
    fn new(g: &Geom) -> Self {
        let s = g.stride;
        if s == 1 {
            return Self {
                raster: None,
                index: (0..g.h * g.w).collect(),
            };
        }
        let mut raster = Vec::with_capacity(g.h * g.w);
        for a in 0..s {
            for b in 0..s {
                for ih in (a..g.h).step_by(s) {
                    raster.extend((b..g.w).step_by(s).map(|iw| ih * g.w + iw));
                }
            }
        }
        let mut index = vec![0; g.h * g.w];
        for (k, &r) in raster.iter().enumerate() {
            index[r] = k;
        }
        Self {
            raster: Some(raster),
            index,
        }
    }

    /// Rows (P, N, C) in raster order → in this order (blocks of `row` values per position).
    fn gather(&self, x: Buf, row: usize) -> Buf {
        let Some(raster) = self.raster.as_ref().filter(|_| row > 0) else {
            return x;
        };
        let mut y = Buf::scratch(x.len());
        y.par_chunks_exact_mut(row)
            .zip(raster.par_iter())
            .for_each(|(dst, &r)| dst.copy_from_slice(&x[r * row..][..row]));
        y
    }

    /// The inverse of [`Self::gather`]: rows in this order → in raster order.
    fn scatter(&self, x: Buf, row: usize) -> Buf {
        if self.raster.is_none() || row == 0 {
            return x;
        }
        let mut y = Buf::scratch(x.len());
        y.par_chunks_exact_mut(row)
            .zip(self.index.par_iter())
            .for_each(|(dst, &k)| dst.copy_from_slice(&x[k * row..][..row]));
        y
    }
}

/// Positions per task of [`to_rows`] (one register tile of the transpose).
const POSITIONS: usize = 8;

/// (N, C, P) → (P, N, C), groups of positions in parallel.
fn to_rows(x: &[f32], n: usize, c: usize, p: usize) -> Buf {
    let mut y = Buf::scratch(n * c * p);
    if n * c * p > 0 {
        y.par_chunks_mut(POSITIONS * n * c)
            .enumerate()
            .for_each(|(k, dst)| {
                let (p0, np) = (k * POSITIONS, dst.len() / (n * c));
                for i in 0..n {
                    let src = Strided {
                        data: &x[i * c * p + p0..],
                        rows: c,
                        cols: np,
                        stride: p,
                    };
                    transpose_into(src, &mut dst[i * c..], n * c);
                }
            });
    }
    y
}

/// Blocks of `(P, N, width)` rows, block `b` holding channels `b·BLOCK…`, → (N, C, P).
fn from_row_blocks(blocks: &[Buf], n: usize, c: usize, p: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * c * p];
    if n * c * p > 0 {
        y.par_chunks_exact_mut(c * p)
            .enumerate()
            .for_each(|(i, yi)| {
                for (b, blk) in blocks.iter().enumerate() {
                    let width = BLOCK.min(c - b * BLOCK);
                    let src = Strided {
                        data: &blk[i * width..],
                        rows: p,
                        cols: width,
                        stride: n * width,
                    };
                    transpose_into(src, &mut yi[b * BLOCK * p..], p);
                }
            });
    }
    y
}

/// The starts of the channel blocks of `c` channels.
fn blocks(c: usize) -> impl IndexedParallelIterator<Item = usize> {
    (0..c.div_ceil(BLOCK)).into_par_iter().map(|b| b * BLOCK)
}

/// y (N, O, HO, WO) = conv(x, w). The weights are first transposed to (C·KH·KW, O), so that
/// each tap's W_tapᵀ block is a row-major operand whose rows are contiguous runs of output
/// channels: the gemm's packing of it is a copy of contiguous runs instead of a gather of one
/// value per cache line (the weights' own layout puts a tap's values KH·KW apart along C and
/// C·KH·KW apart along O).
fn forward(g: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (n, c, o, kk) = (g.n, g.c, g.o, g.kh * g.kw);
    let order = Order::new(g);
    let xt = order.gather(to_rows(x, n, c, g.h * g.w), n * c);
    let wt = transposed(w, o, c * kk);
    let taps = all_runs(g, &order);
    let out: Vec<Buf> = blocks(o)
        .map(|o0| {
            let width = BLOCK.min(o - o0);
            let mut y = Buf::zeroed(g.p() * n * width);
            for (t, runs) in taps.iter().enumerate() {
                for r in runs {
                    let a = Mat {
                        data: &xt[r.inp * c..][..r.len * c],
                        rs: c,
                        cs: 1,
                    };
                    // W_tapᵀ (C × width): (c, k) is wt[(c·KK + t)·O + o0 + k].
                    let b = Mat {
                        data: &wt[t * o + o0..],
                        rs: kk * o,
                        cs: 1,
                    };
                    gemm_into(&mut y[r.out * width..], r.len, width, c, a, b, true);
                }
            }
            y
        })
        .collect();
    from_row_blocks(&out, n, o, g.p())
}

/// (dX (N, C, H, W), dW (O, C, KH, KW)) from dY (N, O, HO, WO); dX only when given the
/// weights `w` it is computed from.
fn backward(g: &Geom, x: &[f32], w: Option<&[f32]>, gy: &[f32]) -> (Option<Vec<f32>>, Vec<f32>) {
    let (n, c, o, kk) = (g.n, g.c, g.o, g.kh * g.kw);
    let order = Order::new(g);
    let taps = all_runs(g, &order);
    let gyt = to_rows(gy, n, o, g.p());
    let gx = w.map(|w| {
        // The weights as (O, KH·KW, C): each tap's W_tap block (O × width) then has rows that
        // are contiguous runs of input channels (see `forward`).
        let mut wr = Buf::scratch(w.len());
        transpose_images(w, &mut wr, c, kk);
        let out: Vec<Buf> = blocks(c)
            .map(|c0| {
                let width = BLOCK.min(c - c0);
                let mut dx = Buf::zeroed(g.h * g.w * n * width);
                for (t, runs) in taps.iter().enumerate() {
                    for r in runs {
                        // dX rows += dY rows · W_tap, W_tap (O × width): (o, k) is
                        // wr[(o·KK + t)·C + c0 + k].
                        let a = Mat {
                            data: &gyt[r.out * o..][..r.len * o],
                            rs: o,
                            cs: 1,
                        };
                        let b = Mat {
                            data: &wr[t * c + c0..],
                            rs: kk * c,
                            cs: 1,
                        };
                        gemm_into(&mut dx[r.inp * width..], r.len, width, o, a, b, true);
                    }
                }
                order.scatter(dx, n * width)
            })
            .collect();
        from_row_blocks(&out, n, c, g.h * g.w)
    });
    let xt = order.gather(to_rows(x, n, c, g.h * g.w), n * c);
    let out: Vec<Buf> = blocks(o)
        .map(|o0| {
            let width = BLOCK.min(o - o0);
            // (KH·KW, width, C): dW_tap rows o0… = dY rowsᵀ · X rows, over the tap's runs.
            let mut dw = Buf::zeroed(kk * width * c);
            for (t, runs) in taps.iter().enumerate() {
                for r in runs {
                    let a = Mat {
                        data: &gyt[r.out * o + o0..],
                        rs: 1,
                        cs: o,
                    };
                    let b = Mat {
                        data: &xt[r.inp * c..][..r.len * c],
                        rs: c,
                        cs: 1,
                    };
                    gemm_into(&mut dw[t * width * c..], width, c, r.len, a, b, true);
                }
            }
            dw
        })
        .collect();
    let mut gw = vec![0f32; o * c * kk];
    gw.par_chunks_exact_mut(c * kk)
        .enumerate()
        .for_each(|(oo, dst)| {
            let (blk, k) = (&out[oo / BLOCK], oo % BLOCK);
            let width = BLOCK.min(o - oo / BLOCK * BLOCK);
            // (KH·KW, C) rows of the block → (C, KH·KW).
            let src = Strided {
                data: &blk[k * c..],
                rows: kk,
                cols: c,
                stride: width * c,
            };
            transpose_into(src, dst, kk);
        });
    (gx, gw)
}

/// The op: padding, stride, and whether the input's gradient is wanted.
struct Taps {
    pad: usize,
    stride: usize,
    input_grad: bool,
}

impl CustomOp2 for Taps {
    fn name(&self) -> &'static str {
        "siam-conv2d-taps"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::strided(l1.dims(), l2.dims(), self.pad, self.stride)?;
        let y = forward(&g, slice(s1, l1)?, slice(s2, l2)?);
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
        let g = Geom::strided(x.dims(), w.dims(), self.pad, self.stride)?;
        if gy.dims() != [g.n, g.o, g.ho, g.wo] {
            candle_core::bail!("tap convolution backward: dY has shape {:?}", gy.dims())
        }
        let (gx, gw) = {
            let held = hold([x, w, &gy]);
            let [xv, wv, gv] = cpu_values(&held, "the tap convolution's backward pass")?;
            backward(&g, xv, self.input_grad.then_some(wv), gv)
        };
        let gx = gx
            .map(|v| Tensor::from_vec(v, x.dims(), x.device()))
            .transpose()?;
        Ok((gx, Some(Tensor::from_vec(gw, w.dims(), w.device())?)))
    }
}

/// Output positions per image up to which [`conv2d_taps`] beats im2col, for kernels wider
/// than one (a 1×1 convolution has no padding to skip, and im2col's one product is faster).
/// Measured on ResNet-18's shapes (`cargo bench -p siam-model --bench conv3x3`, figures in
/// docs/BENCHMARKS.md): 4×4 and 2×2 maps, at stride 1 and 2.
const SMALL_MAP: usize = 16;

/// [`SMALL_MAP`] at a stride above 1, where im2col packs a gathered copy of the input per
/// tap: ResNet-18's stride-2 3×3 layers to 8×8 and 7×7 maps (stage 2 at 64×64, stage 3 at
/// 112×112) run faster as tap products, forward and backward (docs/BENCHMARKS.md, 2026-12-06
/// evening); to 14×14 maps (stage 2 at 112×112) im2col stays faster.
const SMALL_STRIDED_MAP: usize = 64;

/// Whether a convolution of (N, C, H, W) by (O, C, KH, KW) at `padding` and `stride` goes to
/// [`conv2d_taps`] (see [`SMALL_MAP`]); false for shapes that do not fit.
pub(super) fn worth_it(x: &[usize], w: &[usize], padding: usize, stride: usize) -> bool {
    Geom::strided(x, w, padding, stride).is_ok_and(|g| {
        let small = if g.stride > 1 {
            SMALL_STRIDED_MAP
        } else {
            SMALL_MAP
        };
        g.kh * g.kw > 1 && g.p() <= small
    })
}

/// 2-D convolution without bias at any stride, zero `padding`, of (N, C, H, W) by
/// (O, C, KH, KW), one product per kernel tap over only the inputs it reads: for small maps,
/// where im2col's products are mostly by the padding's zeros. candle's conv2d off the CPU or
/// for other dtypes. `input_grad = false` skips the input's gradient.
pub fn conv2d_taps(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    input_grad: bool,
) -> Result<Tensor> {
    if !super::fast_path(&[x, w]) {
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let op = Taps {
        pad: padding,
        stride,
        input_grad,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{grads_of, max_diff, rand};
    use candle_core::Var;

    /// Forward and both gradients against candle's conv2d: ResNet's last-stage shapes (3×3 at
    /// stride 1 and 2, 1×1 at stride 2), odd and oblong maps, a map smaller than the kernel's
    /// reach (taps with no run), blocks of channels past the first and partial.
    #[test]
    fn matches_candle_with_gradients() {
        // (N, C, H, W, O, K, padding, stride)
        for (k, &(n, c, h, w, o, kk, pad, s)) in [
            (3, 8, 2, 2, 8, 3, 1, 1),
            (2, 70, 4, 4, 130, 3, 1, 1),
            (2, 6, 4, 4, 5, 3, 1, 2),
            (3, 5, 5, 3, 7, 3, 1, 2),
            (2, 9, 4, 4, 66, 1, 0, 2),
            (2, 4, 1, 1, 3, 3, 1, 1),
            (1, 3, 5, 6, 4, 3, 0, 1),
            (2, 3, 7, 7, 4, 5, 2, 2),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&rand(&[n, c, h, w], 10 + k as u64)).unwrap();
            let wt = Var::from_tensor(&rand(&[o, c, kk, kk], 20 + k as u64)).unwrap();
            let ours = conv2d_taps(&x, &wt, pad, s, true).unwrap();
            let theirs = x.conv2d(&wt, pad, s, 1, 1).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "case {k}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "case {k}: forward");
            let up = rand(ours.dims(), 30 + k as u64);
            let (g1, g2) = (grads_of(&ours, &up), grads_of(&theirs, &up));
            for (name, v) in [("x", x.as_tensor()), ("w", wt.as_tensor())] {
                let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-4, "case {k}: d{name} differs by {d}");
            }
            // Without the input's gradient: the same weight gradient, none for x.
            let y = conv2d_taps(&x, &wt, pad, s, false).unwrap();
            let g = grads_of(&y, &up);
            assert!(g.get(x.as_tensor()).is_none(), "case {k}");
            let d = max_diff(
                g.get(wt.as_tensor()).unwrap(),
                g1.get(wt.as_tensor()).unwrap(),
            );
            assert_eq!(d, 0.0, "case {k}: dW depends on the input gradient");
        }
    }

    /// Runs merge where rows are contiguous on both sides: a 2×2 map's centre tap is one
    /// product of every row, its corner taps one image-row each; at stride 2, on the input's
    /// phases, whole output rows merge as at stride 1.
    #[test]
    fn runs_merge_contiguous_rows() {
        let g = Geom::strided(&[5, 1, 2, 2], &[1, 1, 3, 3], 1, 1).unwrap();
        let all = all_runs(&g, &Order::new(&g));
        assert_eq!(
            all[4],
            vec![Run {
                out: 0,
                inp: 0,
                len: 20
            }]
        );
        assert_eq!(
            all[0],
            vec![Run {
                out: 15,
                inp: 0,
                len: 5
            }]
        );
        // Tap (1, 0): output column 1 reads input column 0, on both rows.
        assert_eq!(
            all[3],
            vec![
                Run {
                    out: 5,
                    inp: 0,
                    len: 5
                },
                Run {
                    out: 15,
                    inp: 10,
                    len: 5
                }
            ]
        );
        let total: usize = all.iter().flatten().map(|r| r.len).sum();
        assert_eq!(total, 16 * 5, "every output position reads all four inputs");
        // A 1×1 kernel at stride 2 reads phase (0, 0) only: the whole output is one run.
        let s2 = Geom::strided(&[2, 1, 4, 4], &[1, 1, 1, 1], 0, 2).unwrap();
        assert_eq!(
            all_runs(&s2, &Order::new(&s2))[0],
            vec![Run {
                out: 0,
                inp: 0,
                len: 8
            }]
        );
        // 3×3, padding 1, stride 2, 7×7 → 4×4 (ResNet-18's stage 4 at 112×112), one image:
        // the centre tap (1, 1) reads (2·oh, 2·ow), phase (0, 0) of 4×4 positions, every
        // output position in one run; tap (0, 0) reads (2·oh − 1, 2·ow − 1), phase (1, 1) of
        // 3×3, output rows 1–3 and columns 1–3: three runs of three.
        let g7 = Geom::strided(&[1, 1, 7, 7], &[1, 1, 3, 3], 1, 2).unwrap();
        let all = all_runs(&g7, &Order::new(&g7));
        assert_eq!(
            all[4],
            vec![Run {
                out: 0,
                inp: 0,
                len: 16
            }]
        );
        let phase11 = 16 + 12 + 12;
        assert_eq!(
            all[0],
            (0..3)
                .map(|r| Run {
                    out: (r + 1) * 4 + 1,
                    inp: phase11 + r * 3,
                    len: 3
                })
                .collect::<Vec<_>>()
        );
        let total: usize = all.iter().flatten().map(|r| r.len).sum();
        // Along each side the three taps read 3, 4 and 3 of the four outputs' inputs.
        assert_eq!(total, 10 * 10, "every real product once");
    }

    /// The phase order holds every position once; gather and scatter invert each other.
    #[test]
    fn phase_order_is_a_permutation() {
        for (h, w, s) in [(7, 7, 2), (4, 5, 2), (1, 3, 2), (9, 8, 3)] {
            let g = Geom::strided(&[2, 1, h, w], &[1, 1, 1, 1], 0, s).unwrap();
            let order = Order::new(&g);
            let raster = order.raster.clone().expect("stride > 1 reorders");
            let mut sorted = raster.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..h * w).collect::<Vec<_>>(), "{h}x{w}/{s}");
            let row = 3;
            let mut x = Buf::scratch(h * w * row);
            x.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
            let back = order.scatter(order.gather(Buf::scratch(0), 0), 0);
            assert!(back.is_empty());
            let gathered = order.gather(x, row);
            assert_eq!(gathered[row], (raster[1] * row) as f32);
            let back = order.scatter(gathered, row);
            assert!(back.iter().enumerate().all(|(i, &v)| v == i as f32));
        }
        assert!(
            Order::new(&Geom::strided(&[1, 1, 4, 4], &[1, 1, 3, 3], 1, 1).unwrap())
                .raster
                .is_none()
        );
    }

    /// The values do not depend on the thread count.
    #[test]
    fn same_values_on_one_thread_and_many() {
        let x = Var::from_tensor(&rand(&[4, 130, 4, 4], 1)).unwrap();
        let w = Var::from_tensor(&rand(&[70, 130, 3, 3], 2)).unwrap();
        let up = rand(&[4, 70, 4, 4], 3);
        let run = || {
            let y = conv2d_taps(&x, &w, 1, 1, true).unwrap();
            let g = grads_of(&y, &up);
            let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (v(&y), v(g.get(&x).unwrap()), v(g.get(&w).unwrap()))
        };
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(one.install(run), three.install(run));
    }
}
