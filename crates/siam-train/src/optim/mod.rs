//! Optimizers (AdamW, SGD with momentum; PyTorch's update rules) whose state can be saved and
//! restored exactly, and learning-rate schedules with warmup.
//!
//! The map:
//! - this file: [`Optimizer`], its variable groups (`[finetune]`), its step and its state;
//! - `fused`: AdamW's update on the CPU as one parallel pass that writes the parameter in
//!   place (candle's in-place op) and keeps the moments as plain vectors;
//! - `schedule`: [`learning_rate`], constant/step/cosine with linear warmup.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

use crate::config::OptimizerConfig;

mod fused;
mod schedule;
#[cfg(test)]
mod tests;

use fused::{AdamwStep, fusable};
pub use schedule::learning_rate;

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
