use super::*;
use crate::config::{ScheduleConfig, ScheduleKind};
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

/// The gradients of loss = Σ (x − step/5)³ / 3: (x − step/5)², changing with the step.
fn cubic_grads(x: &Var, step: usize) -> candle_core::backprop::GradStore {
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
        for (x, o) in [(&x32, &mut o32), (&x64, &mut o64)] {
            o.step(&cubic_grads(x, step), 0.01).unwrap();
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
    let (a, b) = (var(), var());
    let mut oa = Optimizer::new(cfg.clone(), vec![("x".into(), a.clone())]);
    let mut ob = Optimizer::new(cfg.clone(), vec![("x".into(), b.clone())]);
    for step in 1..=3 {
        oa.step(&cubic_grads(&a, step), 0.01).unwrap();
        ob.step(&cubic_grads(&b, step), 0.01).unwrap();
    }
    let (state, steps) = ob.state();
    assert_eq!(state.len(), 2, "{:?}", state.keys());
    let mut oc = Optimizer::new(cfg, vec![("x".into(), b.clone())]);
    oc.load_state(&state, steps).unwrap();
    for step in 4..=6 {
        oa.step(&cubic_grads(&a, step), 0.01).unwrap();
        oc.step(&cubic_grads(&b, step), 0.01).unwrap();
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
