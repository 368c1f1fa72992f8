//! BatchNorm in evaluation, folded: `[relu](x·s[c] + t[c] [+ r])` on channel-first activations
//! as one pass forward and one backward, where candle's BatchNorm takes four broadcast passes
//! (each with a fresh tensor), ReLU a fifth and a residual add a sixth. The scale `s` and
//! shift `t` come from the running statistics (`s = γ/√(var + ε)`, `t = β − mean·s`), so the
//! gradients of γ and β flow through them.

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::ops::{cpu_values, hold, slice};
use super::pool::planes_per_task;

/// The per-channel affine map with optional ReLU; `params` holds the C scales, then the C
/// shifts.
struct Affine {
    relu: bool,
}

/// (N, C, H·W) of a channel-first tensor of rank ≥ 2.
fn dims(d: &[usize]) -> Result<(usize, usize, usize)> {
    if d.len() < 2 {
        candle_core::bail!("a per-channel affine map needs (N, C, ...), got {d:?}")
    }
    Ok((d[0], d[1], d[2..].iter().product()))
}

/// One plane of the map: `y = [relu](x·sc + sh [+ r])`, with `x` the plane `y` itself when
/// `None` (in place).
pub(super) fn plane(
    y: &mut [f32],
    x: Option<&[f32]>,
    r: Option<&[f32]>,
    (sc, sh): (f32, f32),
    relu: bool,
) {
    let act = |v: f32| if relu { v.max(0.0) } else { v };
    match (x, r) {
        (Some(x), Some(r)) => {
            for ((y, &x), &r) in y.iter_mut().zip(x).zip(r) {
                *y = act(x * sc + sh + r);
            }
        }
        (Some(x), None) => {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = act(x * sc + sh);
            }
        }
        (None, Some(r)) => {
            for (y, &r) in y.iter_mut().zip(r) {
                *y = act(*y * sc + sh + r);
            }
        }
        (None, None) => {
            for y in y.iter_mut() {
                *y = act(*y * sc + sh);
            }
        }
    }
}

/// The map over every plane of `y` in parallel, reading `x` (or `y` itself: in place).
fn apply(
    y: &mut [f32],
    x: Option<&[f32]>,
    params: &[f32],
    r: Option<&[f32]>,
    (c, hw): (usize, usize),
    relu: bool,
) {
    let (s, t) = params.split_at(c);
    y.par_chunks_mut(hw.max(1))
        .enumerate()
        .with_min_len(planes_per_task(hw))
        .for_each(|(k, yp)| {
            let ch = k % c;
            let (xp, rp) = (x.map(|v| &v[k * hw..][..hw]), r.map(|v| &v[k * hw..][..hw]));
            plane(yp, xp, rp, (s[ch], t[ch]), relu);
        });
}

/// The scales and shifts of a `c`-channel map, checked: `c` of each.
fn params<'a>(s: &'a CpuStorage, l: &Layout, c: usize) -> Result<&'a [f32]> {
    let p = slice(s, l)?;
    if p.len() != 2 * c {
        candle_core::bail!(
            "a per-channel affine map of {c} channels got {} parameters",
            p.len()
        )
    }
    Ok(p)
}

/// The forward pass: `y = [relu](x·s + t [+ r])`, plane by plane.
fn forward(
    x: &[f32],
    params: &[f32],
    r: Option<&[f32]>,
    c: usize,
    hw: usize,
    relu: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    apply(&mut y, Some(x), params, r, (c, hw), relu);
    y
}

/// The backward pass from the output `y` and its gradient `g`, with `g'` the gradient where the
/// output is positive (all of it without the ReLU): the input's gradient `g'·s`, the
/// residual's `g'` (with `residual`), and the parameters' (Σ g'·x per channel, then Σ g'),
/// summed per image part and the parts added in order, as every reduction here.
fn backward(
    x: &[f32],
    params: &[f32],
    y: &[f32],
    g: &[f32],
    (n, c, hw): (usize, usize, usize),
    relu: bool,
    residual: bool,
) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
    let gate = |y: f32, g: f32| if !relu || y > 0.0 { g } else { 0.0 };
    let s = &params[..c];
    let mut gx = vec![0f32; x.len()];
    gx.par_chunks_mut(hw.max(1))
        .enumerate()
        .with_min_len(planes_per_task(hw))
        .for_each(|(k, gxp)| {
            let sc = s[k % c];
            let (yp, gp) = (&y[k * hw..][..hw], &g[k * hw..][..hw]);
            for ((dx, &yy), &gg) in gxp.iter_mut().zip(yp).zip(gp) {
                *dx = gate(yy, gg) * sc;
            }
        });
    // The residual's gradient is the gated output gradient itself.
    let gr = residual.then(|| {
        let mut gr = vec![0f32; x.len()];
        gr.par_chunks_mut(1 << 14)
            .zip(y.par_chunks(1 << 14).zip(g.par_chunks(1 << 14)))
            .for_each(|(dr, (yp, gp))| {
                for ((dr, &yy), &gg) in dr.iter_mut().zip(yp).zip(gp) {
                    *dr = gate(yy, gg);
                }
            });
        gr
    });
    let parts: Vec<Vec<f64>> = super::parts(n)
        .map(|images| {
            let mut acc = vec![0f64; 2 * c];
            for i in images {
                for ch in 0..c {
                    let o = (i * c + ch) * hw;
                    let (xp, yp, gp) = (&x[o..][..hw], &y[o..][..hw], &g[o..][..hw]);
                    let (mut ds, mut dt) = (0f32, 0f32);
                    for ((&xx, &yy), &gg) in xp.iter().zip(yp).zip(gp) {
                        let gg = gate(yy, gg);
                        ds += gg * xx;
                        dt += gg;
                    }
                    acc[ch] += f64::from(ds);
                    acc[c + ch] += f64::from(dt);
                }
            }
            acc
        })
        .collect();
    let gp = super::add_in_order(parts, 2 * c)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    (gx, gr, gp)
}

/// Both ops' forward pass: checks the shapes, then [`forward`].
fn forward_op(
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    residual: Option<(&CpuStorage, &Layout)>,
    relu: bool,
) -> Result<(CpuStorage, Shape)> {
    let (_, c, hw) = dims(l1.dims())?;
    let (x, p) = (slice(s1, l1)?, params(s2, l2, c)?);
    let r = match residual {
        Some((_, l3)) if l3.dims() != l1.dims() => {
            candle_core::bail!("a residual of shape {:?} for {:?}", l3.dims(), l1.dims())
        }
        Some((s3, l3)) => Some(slice(s3, l3)?),
        None => None,
    };
    let y = forward(x, p, r, c, hw, relu);
    Ok((CpuStorage::F32(y), l1.shape().clone()))
}

/// Both ops' backward pass: the gradients of x, of the parameters, and (with `residual`) of
/// the residual.
fn backward_op(
    x: &Tensor,
    p: &Tensor,
    res: &Tensor,
    gy: &Tensor,
    relu: bool,
    residual: bool,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let gy = gy.contiguous()?;
    let d = dims(x.dims())?;
    let (gx, gr, gp) = {
        let held = hold([x, p, res, &gy]);
        let [xv, pv, yv, gv] = cpu_values(&held, "the scale-shift backward")?;
        backward(xv, pv, yv, gv, d, relu, residual)
    };
    let gr = gr
        .map(|g| Tensor::from_vec(g, x.dims(), x.device()))
        .transpose()?;
    Ok((
        Tensor::from_vec(gx, x.dims(), x.device())?,
        Tensor::from_vec(gp, p.dims(), p.device())?,
        gr,
    ))
}

impl CustomOp2 for Affine {
    fn name(&self) -> &'static str {
        "siam-scale-shift"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward_op((s1, l1), (s2, l2), None, self.relu)
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gp, _) = backward_op(x, p, res, gy, self.relu, false)?;
        Ok((Some(gx), Some(gp)))
    }
}

/// The same with a residual added before the ReLU.
struct AffineAdd {
    relu: bool,
}

impl CustomOp3 for AffineAdd {
    fn name(&self) -> &'static str {
        "siam-scale-shift-add"
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
        forward_op((s1, l1), (s2, l2), Some((s3, l3)), self.relu)
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _r: &Tensor,
        res: &Tensor,
        gy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gp, gr) = backward_op(x, p, res, gy, self.relu, true)?;
        Ok((Some(gx), Some(gp), gr))
    }
}

/// The `c` scales then the `c` shifts as the ops' one parameter tensor.
fn packed(scale: &Tensor, shift: &Tensor, c: usize) -> Result<Tensor> {
    if scale.elem_count() != c || shift.elem_count() != c {
        candle_core::bail!(
            "a per-channel affine map of {c} channels got {} scales and {} shifts",
            scale.elem_count(),
            shift.elem_count()
        )
    }
    Tensor::cat(&[scale.flatten_all()?, shift.flatten_all()?], 0)
}

/// `[relu](x·scale[c] + shift[c] [+ residual])` for channel-first `x` (N, C, ...) and per-channel
/// `scale` and `shift` (C): a BatchNorm in evaluation folded into one pass (with the ReLU and a
/// residual block's add), differentiable in all its inputs. f32 on the CPU; candle's broadcast
/// ops elsewhere.
pub fn scale_shift(
    x: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (_, c, _) = dims(x.dims())?;
    let mut ts = vec![x, scale, shift];
    ts.extend(residual);
    if !super::fast_path(&ts) {
        let mut shape = vec![1; x.rank()];
        shape[1] = c;
        let y = x
            .broadcast_mul(&scale.reshape(shape.as_slice())?)?
            .broadcast_add(&shift.reshape(shape.as_slice())?)?;
        let y = match residual {
            Some(r) => (y + r)?,
            None => y,
        };
        return if relu { y.relu() } else { Ok(y) };
    }
    let params = packed(scale, shift, c)?;
    let x = x.contiguous()?;
    match residual {
        Some(r) => x.apply_op3(&params, &r.contiguous()?, AffineAdd { relu }),
        None => x.apply_op2(&params, Affine { relu }),
    }
}

/// The map applied to `x`'s own storage (evaluation without gradients).
struct AffineInPlace {
    relu: bool,
}

impl AffineInPlace {
    fn run(
        &self,
        (s1, l1): (&mut CpuStorage, &Layout),
        (s2, l2): (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<()> {
        let (_, c, hw) = dims(l1.dims())?;
        let p = params(s2, l2, c)?;
        let r = residual.map(|(s3, l3)| slice(s3, l3)).transpose()?;
        let (CpuStorage::F32(y), Some((a, b))) = (s1, l1.contiguous_offsets()) else {
            candle_core::bail!("an in-place affine map takes a contiguous f32 tensor")
        };
        apply(&mut y[a..b], None, p, r, (c, hw), self.relu);
        Ok(())
    }
}

impl InplaceOp2 for AffineInPlace {
    fn name(&self) -> &'static str {
        "siam-scale-shift-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl InplaceOp3 for AffineInPlace {
    fn name(&self) -> &'static str {
        "siam-scale-shift-add-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// [`scale_shift`] written over `x`'s own values when no gradient can flow through it (no
/// input tracked by autograd: evaluation, a frozen layer), with no fresh output to allocate,
/// fill and fault in; [`scale_shift`] otherwise. `x` must own its storage — a fresh
/// convolution output, say —: a tensor sharing it would see the change.
pub(crate) fn scale_shift_owned(
    x: Tensor,
    scale: &Tensor,
    shift: &Tensor,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let mut ts = vec![&x, scale, shift];
    ts.extend(residual);
    let in_place = super::fast_path(&ts)
        && x.is_contiguous()
        && residual.is_none_or(|r| r.is_contiguous() && r.dims() == x.dims())
        && !ts.iter().any(|t| t.track_op());
    if !in_place {
        return scale_shift(&x, scale, shift, relu, residual);
    }
    let params = packed(scale, shift, dims(x.dims())?.1)?;
    let op = AffineInPlace { relu };
    match residual {
        Some(r) => x.inplace_op3(&params, r, &op)?,
        None => x.inplace_op2(&params, &op)?,
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{distinct, grads_of, max_diff, rand};
    use candle_core::Var;

    /// candle's ops for the same map.
    fn reference(x: &Tensor, s: &Tensor, t: &Tensor, relu: bool, r: Option<&Tensor>) -> Tensor {
        let c = x.dim(1).unwrap();
        let y = x
            .broadcast_mul(&s.reshape((1, c, 1, 1)).unwrap())
            .unwrap()
            .broadcast_add(&t.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        let y = match r {
            Some(r) => (y + r).unwrap(),
            None => y,
        };
        if relu { y.relu().unwrap() } else { y }
    }

    /// Forward and every gradient against candle's broadcast ops, with and without the ReLU
    /// and the residual (two images parts: 9 images).
    #[test]
    fn scale_shift_matches_candle_with_gradients() {
        let shape = [9, 5, 3, 4];
        for (relu, with_r) in [(false, false), (true, false), (false, true), (true, true)] {
            let x = Var::from_tensor(&rand(&shape, 1)).unwrap();
            let s = Var::from_tensor(&(rand(&[5], 2) * 3.0).unwrap()).unwrap();
            let t = Var::from_tensor(&rand(&[5], 3)).unwrap();
            let r = Var::from_tensor(&rand(&shape, 4)).unwrap();
            let up = rand(&shape, 5);
            let rr = with_r.then_some(r.as_tensor());
            let ours = scale_shift(&x, &s, &t, relu, rr).unwrap();
            let theirs = reference(&x, &s, &t, relu, rr);
            assert!(max_diff(&ours, &theirs) < 1e-6, "{relu} {with_r}");
            let (g1, g2) = (grads_of(&ours, &up), grads_of(&theirs, &up));
            let mut vars = vec![&x, &s, &t];
            if with_r {
                vars.push(&r);
            }
            for v in vars {
                let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-5, "{relu} {with_r}: gradient differs by {d}");
            }
        }
        let x = rand(&shape, 1);
        assert!(scale_shift(&x, &rand(&[4], 2), &rand(&[4], 3), true, None).is_err());
        assert!(
            scale_shift(
                &x,
                &rand(&[5], 2),
                &rand(&[5], 3),
                true,
                Some(&rand(&[9, 5, 3, 3], 4))
            )
            .is_err()
        );
    }

    /// Written over an untracked input, the map gives the same values as the fresh-output op;
    /// with any input tracked by autograd it leaves the input alone and gradients flow.
    #[test]
    fn scale_shift_owned_writes_in_place_only_without_gradients() {
        let shape = [9, 5, 3, 4];
        let (s, t) = ((rand(&[5], 2) * 3.0).unwrap(), rand(&[5], 3));
        let r = rand(&shape, 4);
        for (relu, with_r) in [(false, false), (true, false), (false, true), (true, true)] {
            let rr = with_r.then_some(&r);
            let x = rand(&shape, 1);
            let expected = scale_shift(&x, &s, &t, relu, rr).unwrap();
            let y = scale_shift_owned(x.clone(), &s, &t, relu, rr).unwrap();
            assert_eq!(max_diff(&y, &expected), 0.0, "{relu} {with_r}");
            assert_eq!(
                max_diff(&x, &expected),
                0.0,
                "{relu} {with_r}: the input's own storage holds the result"
            );
            let xv = Var::from_tensor(&rand(&shape, 1)).unwrap();
            let before = xv.as_tensor().copy().unwrap();
            let y = scale_shift_owned(xv.as_tensor().clone(), &s, &t, relu, rr).unwrap();
            assert_eq!(max_diff(&y, &expected), 0.0);
            assert_eq!(
                max_diff(xv.as_tensor(), &before),
                0.0,
                "a variable is not written"
            );
            assert!(grads_of(&y, &rand(&shape, 5)).get(&xv).is_some());
        }
        let x = rand(&shape, 1);
        assert!(scale_shift_owned(x.clone(), &rand(&[4], 2), &rand(&[4], 3), true, None).is_err());
        assert!(scale_shift_owned(x, &s, &t, true, Some(&rand(&[9, 5, 3, 3], 4))).is_err());
    }

    /// Central differences of `Σ u · relu(x·s + t + r)` in x, s and t, away from ReLU's kink.
    #[test]
    fn scale_shift_gradients_match_finite_differences() {
        let shape = [3, 2, 2, 3];
        let x = distinct(&shape, 7);
        let s = Tensor::new(&[1.5f32, -0.75], x.device()).unwrap();
        let t = Tensor::new(&[0.1f32, -0.05], x.device()).unwrap();
        // The residual moved so that every pre-activation is at least 0.05 from ReLU's kink.
        let r0 = (distinct(&shape, 8) * 0.5).unwrap();
        let p0: Vec<f32> = reference(&x, &s, &t, false, Some(&r0))
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let r0: Vec<f32> = r0.flatten_all().unwrap().to_vec1().unwrap();
        let r: Vec<f32> = r0
            .iter()
            .zip(&p0)
            .map(|(&r, &p)| r + if p >= 0.0 { 0.05 } else { -0.05 })
            .collect();
        let r = Tensor::from_vec(r, &shape, x.device()).unwrap();
        let up = rand(&shape, 9);
        let f = |x: &Tensor, s: &Tensor, t: &Tensor| -> f64 {
            let y = scale_shift(x, s, t, true, Some(&r)).unwrap();
            f64::from(
                (y * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let (xv, sv, tv) = (
            Var::from_tensor(&x).unwrap(),
            Var::from_tensor(&s).unwrap(),
            Var::from_tensor(&t).unwrap(),
        );
        let pre = reference(&x, &s, &t, false, Some(&r));
        let pre: Vec<f32> = pre.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            pre.iter().all(|v| v.abs() > 0.04),
            "inputs too near the kink"
        );
        let grads = grads_of(&scale_shift(&xv, &sv, &tv, true, Some(&r)).unwrap(), &up);
        let h = 1e-3f32;
        let bump = |t: &Tensor, i: usize, d: f32| -> Tensor {
            let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v[i] += d;
            Tensor::from_vec(v, t.dims(), t.device()).unwrap()
        };
        for (which, var) in [(0, &xv), (1, &sv), (2, &tv)] {
            let g: Vec<f32> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (i, &gi) in g.iter().enumerate() {
                let at = |d: f32| match which {
                    0 => f(&bump(&x, i, d), &s, &t),
                    1 => f(&x, &bump(&s, i, d), &t),
                    _ => f(&x, &s, &bump(&t, i, d)),
                };
                let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
                assert!(
                    (fd - f64::from(gi)).abs() < 2e-2,
                    "input {which}, value {i}: analytic {gi} numeric {fd}"
                );
            }
        }
    }
}
