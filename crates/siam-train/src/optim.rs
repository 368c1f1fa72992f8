//! Optimizers (AdamW, SGD with momentum; PyTorch's update rules) whose state can be saved and
//! restored exactly, and learning-rate schedules with warmup.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use crate::config::{OptimizerConfig, ScheduleConfig, ScheduleKind};

/// An optimizer over named variables.
pub struct Optimizer {
    cfg: OptimizerConfig,
    vars: Vec<(String, Var)>,
    /// First moment (AdamW) or momentum buffer (SGD), by variable name.
    m: BTreeMap<String, Tensor>,
    /// Second moment (AdamW).
    v: BTreeMap<String, Tensor>,
    /// AdamW's moments (m, v) as plain vectors, for variables the fused CPU pass updates in
    /// place; a variable's moments live here or in `m`/`v`, never in both.
    fused: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
    /// Steps taken.
    t: u64,
    /// Per variable (in `vars` order): learning-rate factor, and the step after which it
    /// starts updating (0: from the first). A variable held until step `s` counts its own
    /// AdamW steps from `s + 1`, as PyTorch does for a parameter that had no gradient before.
    groups: Vec<(f64, u64)>,
}

impl Optimizer {
    /// An optimizer over `vars` (name, variable), in a fixed order.
    pub fn new(cfg: OptimizerConfig, mut vars: Vec<(String, Var)>) -> Self {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let groups = vec![(1.0, 0); vars.len()];
        Self {
            cfg,
            vars,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            fused: BTreeMap::new(),
            t: 0,
            groups,
        }
    }

    /// The variables whose name `pick` accepts learn at `lr_scale` times the learning rate and
    /// are held (not updated) for the first `hold_steps` steps. Returns how many were picked.
    pub fn set_group(
        &mut self,
        pick: impl Fn(&str) -> bool,
        lr_scale: f64,
        hold_steps: u64,
    ) -> usize {
        let mut n = 0;
        for ((name, _), g) in self.vars.iter().zip(&mut self.groups) {
            if pick(name) {
                *g = (lr_scale, hold_steps);
                n += 1;
            }
        }
        n
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Applies one update with learning rate `lr`; variables without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.t += 1;
        for ((name, var), &(scale, hold)) in self.vars.iter().zip(&self.groups) {
            if self.t <= hold {
                continue;
            }
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (lr, t) = (lr * scale, (self.t - hold) as i32);
            match self.cfg {
                OptimizerConfig::Adamw {
                    weight_decay,
                    beta1,
                    beta2,
                    eps,
                    ..
                } => {
                    let h = AdamwStep {
                        lr,
                        weight_decay,
                        beta1,
                        beta2,
                        eps,
                        t,
                    };
                    if fusable(var.as_tensor()) && fusable(g) {
                        let n = var.elem_count();
                        let moments = match self.fused.entry(name.clone()) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => {
                                // First step, or moments restored from a checkpoint.
                                let take = |s: Option<Tensor>| match s {
                                    Some(t) if t.elem_count() == n => {
                                        t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
                                    }
                                    Some(t) => candle_core::bail!(
                                        "optimizer state of {} values for {name} ({n} values)",
                                        t.elem_count()
                                    ),
                                    None => Ok(vec![0f32; n]),
                                };
                                let (m, v) =
                                    (take(self.m.remove(name))?, take(self.v.remove(name))?);
                                e.insert((m, v))
                            }
                        };
                        h.fused(var.as_tensor(), g, moments)?;
                        continue;
                    }
                    if let Some((m, v)) = self.fused.remove(name) {
                        let shape = var.shape();
                        let dev = var.device();
                        self.m
                            .insert(name.clone(), Tensor::from_vec(m, shape, dev)?);
                        self.v
                            .insert(name.clone(), Tensor::from_vec(v, shape, dev)?);
                    }
                    let m = match self.m.get(name) {
                        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                        None => (g * (1.0 - beta1))?,
                    };
                    let v = match self.v.get(name) {
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let mhat = (&m / (1.0 - beta1.powi(t)))?;
                    let vhat = (&v / (1.0 - beta2.powi(t)))?;
                    let theta = var.as_tensor();
                    let decayed = if weight_decay > 0.0 {
                        (theta * (1.0 - lr * weight_decay))?
                    } else {
                        theta.clone()
                    };
                    let update = (mhat / (vhat.sqrt()? + eps)?)?;
                    var.set(&(decayed - (update * lr)?)?)?;
                    self.m.insert(name.clone(), m.detach());
                    self.v.insert(name.clone(), v.detach());
                }
                OptimizerConfig::Sgd {
                    momentum,
                    weight_decay,
                    ..
                } => {
                    let theta = var.as_tensor();
                    let g = if weight_decay > 0.0 {
                        (g + (theta * weight_decay)?)?
                    } else {
                        g.clone()
                    };
                    let buf = match (momentum > 0.0, self.m.get(name)) {
                        (false, _) => g,
                        (true, Some(b)) => ((b * momentum)? + g)?,
                        (true, None) => g,
                    };
                    var.set(&(theta - (&buf * lr)?)?)?;
                    if momentum > 0.0 {
                        self.m.insert(name.clone(), buf.detach());
                    }
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`m.<var>`, `v.<var>`) and the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut s = BTreeMap::new();
        for (k, t) in &self.m {
            s.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            s.insert(format!("v.{k}"), t.clone());
        }
        for (name, var) in &self.vars {
            if let Some((m, v)) = self.fused.get(name) {
                for (p, x) in [("m", m), ("v", v)] {
                    if let Ok(t) = Tensor::from_slice(x, var.shape(), var.device()) {
                        s.insert(format!("{p}.{name}"), t);
                    }
                }
            }
        }
        (s, self.t)
    }

    /// Restores a state saved by [`Optimizer::state`].
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>, steps: u64) -> Result<()> {
        self.m.clear();
        self.v.clear();
        self.fused.clear();
        for (k, t) in state {
            let t = t.to_device(self.vars.first().map_or(t.device(), |v| v.1.device()))?;
            if let Some(name) = k.strip_prefix("m.") {
                self.m.insert(name.to_string(), t);
            } else if let Some(name) = k.strip_prefix("v.") {
                self.v.insert(name.to_string(), t);
            } else {
                candle_core::bail!("unknown optimizer state tensor {k}")
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// One AdamW update's hyper-parameters.
struct AdamwStep {
    lr: f64,
    weight_decay: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// The step number, from 1.
    t: i32,
}

/// Whether the fused pass can use `t` in place: f32, contiguous, on the CPU.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Values per parallel chunk of the fused update: element-wise, so the result does not depend
/// on how the chunks are spread over threads.
const CHUNK: usize = 1 << 14;

impl AdamwStep {
    /// The update in one pass over θ, g, m and v on the CPU, spread over rayon in fixed chunks:
    /// θ is written in place (no new buffer, no copy into the variable), and so are the
    /// moments, held as plain vectors.
    fn fused(&self, theta: &Tensor, g: &Tensor, moments: &mut (Vec<f32>, Vec<f32>)) -> Result<()> {
        let n = theta.elem_count();
        if g.elem_count() != n || moments.0.len() != n || moments.1.len() != n {
            candle_core::bail!(
                "gradient of {} values and moments of {} for {n} parameters",
                g.elem_count(),
                moments.0.len()
            )
        }
        theta.inplace_op2(
            g,
            &InPlace {
                step: self,
                moments: std::cell::RefCell::new(moments),
            },
        )
    }
}

/// The fused AdamW update as candle's in-place operation on θ, with g as its source.
struct InPlace<'a> {
    step: &'a AdamwStep,
    moments: std::cell::RefCell<&'a mut (Vec<f32>, Vec<f32>)>,
}

impl candle_core::InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<()> {
        use rayon::prelude::*;
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused AdamW needs contiguous parameters and gradients")
        };
        let candle_core::CpuStorage::F32(th) = s1 else {
            candle_core::bail!("fused AdamW needs f32 parameters")
        };
        let gv = &s2.as_slice::<f32>()?[a2..b2];
        let th = &mut th[a1..b1];
        let mut moments = self.moments.borrow_mut();
        let (mv, vv) = &mut **moments;
        let h = self.step;
        let (be1, be2) = (h.beta1 as f32, h.beta2 as f32);
        let (c1, c2) = ((1.0 - h.beta1) as f32, (1.0 - h.beta2) as f32);
        let h1 = (1.0 / (1.0 - h.beta1.powi(h.t))) as f32;
        let h2 = (1.0 / (1.0 - h.beta2.powi(h.t))) as f32;
        let decay = (1.0 - h.lr * h.weight_decay) as f32;
        let (lr, eps) = (h.lr as f32, h.eps as f32);
        th.par_chunks_mut(CHUNK)
            .zip(mv.par_chunks_mut(CHUNK))
            .zip(vv.par_chunks_mut(CHUNK))
            .zip(gv.par_chunks(CHUNK))
            .for_each(|(((to, mo), vo), gv)| {
                for i in 0..to.len() {
                    let mi = mo[i] * be1 + gv[i] * c1;
                    let vi = vo[i] * be2 + gv[i] * gv[i] * c2;
                    let update = (mi * h1) / ((vi * h2).sqrt() + eps);
                    mo[i] = mi;
                    vo[i] = vi;
                    to[i] = to[i] * decay - update * lr;
                }
            });
        Ok(())
    }
}

/// The learning rate at `step` (0-based) of a run of `total` steps, `steps_per_epoch` each.
pub fn learning_rate(
    s: &ScheduleConfig,
    peak: f64,
    step: u64,
    total: u64,
    steps_per_epoch: u64,
) -> f64 {
    let warm = s.warmup_steps as u64;
    if step < warm {
        return peak * (step + 1) as f64 / warm as f64;
    }
    match s.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::Step => {
            let epoch = step / steps_per_epoch.max(1);
            peak * s.gamma.powi((epoch / s.step_epochs.max(1) as u64) as i32)
        }
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(warm).max(1) as f64;
            let p = ((step - warm) as f64 / span).min(1.0);
            s.min_lr + (peak - s.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn sched(kind: ScheduleKind, warmup_steps: usize) -> ScheduleConfig {
        ScheduleConfig {
            kind,
            warmup_steps,
            step_epochs: 2,
            gamma: 0.5,
            min_lr: 0.0,
        }
    }

    #[test]
    fn schedules() {
        let c = sched(ScheduleKind::Constant, 4);
        assert_eq!(learning_rate(&c, 1.0, 0, 100, 10), 0.25);
        assert_eq!(learning_rate(&c, 1.0, 3, 100, 10), 1.0);
        assert_eq!(learning_rate(&c, 1.0, 50, 100, 10), 1.0);
        let s = sched(ScheduleKind::Step, 0);
        assert_eq!(learning_rate(&s, 1.0, 19, 100, 10), 1.0);
        assert_eq!(learning_rate(&s, 1.0, 20, 100, 10), 0.5);
        assert_eq!(learning_rate(&s, 1.0, 45, 100, 10), 0.25);
        let k = sched(ScheduleKind::Cosine, 0);
        assert_eq!(learning_rate(&k, 1.0, 0, 100, 10), 1.0);
        assert!((learning_rate(&k, 1.0, 50, 100, 10) - 0.5).abs() < 1e-12);
        assert!(learning_rate(&k, 1.0, 99, 100, 10) < 0.001);
    }

    /// Reference: torch.optim.AdamW(lr=0.1, weight_decay=0.01) and SGD(lr=0.1, momentum=0.9,
    /// weight_decay=0.01) on f(x) = Σ x², x0 = [1, -2], three steps (PyTorch 2.15):
    ///   x = torch.tensor([1., -2.], requires_grad=True); opt = ...
    ///   for _ in range(3): opt.zero_grad(); (x**2).sum().backward(); opt.step()
    #[test]
    fn updates_match_pytorch() {
        for (cfg, expect) in [
            (
                OptimizerConfig::Adamw {
                    lr: 0.1,
                    weight_decay: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                },
                [0.6989111831582322, -1.6949445143849768],
            ),
            (
                OptimizerConfig::Sgd {
                    lr: 0.1,
                    momentum: 0.9,
                    weight_decay: 0.01,
                },
                [0.058194199, -0.116388398],
            ),
        ] {
            // f64 takes the tensor-operation path; f32 on the CPU the fused AdamW pass.
            for dtype in [candle_core::DType::F64, candle_core::DType::F32] {
                let x0 = Tensor::new(&[1f64, -2.0], &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let x = Var::from_tensor(&x0).unwrap();
                let mut opt = Optimizer::new(cfg.clone(), vec![("x".into(), x.clone())]);
                for _ in 0..3 {
                    let g = x
                        .as_tensor()
                        .sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    opt.step(&g, 0.1).unwrap();
                }
                let v: Vec<f64> = x
                    .as_tensor()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let tol = if dtype == candle_core::DType::F64 {
                    1e-9
                } else {
                    1e-6
                };
                // candle's gradients of variables carry their backward graph; state that kept it
                // would hold every step's activations (a 5.6 GB leak in 300 steps, seen here).
                assert!(
                    opt.state().0.values().all(|t| !t.track_op()),
                    "optimizer state keeps a graph"
                );
                assert!(
                    (v[0] - expect[0]).abs() < tol && (v[1] - expect[1]).abs() < tol,
                    "{dtype:?}: {v:?} vs {expect:?}"
                );
            }
        }
    }

    /// A group at a tenth of the learning rate, held for the first step, against PyTorch's
    /// parameter groups, where a parameter without a gradient on step 1 starts its own step
    /// count on step 2 (PyTorch 2.15, float64):
    ///   x = torch.tensor([1.,-2.], dtype=torch.float64, requires_grad=True)
    ///   y = torch.tensor([3.,-1.], dtype=torch.float64, requires_grad=True)
    ///   opt = torch.optim.AdamW([{'params':[x]}, {'params':[y], 'lr':0.01}], lr=0.1, weight_decay=0.01)
    ///   for i in range(3):
    ///       opt.zero_grad(set_to_none=True)
    ///       loss = (x**2).sum() + ((y**2).sum() if i>0 else 0); loss.backward(); opt.step()
    ///   → x [0.6989111831582322, -1.6949445143849768], y [2.979401941278302, -0.9798037848755639]
    /// Here y has a gradient on step 1 too: the hold alone keeps it unchanged.
    #[test]
    fn a_held_group_at_a_lower_rate_matches_pytorch_groups() {
        let cfg = OptimizerConfig::Adamw {
            lr: 0.1,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        for dtype in [candle_core::DType::F64, candle_core::DType::F32] {
            let mk = |v: [f64; 2]| {
                Var::from_tensor(
                    &Tensor::new(&v, &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap(),
                )
                .unwrap()
            };
            let (x, y) = (mk([1.0, -2.0]), mk([3.0, -1.0]));
            let mut opt = Optimizer::new(
                cfg.clone(),
                vec![("x".into(), x.clone()), ("y".into(), y.clone())],
            );
            assert_eq!(opt.set_group(|n| n == "y", 0.1, 1), 1);
            for step in 0..3 {
                let loss = (x.as_tensor().sqr().unwrap().sum_all().unwrap()
                    + y.as_tensor().sqr().unwrap().sum_all().unwrap())
                .unwrap();
                opt.step(&loss.backward().unwrap(), 0.1).unwrap();
                let yv: Vec<f64> = y
                    .as_tensor()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                if step == 0 {
                    assert_eq!(yv, [3.0, -1.0], "held on step 1");
                }
            }
            let tol = if dtype == candle_core::DType::F64 {
                1e-9
            } else {
                1e-6
            };
            for (v, want) in [
                (&x, [0.6989111831582322, -1.6949445143849768]),
                (&y, [2.979401941278302, -0.9798037848755639]),
            ] {
                let got: Vec<f64> = v
                    .as_tensor()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    (got[0] - want[0]).abs() < tol && (got[1] - want[1]).abs() < tol,
                    "{dtype:?}: {got:?} vs {want:?}"
                );
            }
        }
    }

    /// The fused f32 AdamW pass against the tensor-operation path (f64) on 1,000 parameters
    /// over five steps with weight decay and changing gradients.
    #[test]
    fn fused_adamw_matches_the_tensor_path() {
        let cfg = OptimizerConfig::Adamw {
            lr: 0.01,
            weight_decay: 0.05,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
        };
        let x0: Vec<f64> = (0..1000)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0)
            .collect();
        let mk = |dtype| {
            let t = Tensor::new(x0.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let x = Var::from_tensor(&t).unwrap();
            (
                x.clone(),
                Optimizer::new(cfg.clone(), vec![("x".into(), x)]),
            )
        };
        let (x32, mut o32) = mk(candle_core::DType::F32);
        let (x64, mut o64) = mk(candle_core::DType::F64);
        for step in 1..=5 {
            // loss = Σ (x − step/5)³ / 3: gradient (x − step/5)².
            for (x, o) in [(&x32, &mut o32), (&x64, &mut o64)] {
                let g = (x.as_tensor() - step as f64 / 5.0)
                    .unwrap()
                    .powf(3.0)
                    .unwrap()
                    .affine(1.0 / 3.0, 0.0)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                o.step(&g, 0.01).unwrap();
            }
        }
        let a: Vec<f32> = x32.as_tensor().to_vec1().unwrap();
        let b: Vec<f64> = x64.as_tensor().to_vec1().unwrap();
        let moved = a
            .iter()
            .zip(&x0)
            .filter(|(a, x)| (f64::from(**a) - **x).abs() > 1e-3)
            .count();
        assert!(moved > 900, "only {moved} parameters moved");
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() < 1e-5,
                "parameter {i}: {a} vs {b}"
            );
        }
    }

    /// Saving the state after fused in-place steps and restoring it into a fresh optimizer
    /// continues bit for bit like the uninterrupted optimizer.
    #[test]
    fn fused_state_round_trips_exactly() {
        let cfg = OptimizerConfig::Adamw {
            lr: 0.01,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
        };
        let x0: Vec<f32> = (0..5000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let var = || Var::from_tensor(&Tensor::new(x0.as_slice(), &Device::Cpu).unwrap()).unwrap();
        let grad = |x: &Var, step: usize| {
            (x.as_tensor() - step as f64 / 5.0)
                .unwrap()
                .powf(3.0)
                .unwrap()
                .affine(1.0 / 3.0, 0.0)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (a, b) = (var(), var());
        let mut oa = Optimizer::new(cfg.clone(), vec![("x".into(), a.clone())]);
        let mut ob = Optimizer::new(cfg.clone(), vec![("x".into(), b.clone())]);
        for step in 1..=3 {
            oa.step(&grad(&a, step), 0.01).unwrap();
            ob.step(&grad(&b, step), 0.01).unwrap();
        }
        let (state, steps) = ob.state();
        assert_eq!(state.len(), 2, "{:?}", state.keys());
        let mut oc = Optimizer::new(cfg, vec![("x".into(), b.clone())]);
        oc.load_state(&state, steps).unwrap();
        for step in 4..=6 {
            oa.step(&grad(&a, step), 0.01).unwrap();
            oc.step(&grad(&b, step), 0.01).unwrap();
        }
        let (va, vb): (Vec<f32>, Vec<f32>) = (
            a.as_tensor().to_vec1().unwrap(),
            b.as_tensor().to_vec1().unwrap(),
        );
        assert!(va.iter().zip(&x0).any(|(a, x)| a != x));
        assert_eq!(va, vb);
        assert_eq!(
            oa.state().0.keys().collect::<Vec<_>>(),
            oc.state().0.keys().collect::<Vec<_>>()
        );
        for (k, t) in oa.state().0 {
            let u = &oc.state().0[&k];
            assert_eq!(
                t.to_vec1::<f32>().unwrap(),
                u.to_vec1::<f32>().unwrap(),
                "{k}"
            );
        }
    }
}
