//! The fused BatchNorm + ReLU against candle-nn's BatchNorm followed by ReLU.

use super::batchnorm::bn_relu;
use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNorm, BatchNormConfig, VarBuilder, VarMap};

use crate::kernels::tests::max_diff;

fn bn(seed: u64, c: usize) -> (VarMap, BatchNorm) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let b = candle_nn::batch_norm(c, BatchNormConfig::default(), vb.pp("bn")).unwrap();
    // Non-trivial γ, β and running statistics.
    for (name, v) in vm.data().lock().unwrap().iter() {
        let k = name.len() as u64 + seed;
        let vals: Vec<f32> = (0..c as u64)
            .map(|i| 0.5 + ((i * 7 + k) % 11) as f32 / 10.0)
            .collect();
        v.set(&Tensor::new(vals, &Device::Cpu).unwrap()).unwrap();
    }
    (vm, b)
}

/// The fused training-mode BatchNorm + ReLU against candle_nn's BatchNorm followed by ReLU:
/// outputs, the gradients of x, γ and β, and the running statistics after two steps.
#[test]
fn fused_batch_norm_relu_matches_candle_nn() {
    for (case, dims) in [[4, 3, 5, 5], [2, 8, 7, 6], [16, 2, 1, 1]]
        .iter()
        .enumerate()
    {
        let c = dims[1];
        let (vm1, ours) = bn(case as u64, c);
        let (vm2, theirs) = bn(case as u64, c);
        for step in 0..2u64 {
            let n: usize = dims.iter().product();
            let vals: Vec<f32> = (0..n as u64)
                .map(|i| ((i * 2654435761 + step * 97) % 1009) as f32 / 200.0 - 2.0)
                .collect();
            let x = Var::from_tensor(&Tensor::from_vec(vals, dims, &Device::Cpu).unwrap()).unwrap();
            let up: Vec<f32> = (0..n as u64)
                .map(|i| ((i * 40503 + 11) % 613) as f32 / 300.0 - 1.0)
                .collect();
            let up = Tensor::from_vec(up, dims, &Device::Cpu).unwrap();
            let y1 = bn_relu(&ours, &x, true).unwrap();
            let y2 = theirs.forward_t(&x, true).unwrap().relu().unwrap();
            assert!(max_diff(&y1, &y2) < 1e-5, "case {case}: forward");
            let g1 = (&y1 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&y2 * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert!(d < 1e-4, "case {case}: dx differs by {d}");
            let (w1, b1) = ours.weight_and_bias().unwrap();
            let (w2, b2) = theirs.weight_and_bias().unwrap();
            let d = max_diff(g1.get(w1).unwrap(), g2.get(w2).unwrap());
            assert!(d < 1e-3, "case {case}: dgamma differs by {d}");
            let d = max_diff(g1.get(b1).unwrap(), g2.get(b2).unwrap());
            assert!(d < 1e-3, "case {case}: dbeta differs by {d}");
        }
        let (d1, d2) = (vm1.data().lock().unwrap(), vm2.data().lock().unwrap());
        for name in ["bn.running_mean", "bn.running_var"] {
            let d = max_diff(d1[name].as_tensor(), d2[name].as_tensor());
            assert!(d < 1e-5, "case {case}: {name} differs by {d}");
        }
    }
}
