//! Loader throughput on 28×28 Fashion-MNIST fixture images: images/s with and without
//! augmentation, through the background loader. Run: `cargo bench -p siam-data --bench loader`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_main};
use siam_data::idx::{self, IdxSplit};
use siam_data::{AugmentConfig, Loader, LoaderConfig, Normalize, SamplerConfig, Transform};

fn transform(augment: bool) -> Transform {
    Transform {
        augment: if augment {
            AugmentConfig {
                hflip: true,
                rotate_degrees: 10.0,
                scale_min: 0.9,
                scale_max: 1.1,
                translate: 0.1,
                crop_padding: 2,
                ..AugmentConfig::none()
            }
        } else {
            AugmentConfig::none()
        },
        normalize: Some(Normalize {
            mean: vec![0.286],
            std: vec![0.353],
        }),
        seed: 1,
        second_view: None,
        second_view_fraction: 1.0,
    }
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fashion-mnist-subset");
    let set = idx::load_dir(dir, IdxSplit::Train, None).expect("fixture subset");
    let pairs = 128;
    let batches = 20u64;
    let mut g = c.benchmark_group("loader");
    g.throughput(Throughput::Elements(2 * pairs as u64 * batches));
    g.sample_size(10);
    for augment in [false, true] {
        let name = if augment {
            "pairs128_augmented"
        } else {
            "pairs128_plain"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let sampler = SamplerConfig::default()
                    .build(&set, pairs, 3)
                    .expect("sampler");
                let cfg = LoaderConfig {
                    batches_per_epoch: batches,
                    epochs: Some(1),
                    ..Default::default()
                };
                let loader =
                    Loader::spawn(set.clone(), sampler, transform(augment), cfg).expect("loader");
                for batch in loader {
                    black_box(batch.expect("batch"));
                }
            })
        });
    }
    g.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
criterion_main!(group::benches);
