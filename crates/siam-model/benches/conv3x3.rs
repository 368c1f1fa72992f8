//! ResNet-18's 3×3 stride-1 convolutions (32 images, the map sides of 64×64 and 112×112 inputs)
//! by im2col, by Winograd and by one product per tap, and its stride-2 convolutions by im2col
//! and by taps, forward and backward: the measurements behind `kernels::conv3x3`'s and
//! `kernels::conv2d_strided`'s choices (docs/BENCHMARKS.md).
//!
//! `cargo bench -p siam-model --bench conv3x3`

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, criterion_main};
use siam_model::kernels::{conv2d_im2col, conv2d_taps, conv3x3_winograd};

/// (images, channels, side).
const SHAPES: [(usize, usize, usize); 8] = [
    (32, 64, 28),
    (32, 64, 16),
    (32, 128, 14),
    (32, 128, 8),
    (32, 256, 7),
    (32, 256, 4),
    (32, 512, 4),
    (32, 512, 2),
];

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("conv3x3 forward+backward");
    group.sample_size(10);
    for (n, ch, side) in SHAPES {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, ch, side, side), &dev).unwrap())
            .unwrap();
        let w =
            Var::from_tensor(&Tensor::randn(0f32, 0.05, (ch, ch, 3, 3), &dev).unwrap()).unwrap();
        for name in ["im2col", "winograd", "taps"] {
            group.bench_function(format!("{name} n{n} c{ch} {side}x{side}"), |b| {
                b.iter(|| {
                    let y = match name {
                        "winograd" => conv3x3_winograd(&x, &w, 1, true).unwrap(),
                        "taps" => conv2d_taps(&x, &w, 1, 1, true).unwrap(),
                        _ => conv2d_im2col(&x, &w, None, 1, 1, true).unwrap(),
                    };
                    y.sum_all().unwrap().backward().unwrap()
                })
            });
        }
    }
    group.finish();
    // Stride 2: (images, input channels, input side, kernel side).
    let mut group = c.benchmark_group("stride-2 conv forward+backward");
    group.sample_size(10);
    for (n, ch, side, k) in [
        (32, 64, 28, 3),
        (32, 64, 16, 3),
        (32, 128, 14, 3),
        (32, 128, 8, 3),
        (32, 256, 7, 3),
        (32, 256, 4, 3),
        (32, 64, 16, 1),
        (32, 128, 8, 1),
        (32, 256, 4, 1),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, ch, side, side), &dev).unwrap())
            .unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.05, (2 * ch, ch, k, k), &dev).unwrap())
            .unwrap();
        for name in ["im2col", "taps"] {
            group.bench_function(format!("{name} n{n} c{ch} {side}x{side} k{k}"), |b| {
                b.iter(|| {
                    let y = if name == "taps" {
                        conv2d_taps(&x, &w, k / 2, 2, true).unwrap()
                    } else {
                        conv2d_im2col(&x, &w, None, k / 2, 2, true).unwrap()
                    };
                    y.sum_all().unwrap().backward().unwrap()
                })
            });
        }
    }
    group.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
