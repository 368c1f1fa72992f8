//! ResNet encoders against torchvision and timm: narrow torchvision ResNets (their own
//! `ResNet`, `BasicBlock` and `_make_layer`, built by `fixtures/models/resnet/make.py`, which
//! records the versions) and a narrow timm ResNet-18 (`make_timm.py`) load through
//! `siam_model::pretrained`, and siam's pooled backbone features equal theirs in evaluation
//! mode; every kind of bad state dict is refused by name with
//! nothing loaded; a training step runs and moves the weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use siam_model::{
    Distance, EncoderConfig, InputSpec, ModelConfig, ResnetConfig, SiameseModel, Stem, pretrained,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/resnet")
        .join(name)
}

fn config(depth: usize, widths: &[usize], stem: Stem, h: usize, w: usize) -> ModelConfig {
    let r = ResnetConfig {
        widths: widths.to_vec(),
        stem,
        hidden: 0,
        embedding_dim: 8,
        pretrained: None,
    };
    ModelConfig {
        encoder: match depth {
            18 => EncoderConfig::Resnet18(r),
            _ => EncoderConfig::Resnet34(r),
        },
        input: InputSpec {
            channels: 3,
            height: h,
            width: w,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        },
        normalize: true,
        distance: Distance::Cosine,
        pair_head: false,
        test_time_flip: false,
    }
}

/// Inputs and pooled features of torchvision's networks (`make.py`) and timm's
/// (`make_timm.py`).
fn expected() -> HashMap<String, Tensor> {
    let mut e =
        candle_core::safetensors::load(fixture("expected.safetensors"), &Device::Cpu).unwrap();
    e.extend(
        candle_core::safetensors::load(fixture("expected-timm.safetensors"), &Device::Cpu).unwrap(),
    );
    e
}

/// Every backbone variable, by name, as plain values.
fn backbone(model: &SiameseModel) -> Vec<(String, Vec<f32>)> {
    let data = model.varmap().data().lock().unwrap();
    let mut v: Vec<(String, Vec<f32>)> = data
        .iter()
        .filter(|(k, _)| !k.starts_with("encoder.head."))
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The largest absolute difference between two tensors of one shape.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn pooled_features_equal_torchvisions_in_evaluation() {
    let exp = expected();
    for (file, depth, widths, stem) in [
        ("resnet18", 18, [4, 8, 16, 32], Stem::Imagenet),
        ("resnet18-small", 18, [4, 8, 16, 32], Stem::Small),
        ("resnet34", 34, [4, 4, 8, 8], Stem::Imagenet),
        ("timm-resnet18", 18, [4, 8, 16, 32], Stem::Imagenet),
    ] {
        let x = &exp[&format!("{file}.x")];
        let want = &exp[&format!("{file}.features")];
        let (_, _, h, w) = x.dims4().unwrap();
        let model =
            SiameseModel::new(&config(depth, &widths, stem, h, w), 0, &Device::Cpu).unwrap();
        let before = model.backbone_features(x).unwrap().unwrap();
        let load =
            pretrained::load_backbone(&model, &fixture(&format!("{file}.safetensors"))).unwrap();
        assert_eq!(load.stripped_prefix, None);
        assert!(load.ignored.contains(&"fc.weight".to_string()), "{load:?}");
        assert!(
            load.ignored
                .iter()
                .any(|n| n.ends_with("num_batches_tracked")),
            "{load:?}"
        );
        let got = model.backbone_features(x).unwrap().unwrap();
        let diff = max_abs_diff(&got, want);
        let scale: f32 = want.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        eprintln!("{file}: max |siam − reference| = {diff:.2e} (features up to {scale:.3})");
        assert!(
            diff <= 1e-4,
            "{file}: max |siam − reference| = {diff} (features up to {scale})"
        );
        // The comparison can fail: the initial weights give other features.
        let off = max_abs_diff(&before, want);
        assert!(off > 1e-2, "{file}: {off}");
        // The embedding goes through the head on top; embedding (no graph, BatchNorm written
        // over the convolutions' outputs) gives the tracked evaluation pass's values.
        let embedded = model.embed(x).unwrap();
        assert_eq!(embedded.dims(), [2, 8]);
        let tracked = model.forward_t(x, false).unwrap();
        let d = max_abs_diff(&embedded, &tracked);
        assert_eq!(d, 0.0, "{file}: embed and forward_t(eval) differ by {d}");
    }
}

/// Writes `tensors` as a safetensors file.
fn write(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn every_bad_state_dict_is_refused_by_name_and_nothing_loads() {
    let dir = tempfile::tempdir().unwrap();
    let good =
        candle_core::safetensors::load(fixture("resnet18.safetensors"), &Device::Cpu).unwrap();
    let model = SiameseModel::new(
        &config(18, &[4, 8, 16, 32], Stem::Imagenet, 40, 40),
        0,
        &Device::Cpu,
    )
    .unwrap();
    let initial = backbone(&model);
    let refuse = |tensors: &HashMap<String, Tensor>, needles: &[&str]| {
        let p = dir.path().join("bad.safetensors");
        write(&p, tensors);
        let e = pretrained::load_backbone(&model, &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
        for n in needles {
            assert!(e.contains(n), "{n} not in: {e}");
        }
        assert!(
            backbone(&model) == initial,
            "a refused file changed the weights"
        );
    };
    // A missing tensor.
    let mut t = good.clone();
    t.remove("layer3.1.bn2.running_var");
    refuse(&t, &["missing layer3.1.bn2.running_var"]);
    // An unexpected one (a Bottleneck's third convolution).
    let mut t = good.clone();
    t.insert(
        "layer1.0.conv3.weight".into(),
        Tensor::zeros((4, 4, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    refuse(&t, &["unexpected layer1.0.conv3.weight"]);
    // A shape mismatch, and several problems at once are all named.
    let mut t = good.clone();
    t.insert(
        "layer4.0.conv1.weight".into(),
        Tensor::zeros((32, 16, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    t.remove("bn1.weight");
    refuse(
        &t,
        &[
            "layer4.0.conv1.weight has shape [32, 16, 1, 1], the encoder needs [32, 16, 3, 3]",
            "missing bn1.weight",
            "2 problems",
        ],
    );
    // Non-finite values.
    let mut t = good.clone();
    t.insert(
        "bn1.bias".into(),
        Tensor::new(&[f32::NAN, 0.0, 0.0, 0.0], &Device::Cpu).unwrap(),
    );
    refuse(&t, &["bn1.bias holds NaN"]);
    // Another depth: ResNet-34's file into ResNet-18 (unexpected blocks, other widths).
    let p34 = fixture("resnet34.safetensors");
    let e = pretrained::load_backbone(&model, &p34)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unexpected layer1.2.conv1.weight"), "{e}");
    // Not a safetensors file; not there.
    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"not a tensor file").unwrap();
    let e = pretrained::load_backbone(&model, &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("junk.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    assert!(pretrained::load_backbone(&model, &dir.path().join("none.safetensors")).is_err());
    assert!(backbone(&model) == initial);
    // Into an encoder that is not a ResNet.
    let mut c = config(18, &[4, 8, 16, 32], Stem::Imagenet, 40, 40);
    c.encoder = EncoderConfig::SeedCnn { embedding_dim: 8 };
    c.input.height = 28;
    c.input.width = 28;
    let seed = SiameseModel::new(&c, 0, &Device::Cpu).unwrap();
    let e = pretrained::load_backbone(&seed, &fixture("resnet18.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not seed-cnn"), "{e}");
    // A wrapper's prefix (DataParallel's `module.`) and half-precision values load.
    let wrapped: HashMap<String, Tensor> = good
        .iter()
        .map(|(k, v)| {
            let v = if v.dtype() == DType::F32 {
                v.to_dtype(DType::F16).unwrap()
            } else {
                v.clone()
            };
            (format!("module.{k}"), v)
        })
        .collect();
    let p = dir.path().join("wrapped.safetensors");
    write(&p, &wrapped);
    let load = pretrained::load_backbone(&model, &p).unwrap();
    assert_eq!(load.stripped_prefix.as_deref(), Some("module."));
    assert!(backbone(&model) != initial);
}

#[test]
fn a_training_step_moves_every_backbone_weight_and_the_statistics() {
    use candle_nn::Optimizer;
    let c = config(18, &[4, 8, 8, 8], Stem::Small, 12, 12);
    let model = SiameseModel::new(&c, 3, &Device::Cpu).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 12, 12), &Device::Cpu).unwrap();
    let before = backbone(&model);
    let mut opt = candle_nn::SGD::new(model.trainable_vars(), 0.1).unwrap();
    let e = model.forward_t(&x, true).unwrap();
    // Pull the first two embeddings together, push the others apart.
    let loss = ((e.narrow(0, 0, 1).unwrap() - e.narrow(0, 1, 1).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        - (e.narrow(0, 2, 1).unwrap() - e.narrow(0, 3, 1).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    opt.backward_step(&loss).unwrap();
    let after = backbone(&model);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert!(
            a != b,
            "{name} did not change in a training step (its gradient or statistics are lost)"
        );
    }
}
