//! ResNet-18's convolutions one at a time, as siam runs them (`kernels::conv3x3` for 3×3
//! stride 1, `kernels::conv2d_strided` otherwise): the median time of forward + backward (or
//! forward alone) per layer shape, to set beside PyTorch's from `xtask/bench/resnet_layers.py`
//! in the same session. Used for the per-layer figures in docs/BENCHMARKS.md.
//!
//! `cargo run --release -p xtask --example resnet_layers -- SIDE IMAGES train|infer [LAYER [REPS]]`
//! (defaults 112, 32, train, every layer, 7 repetitions; the same arguments for the Python script).
//! Run it as the binaries run: `MIMALLOC_PURGE_DELAY=-1 CANDLE_NUM_THREADS=1 RAYON_NUM_THREADS=2`.

use std::time::Instant;

use candle_core::{Device, Result, Tensor, Var};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (input channels, output channels, kernel side, stride, input side) of each distinct
/// convolution of ResNet-18 (ImageNet stem) on `side`×`side` input.
fn layers(side: usize) -> Vec<(usize, usize, usize, usize, usize)> {
    let mut out = vec![(3, 64, 7, 2, side)];
    let (mut cin, mut m) = (64, side.div_ceil(2).div_ceil(2));
    for (stage, w) in [64, 128, 256, 512].into_iter().enumerate() {
        if stage > 0 {
            out.push((cin, w, 3, 2, m));
            out.push((cin, w, 1, 2, m));
            m = m.div_ceil(2);
        }
        out.push((w, w, 3, 1, m));
        cin = w;
    }
    out
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (side, n) = (num(0, 112), num(1, 32));
    let train = args.get(2).is_none_or(|s| s == "train");
    let only = args.get(3).and_then(|s| s.parse::<usize>().ok());
    let reps = num(4, 7).max(1);
    let dev = Device::Cpu;
    for (i, &(ci, co, k, s, h)) in layers(side).iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, ci, h, h), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?)?;
        // The images themselves need no gradient (the stem), every later input does.
        let input_grad = ci != 3;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            let y = if k == 3 && s == 1 {
                siam_model::kernels::conv3x3(&x, &w, 1, input_grad)?
            } else {
                siam_model::kernels::conv2d_strided(&x, &w, None, k / 2, s, input_grad)?
            };
            if train {
                y.sum_all()?.backward()?;
            } else {
                y.sum_all()?;
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{ci:4}->{co:4} k{k} s{s} {h:3}x{h:<3} {:8.2} ms",
            times[reps / 2]
        );
    }
    Ok(())
}
