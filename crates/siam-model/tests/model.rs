//! Integration tests of siam-model: encoders, seeded init, BatchNorm modes, the model file and
//! its failure cases, distances and losses against PyTorch and finite differences.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use siam_model::distance::{self, Distance};
use siam_model::encoder::SeedCnn;
use siam_model::loss::{self, Mining};
use siam_model::{EncoderConfig, InputSpec, ModelConfig, SiameseModel};

const CPU: Device = Device::Cpu;

fn t64(v: &[f64], shape: (usize, usize)) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &CPU).unwrap()
}

fn v1(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

fn convnet(dropout: f32) -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::Convnet {
            channels: vec![8, 16],
            hidden: 32,
            dropout,
            embedding_dim: 12,
            pooling: siam_model::Pooling::GlobalAverage,
        },
        input: InputSpec::fashion_mnist(),
        normalize: false,
        distance: Distance::Euclidean,
        pair_head: false,
        test_time_flip: false,
    }
}

fn seed_cnn(c: usize, h: usize, w: usize) -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::SeedCnn { embedding_dim: 16 },
        input: InputSpec {
            channels: c,
            height: h,
            width: w,
            mean: vec![0.5],
            std: vec![0.25],
        },
        normalize: true,
        distance: Distance::Euclidean,
        pair_head: true,
        test_time_flip: false,
    }
}

fn images(n: usize, c: usize, h: usize, w: usize, seed: u32) -> Tensor {
    let v: Vec<f32> = (0..n * c * h * w)
        .map(|i| (((i as u32).wrapping_mul(2654435761u32) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (n, c, h, w), &CPU).unwrap()
}

/// `relu_activity` counts exactly the units planted dead (a channel whose weights are zero and
/// bias negative; a hidden neuron with a large negative bias; 300 images are probed in two
/// chunks), and its active share matches a direct count on the first layer's output.
#[test]
fn relu_activity_finds_planted_dead_units() {
    let set = |m: &SiameseModel, name: &str, f: &dyn Fn(&mut Vec<f32>, &[usize])| {
        let data = m.varmap().data().lock().unwrap();
        let v = &data[name];
        let dims = v.dims().to_vec();
        let mut x = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        f(&mut x, &dims);
        v.set(&Tensor::from_vec(x, dims, &CPU).unwrap()).unwrap();
    };
    // The seed CNN: channels 3 and 17 of conv1 can never fire.
    let m = SiameseModel::new(&seed_cnn(1, 28, 28), 3, &CPU).unwrap();
    for c in [3usize, 17] {
        set(&m, "encoder.conv1.weight", &|w, d| {
            let per = d[1] * d[2] * d[3];
            w[c * per..(c + 1) * per].iter_mut().for_each(|x| *x = 0.0);
        });
        set(&m, "encoder.conv1.bias", &|b, _| b[c] = -1.0);
    }
    let x = images(40, 1, 28, 28, 5);
    let a = m.relu_activity(&x).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        (a[0].layer.as_str(), a[0].units, a[0].dead),
        ("conv1", 32, 2)
    );
    assert_eq!((a[1].layer.as_str(), a[1].units), ("conv2", 64));
    // The share of positive activations of conv1, counted directly.
    let data = m.varmap().data().lock().unwrap();
    let (w, b) = (
        data["encoder.conv1.weight"].as_tensor(),
        data["encoder.conv1.bias"].as_tensor(),
    );
    let y = x
        .conv2d(w, 0, 1, 1, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, 32, 1, 1)).unwrap())
        .unwrap();
    let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let share = v.iter().filter(|&&x| x > 0.0).count() as f64 / v.len() as f64;
    assert!(
        (a[0].active_share - share).abs() < 1e-9,
        "{} vs {share}",
        a[0].active_share
    );
    drop(data);
    // The convnet: killing one live hidden neuron adds exactly one dead unit there. (An
    // untrained head over global-average features already has dead units: the pooled features
    // vary little between images, so some neurons are negative for all of them.)
    let m = SiameseModel::new(&convnet(0.0), 4, &CPU).unwrap();
    let x = images(300, 1, 28, 28, 9);
    let before = m.relu_activity(&x).unwrap();
    let names: Vec<&str> = before.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(
        names,
        [
            "block0.bn1",
            "block0.bn2",
            "block1.bn1",
            "block1.bn2",
            "head.hidden"
        ]
    );
    assert!(before[..4].iter().all(|l| l.dead == 0), "{before:?}");
    let (hidden_dead, units) = (before[4].dead, before[4].units);
    assert_eq!(units, 32);
    assert!(hidden_dead < 32);
    // Kill every neuron one by one until one was alive: the count grows by one.
    let mut grew = false;
    for u in 0..32 {
        set(&m, "encoder.head.hidden.bias", &|b, _| b[u] = -1e4);
        let after = m.relu_activity(&x).unwrap();
        assert!(after[4].dead >= hidden_dead);
        if after[4].dead == hidden_dead + 1 {
            grew = true;
            assert!(after[..4].iter().zip(&before).all(|(a, b)| a == b));
            break;
        }
        assert_eq!(after[4].dead, hidden_dead, "unit {u} was dead already");
    }
    assert!(grew, "no live hidden unit found");
}

// ---------------------------------------------------------------- encoders

#[test]
fn seed_cnn_flatten_size_follows_the_input() {
    assert_eq!(SeedCnn::flatten_dim(28, 28).unwrap(), 64 * 5 * 5); // not the often-copied 64·4·4
    assert_eq!(SeedCnn::flatten_dim(32, 32).unwrap(), 64 * 6 * 6);
    assert_eq!(SeedCnn::flatten_dim(64, 48).unwrap(), 64 * 14 * 10); // (64−4)/2=30, (30−2)/2=14; (48−4)/2=22, (22−2)/2=10
    assert!(SeedCnn::flatten_dim(10, 10).is_err());
    for (c, h, w) in [(1, 28, 28), (3, 32, 32), (3, 64, 48)] {
        let m = SiameseModel::new(&seed_cnn(c, h, w), 1, &CPU).unwrap();
        let e = m.embed(&images(3, c, h, w, 1)).unwrap();
        assert_eq!(e.dims(), &[3, 16]);
        // Normalised embeddings have unit norm.
        close(&v1(&e.sqr().unwrap().sum(1).unwrap()), &[1.0; 3], 1e-5);
    }
    let m = SiameseModel::new(&seed_cnn(1, 28, 28), 1, &CPU).unwrap();
    assert!(
        m.embed(&images(2, 3, 28, 28, 1))
            .unwrap_err()
            .to_string()
            .contains("(N, 1, 28, 28)")
    );
}

#[test]
fn init_is_seeded_and_follows_pytorch_bounds() {
    let a = SiameseModel::new(&seed_cnn(1, 28, 28), 7, &CPU).unwrap();
    let b = SiameseModel::new(&seed_cnn(1, 28, 28), 7, &CPU).unwrap();
    let c = SiameseModel::new(&seed_cnn(1, 28, 28), 8, &CPU).unwrap();
    let x = images(2, 1, 28, 28, 3);
    assert_eq!(v1(&a.embed(&x).unwrap()), v1(&b.embed(&x).unwrap()));
    assert_ne!(v1(&a.embed(&x).unwrap()), v1(&c.embed(&x).unwrap()));
    let data = a.varmap().data().lock().unwrap();
    let w = v1(data["encoder.conv1.weight"].as_tensor());
    let bound = 1.0 / 25f64.sqrt(); // fan_in = 1·5·5
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(
        w.iter().map(|v| v.abs()).fold(0.0, f64::max) > 0.9 * bound,
        "uniform over the whole range"
    );
    let fc = v1(data["encoder.fc.weight"].as_tensor());
    assert!(fc.iter().all(|v| v.abs() <= 1.0 / 1600f64.sqrt()));
}

#[test]
fn batchnorm_train_and_eval_modes() {
    let m = SiameseModel::new(&convnet(0.0), 3, &CPU).unwrap();
    let x = images(6, 1, 28, 28, 5);
    let before =
        v1(m.varmap().data().lock().unwrap()["encoder.block0.bn1.running_mean"].as_tensor());
    // Eval: an image's embedding does not depend on its batch.
    let alone = v1(&m.embed(&x.narrow(0, 2, 1).unwrap()).unwrap());
    let in_batch = v1(&m.embed(&x).unwrap().narrow(0, 2, 1).unwrap());
    close(&alone, &in_batch, 1e-5);
    // Train: batch statistics, so the same image embeds differently in another batch.
    let t1 = v1(&m.forward_t(&x, true).unwrap().narrow(0, 2, 1).unwrap());
    let t2 = v1(&m
        .forward_t(&x.narrow(0, 2, 3).unwrap(), true)
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap());
    assert!(t1.iter().zip(&t2).any(|(a, b)| (a - b).abs() > 1e-4));
    let after =
        v1(m.varmap().data().lock().unwrap()["encoder.block0.bn1.running_mean"].as_tensor());
    assert_ne!(before, after, "running statistics are updated in training");
    // Running statistics are not trainable.
    assert!(m.trainable_vars().len() < m.varmap().all_vars().len());
}

#[test]
fn dropout_is_seeded() {
    let m = SiameseModel::new(&convnet(0.5), 3, &CPU).unwrap();
    let x = images(4, 1, 28, 28, 9);
    m.reseed_dropout(11);
    let a = v1(&m.forward_t(&x, true).unwrap());
    m.reseed_dropout(11);
    let b = v1(&m.forward_t(&x, true).unwrap());
    let c = v1(&m.forward_t(&x, true).unwrap());
    assert_eq!(a, b);
    assert_ne!(a, c);
    // No dropout in eval.
    assert_eq!(v1(&m.embed(&x).unwrap()), v1(&m.embed(&x).unwrap()));
}

// ---------------------------------------------------------------- model file

#[test]
fn save_load_round_trip_gives_identical_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = SiameseModel::new(&convnet(0.1), 3, &CPU).unwrap();
    m.forward_t(&images(8, 1, 28, 28, 2), true).unwrap(); // move running statistics
    m.meta_mut().threshold = Some(0.75);
    m.meta_mut().training = Some(serde_json::json!({"recipe": "test"}));
    let p = dir.path().join("m.safetensors");
    m.save(&p).unwrap();
    let back = SiameseModel::load(&p, &CPU).unwrap();
    let x = images(5, 1, 28, 28, 4);
    assert_eq!(v1(&m.embed(&x).unwrap()), v1(&back.embed(&x).unwrap()));
    assert_eq!(back.meta(), m.meta());
    assert_eq!(
        siam_model::read_model_meta(&p).unwrap().threshold,
        Some(0.75)
    );
    let c = back
        .compare(&x.get(0).unwrap(), &x.get(0).unwrap())
        .unwrap();
    assert!(c.distance < 1e-3 && c.same == Some(true));
    // No temp file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn test_time_flip_averages_an_image_and_its_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let x = images(4, 1, 28, 28, 9);
    let rev: Vec<u32> = (0..28u32).rev().collect();
    let mirrored = x
        .index_select(&Tensor::new(rev.as_slice(), &CPU).unwrap(), 3)
        .unwrap();
    let plain = SiameseModel::new(&convnet(0.0), 3, &CPU).unwrap();
    let mut cfg = convnet(0.0);
    cfg.test_time_flip = true;
    cfg.normalize = true;
    let tta = SiameseModel::new(&cfg, 3, &CPU).unwrap();
    // Without it an image and its mirror embed differently; with it they embed the same.
    let (a, b) = (
        v1(&plain.embed(&x).unwrap()),
        v1(&plain.embed(&mirrored).unwrap()),
    );
    assert!(a.iter().zip(&b).any(|(p, q)| (p - q).abs() > 1e-3));
    close(
        &v1(&tta.embed(&x).unwrap()),
        &v1(&tta.embed(&mirrored).unwrap()),
        1e-5,
    );
    // It is the normalised mean of the two plain encoder outputs (same seed, same weights).
    let mut plain_norm = convnet(0.0);
    plain_norm.normalize = false;
    let raw = SiameseModel::new(&plain_norm, 3, &CPU).unwrap();
    let mean = ((raw.embed(&x).unwrap() + raw.embed(&mirrored).unwrap()).unwrap() * 0.5).unwrap();
    let want = siam_model::distance::l2_normalize(&mean).unwrap();
    close(&v1(&tta.embed(&x).unwrap()), &v1(&want), 1e-5);
    // embed_with_norms gives the same embeddings, and the flag survives the file; a config
    // without it reads as false and is written without the key.
    close(
        &v1(&tta.embed_with_norms(&x).unwrap().0),
        &v1(&tta.embed(&x).unwrap()),
        1e-6,
    );
    let p = dir.path().join("tta.safetensors");
    tta.save(&p).unwrap();
    assert!(
        SiameseModel::load(&p, &CPU)
            .unwrap()
            .config()
            .test_time_flip
    );
    let json = serde_json::to_string(plain.config()).unwrap();
    assert!(!json.contains("test-time-flip"), "{json}");
    let json = serde_json::to_string(tta.config()).unwrap();
    assert!(json.contains("\"test-time-flip\":true"), "{json}");
}

fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>, &mut serde_json::Value),
) {
    let bytes = std::fs::read(src).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["siam"]).unwrap();
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &CPU).unwrap();
    edit(&mut tensors, &mut meta);
    let md = HashMap::from([("siam".to_string(), meta.to_string())]);
    let out =
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(md)).unwrap();
    std::fs::write(dst, out).unwrap();
}

fn load_err(p: &Path) -> String {
    let e = SiameseModel::load(p, &CPU).unwrap_err().to_string();
    assert!(
        e.contains(&p.display().to_string()),
        "error does not name the file: {e}"
    );
    e
}

#[test]
fn every_load_failure_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    SiameseModel::new(&seed_cnn(1, 28, 28), 1, &CPU)
        .unwrap()
        .save(&good)
        .unwrap();
    let p = dir.path().join("bad.safetensors");

    std::fs::write(&p, b"definitely not a model").unwrap();
    assert!(load_err(&p).contains("not a safetensors file"));

    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(&p).contains("not a safetensors file"));

    let t = HashMap::from([("w".to_string(), Tensor::zeros(3, DType::F32, &CPU).unwrap())]);
    candle_core::safetensors::save(&t, &p).unwrap();
    assert!(load_err(&p).contains("without siam metadata"));

    rewrite(&good, &p, |t, _| {
        t.remove("encoder.conv2.bias");
    });
    assert!(load_err(&p).contains("missing tensor encoder.conv2.bias"));

    rewrite(&good, &p, |t, _| {
        t.insert(
            "encoder.extra".into(),
            Tensor::zeros(2, DType::F32, &CPU).unwrap(),
        );
    });
    assert!(load_err(&p).contains("unexpected tensor encoder.extra"));

    rewrite(&good, &p, |t, _| {
        t.insert(
            "encoder.fc.weight".into(),
            Tensor::zeros((16, 1024), DType::F32, &CPU).unwrap(),
        );
    });
    assert!(
        load_err(&p)
            .contains("tensor encoder.fc.weight has shape [16, 1024], the model needs [16, 1600]")
    );

    rewrite(&good, &p, |_, m| m["encoder"]["kind"] = "resnet".into());
    let e = load_err(&p);
    assert!(e.contains("unknown variant") && e.contains("resnet"), "{e}");

    rewrite(&good, &p, |_, m| m["format-version"] = 99.into());
    assert!(load_err(&p).contains("format version 99 is newer"));

    rewrite(&good, &p, |t, _| {
        let w = t["encoder.conv1.bias"].clone();
        let nan = (w.ones_like().unwrap() * f64::NAN).unwrap();
        t.insert("encoder.conv1.bias".into(), nan);
    });
    assert!(load_err(&p).contains("encoder.conv1.bias holds NaN"));

    assert!(load_err(&dir.path().join("missing.safetensors")).contains("cannot read"));

    // A header that declares a huge network is refused before anything is allocated for it:
    // a billion values (4 GB) against a file of 180 KB; beyond 2^31 values, by size alone.
    rewrite(&good, &p, |_, m| {
        m["input"]["height"] = 512.into();
        m["input"]["width"] = 512.into();
        m["encoder"]["embedding-dim"] = 1024.into();
    });
    let e = load_err(&p);
    assert!(
        e.contains("declares a seed-cnn encoder with") && e.contains("bytes"),
        "{e}"
    );
    rewrite(&good, &p, |_, m| {
        m["input"]["height"] = 4096.into();
        m["input"]["width"] = 4096.into();
        m["encoder"]["embedding-dim"] = 65536.into();
    });
    assert!(load_err(&p).contains("more than 2^31"));
    rewrite(&good, &p, |_, m| m["input"]["height"] = 1_000_000.into());
    assert!(load_err(&p).contains("larger than 4096"));
    rewrite(&good, &p, |_, m| m["input"]["channels"] = 0.into());
    assert!(load_err(&p).contains("1 (gray) or 3 (RGB)"));

    // from_bytes gives the same checks, naming what the caller calls the bytes.
    let e = SiameseModel::from_bytes(b"junk", "embedded-model", &CPU)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("embedded-model: not a safetensors file"),
        "{e}"
    );
    let m = SiameseModel::from_bytes(&std::fs::read(&good).unwrap(), "good", &CPU).unwrap();
    assert_eq!(m.meta().embedding_dim, 16);
}

#[test]
fn parameter_count_matches_the_built_network() {
    let configs = [
        seed_cnn(1, 28, 28),
        seed_cnn(3, 32, 40),
        ModelConfig {
            encoder: EncoderConfig::Convnet {
                channels: vec![8, 16, 32],
                hidden: 24,
                dropout: 0.0,
                embedding_dim: 12,
                pooling: siam_model::Pooling::GlobalAverage,
            },
            ..seed_cnn(3, 32, 32)
        },
        ModelConfig {
            encoder: EncoderConfig::Convnet {
                channels: vec![4],
                hidden: 0,
                dropout: 0.1,
                embedding_dim: 5,
                pooling: siam_model::Pooling::GlobalAverage,
            },
            ..seed_cnn(1, 9, 9)
        },
        // Flattened final maps: 16 × 7 × 7 (28 halved twice), and 6 × 2 × 3 (9×13 halved
        // twice, odd rows and columns dropped).
        ModelConfig {
            encoder: EncoderConfig::Convnet {
                channels: vec![4, 8, 16],
                hidden: 10,
                dropout: 0.0,
                embedding_dim: 6,
                pooling: siam_model::Pooling::Flatten,
            },
            ..seed_cnn(1, 28, 28)
        },
        ModelConfig {
            encoder: EncoderConfig::Convnet {
                channels: vec![3, 4, 6],
                hidden: 0,
                dropout: 0.0,
                embedding_dim: 5,
                pooling: siam_model::Pooling::Flatten,
            },
            ..seed_cnn(2, 9, 13)
        },
    ];
    for c in configs {
        let m = SiameseModel::new(&c, 0, &CPU).unwrap();
        let built: usize = m
            .varmap()
            .data()
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with("encoder."))
            .map(|(_, v)| v.elem_count())
            .sum();
        assert_eq!(
            c.encoder.parameter_count(&c.input),
            Some(built as u64),
            "{c:?}"
        );
    }
}

/// A flattened head's input is the whole final map (channels × height × width), and the choice
/// survives a save and load with identical embeddings.
#[test]
fn flatten_pooling_keeps_positions_and_round_trips() {
    let mut c = convnet(0.0);
    c.encoder = EncoderConfig::Convnet {
        channels: vec![4, 8],
        hidden: 0,
        dropout: 0.0,
        embedding_dim: 6,
        pooling: siam_model::Pooling::Flatten,
    };
    let m = SiameseModel::new(&c, 3, &CPU).unwrap();
    let head = m
        .varmap()
        .data()
        .lock()
        .unwrap()
        .get("encoder.head.out.weight")
        .unwrap()
        .dims()
        .to_vec();
    assert_eq!(
        head,
        vec![6, 8 * 14 * 14],
        "head input: 8 channels x 14 x 14"
    );
    let x = images(3, 1, 28, 28, 7);
    let e = m.embed(&x).unwrap();
    assert_eq!(e.dims(), &[3, 6]);
    // Embeddings keep no graph (which would hold every activation alive with them).
    assert!(
        !e.track_op(),
        "embed returned a tensor that records its graph"
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("flat.safetensors");
    m.save(&p).unwrap();
    let back = SiameseModel::load(&p, &CPU).unwrap();
    assert_eq!(back.config().encoder, c.encoder);
    let d = (back.embed(&x).unwrap() - &e)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d < 1e-6, "embeddings changed by {d} after the round trip");
}

#[test]
fn compare_paths_uses_the_stored_preprocessing() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fashion-mnist-png");
    let mut m = SiameseModel::new(&seed_cnn(1, 28, 28), 1, &CPU).unwrap();
    m.meta_mut().threshold = Some(0.1);
    let a = fx.join("bag/00.png");
    let c = m.compare_paths(&a, &a).unwrap();
    assert!(c.distance < 1e-3);
    assert_eq!(c.same, Some(true));
    let c = m.compare_paths(&a, fx.join("trouser/00.png")).unwrap();
    assert!(c.distance > 0.0);
    // Preprocessing matches (pixel/255 − mean)/std.
    let x = m.load_image(&a).unwrap();
    let raw = image::open(&a).unwrap().to_luma8().into_raw();
    let expect: Vec<f64> = raw
        .iter()
        .map(|&p| ((p as f32 / 255.0 - 0.5) / 0.25) as f64)
        .collect();
    close(&v1(&x), &expect, 1e-6);
    let e = m
        .compare_paths(&a, fx.join("nope.png"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.png"), "{e}");
}

// ---------------------------------------------------------------- distances and losses
//
// Reference values: PyTorch 2.15.0, float64, script:
//   a = [[0.1,-0.3,0.5],[1.0,0.2,-0.4],[0,0,0],[-0.7,0.9,0.3]]
//   b = [[0.4,-0.1,0.2],[0.3,0.3,0.3],[0,0,0],[0.5,-0.5,1.1]]; same = [1,0,1,0]
//   d = torch.sqrt(((a-b)**2).sum(1) + 1e-12)
//   1 - F.cosine_similarity(a[[0,1,3]], b[[0,1,3]], eps=1e-12); torch.cdist(a, b)
//   L = (same*d**2 + (1-same)*clamp(1-d, min=0)**2).mean(); L.backward()  -> a.grad
//   triplet: clamp(dap - dan + 0.3, min=0).mean() with dap=[.5,1.2,.1,.9], dan=[.7,.4,1.5,.95]
//   F.binary_cross_entropy_with_logits([2,-1,.3,-3], same)
//   mining over e=[[0,.1],[.3,0],[.2,.4],[1,1],[.1,.5],[.9,.2]], labels [0,0,1,1,2,2], m=0.5,
//   by explicit loops over (a,p,n): batch-all mean over l>1e-16, batch-hard per anchor,
//   semi-hard over d_ap < d_an < d_ap + m.

const A: [f64; 12] = [
    0.1, -0.3, 0.5, 1.0, 0.2, -0.4, 0.0, 0.0, 0.0, -0.7, 0.9, 0.3,
];
const B: [f64; 12] = [0.4, -0.1, 0.2, 0.3, 0.3, 0.3, 0.0, 0.0, 0.0, 0.5, -0.5, 1.1];
const SAME: [f64; 4] = [1.0, 0.0, 1.0, 0.0];

#[test]
fn distances_match_pytorch() {
    let (a, b) = (t64(&A, (4, 3)), t64(&B, (4, 3)));
    close(
        &v1(&distance::euclidean(&a, &b).unwrap()),
        &[
            0.46904157598340895,
            0.9949874371071225,
            1e-06,
            2.0099751242244266,
        ],
        1e-9,
    );
    let idx = Tensor::new(&[0u32, 1, 3], &CPU).unwrap();
    let (ai, bi) = (
        a.index_select(&idx, 0).unwrap(),
        b.index_select(&idx, 0).unwrap(),
    );
    close(
        &v1(&distance::cosine(&ai, &bi).unwrap()),
        &[0.3729455534711802, 0.578362978644216, 1.3048543543626865],
        1e-9,
    );
    let pw = [
        0.469041575982343,
        0.6633249580710799,
        0.5916079783099616,
        0.7483314773547883,
        0.9,
        0.9949874371066199,
        1.0954451150103321,
        1.7291616465790582,
        0.45825756949558405,
        0.5196152422706631,
        0.0,
        1.307669683062202,
        1.489966442575134,
        1.1661903789690602,
        1.1789826122551597,
        2.009975124224178,
    ];
    close(
        &v1(&distance::pairwise(&a, &b, Distance::Euclidean).unwrap()),
        &pw,
        1e-6,
    );
    let sq = v1(&distance::pairwise(&a, &b, Distance::SquaredEuclidean).unwrap());
    close(&sq, &pw.iter().map(|x| x * x).collect::<Vec<_>>(), 1e-9);
    // Row-wise and pairwise agree on the diagonal for cosine too.
    let pc = distance::pairwise(&ai, &bi, Distance::Cosine).unwrap();
    let pc = v1(&pc);
    close(
        &[pc[0], pc[4], pc[8]],
        &v1(&distance::cosine(&ai, &bi).unwrap()),
        1e-9,
    );
    assert!(distance::euclidean(&a, &b.narrow(0, 0, 2).unwrap()).is_err());
}

#[test]
fn losses_match_pytorch() {
    let (a, b) = (t64(&A, (4, 3)), t64(&B, (4, 3)));
    let same = Tensor::new(&SAME, &CPU).unwrap();
    let d = distance::euclidean(&a, &b).unwrap();
    let l: f64 = loss::contrastive(&d, &same, 1.0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((l - 0.05500628144718877).abs() < 1e-9, "{l}");
    let l: f64 = loss::contrastive_with(&d, &same, 1.0, 0.2)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((l - 0.018102123848597863).abs() < 1e-9, "{l}");
    let dap = Tensor::new(&[0.5f64, 1.2, 0.1, 0.9], &CPU).unwrap();
    let dan = Tensor::new(&[0.7f64, 0.4, 1.5, 0.95], &CPU).unwrap();
    let l: f64 = loss::triplet(&dap, &dan, 0.3).unwrap().to_scalar().unwrap();
    assert!((l - 0.3625).abs() < 1e-12);
    let logits = Tensor::new(&[2.0f64, -1.0, 0.3, -3.0], &CPU).unwrap();
    let l: f64 = loss::bce_with_logits(&logits, &same)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((l - 0.2607830736508661).abs() < 1e-9, "{l}");
}

#[test]
fn contrastive_gradient_matches_pytorch_and_is_finite_at_zero() {
    let a = Var::from_tensor(&t64(&A, (4, 3))).unwrap();
    let b = t64(&B, (4, 3));
    let same = Tensor::new(&SAME, &CPU).unwrap();
    let l =
        loss::contrastive(&distance::euclidean(a.as_tensor(), &b).unwrap(), &same, 1.0).unwrap();
    let g = v1(l.backward().unwrap().get(a.as_tensor()).unwrap());
    let expect = [
        -0.15,
        -0.1,
        0.15,
        -0.0017632353405465757,
        0.0002518907629352251,
        0.0017632353405465757,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ];
    close(&g, &expect, 1e-7);
    // Identical inputs (d = 0) for both a same and a different pair: finite gradients.
    let z = Var::from_tensor(&Tensor::zeros((2, 3), DType::F32, &CPU).unwrap()).unwrap();
    let zeros = Tensor::zeros((2, 3), DType::F32, &CPU).unwrap();
    let s = Tensor::new(&[1f32, 0.0], &CPU).unwrap();
    for kind in [
        Distance::Euclidean,
        Distance::Cosine,
        Distance::SquaredEuclidean,
    ] {
        let l = loss::contrastive(&kind.rowwise(z.as_tensor(), &zeros).unwrap(), &s, 1.0).unwrap();
        let g = v1(l.backward().unwrap().get(z.as_tensor()).unwrap());
        assert!(g.iter().all(|x| x.is_finite()), "{kind:?}: {g:?}");
    }
}

/// Central finite differences of `f` at `x` against candle's gradient.
fn check_grad(x0: &[f64], shape: (usize, usize), f: impl Fn(&Tensor) -> Tensor) {
    let x = Var::from_tensor(&t64(x0, shape)).unwrap();
    let g = v1(f(x.as_tensor())
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap());
    let h = 1e-6;
    for i in 0..x0.len() {
        let mut p = x0.to_vec();
        p[i] += h;
        let mut m = x0.to_vec();
        m[i] -= h;
        let fp: f64 = f(&t64(&p, shape)).to_scalar().unwrap();
        let fm: f64 = f(&t64(&m, shape)).to_scalar().unwrap();
        let fd = (fp - fm) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()),
            "coordinate {i}: finite difference {fd}, gradient {}",
            g[i]
        );
    }
}

const E: [f64; 12] = [0.0, 0.1, 0.3, 0.0, 0.2, 0.4, 1.0, 1.0, 0.1, 0.5, 0.9, 0.2];
const LABELS: [u32; 6] = [0, 0, 1, 1, 2, 2];

#[test]
fn losses_match_finite_differences() {
    let b = t64(&B, (4, 3));
    let same = Tensor::new(&SAME, &CPU).unwrap();
    for kind in [
        Distance::Euclidean,
        Distance::Cosine,
        Distance::SquaredEuclidean,
    ] {
        check_grad(&A, (4, 3), |a| {
            loss::contrastive(&kind.rowwise(a, &b).unwrap(), &same, 1.0).unwrap()
        });
    }
    check_grad(&A, (4, 3), |a| {
        loss::contrastive_with(&distance::euclidean(a, &b).unwrap(), &same, 1.5, 0.2).unwrap()
    });
    let n = t64(&B[..], (4, 3)).flip(&[0]);
    check_grad(&A, (4, 3), |a| {
        let n = n.as_ref().unwrap();
        loss::triplet(
            &distance::euclidean(a, &b).unwrap(),
            &distance::euclidean(a, n).unwrap(),
            0.3,
        )
        .unwrap()
    });
    for mining in [Mining::BatchAll, Mining::BatchHard, Mining::SemiHard] {
        check_grad(&E, (6, 2), |e| {
            loss::mined_triplet(e, &LABELS, 0.5, Distance::Euclidean, mining)
                .unwrap()
                .loss
        });
    }
}

#[test]
fn mining_matches_reference_loops() {
    let e = t64(&E, (6, 2));
    let r = loss::mined_triplet(&e, &LABELS, 0.5, Distance::Euclidean, Mining::BatchAll).unwrap();
    assert!((r.loss.to_scalar::<f64>().unwrap() - 0.6343831689150152).abs() < 1e-9);
    assert_eq!(r.triplets, 21);
    assert!((r.active_fraction - 21.0 / 24.0).abs() < 1e-6);
    let r = loss::mined_triplet(&e, &LABELS, 0.5, Distance::Euclidean, Mining::BatchHard).unwrap();
    assert!((r.loss.to_scalar::<f64>().unwrap() - 0.8078110952741864).abs() < 1e-9);
    let r = loss::mined_triplet(&e, &LABELS, 0.5, Distance::Euclidean, Mining::SemiHard).unwrap();
    assert!((r.loss.to_scalar::<f64>().unwrap() - 0.34031088054414954).abs() < 1e-9);
    assert_eq!(r.triplets, 10);
}

#[test]
fn losses_check_shapes_and_the_same_convention() {
    let d = Tensor::new(&[0.5f32, 1.0], &CPU).unwrap();
    let e = loss::contrastive(&d, &Tensor::new(&[1f32, 2.0], &CPU).unwrap(), 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("same must be 1.0 (same class) or 0.0"), "{e}");
    assert!(loss::contrastive(&d, &Tensor::new(&[1f32], &CPU).unwrap(), 1.0).is_err());
    assert!(loss::contrastive(&d.unsqueeze(1).unwrap(), &d, 1.0).is_err());
    assert!(loss::contrastive(&d, &Tensor::new(&[1f32, 0.0], &CPU).unwrap(), 0.0).is_err());
    assert!(loss::triplet(&d, &d.narrow(0, 0, 1).unwrap(), 1.0).is_err());
    let e = t64(&E, (6, 2));
    assert!(
        loss::mined_triplet(&e, &LABELS[..5], 0.5, Distance::Euclidean, Mining::BatchAll).is_err()
    );
    // The pair head gives one logit per pair.
    let m = SiameseModel::new(&seed_cnn(1, 28, 28), 1, &CPU).unwrap();
    let x = m.embed(&images(3, 1, 28, 28, 1)).unwrap();
    assert_eq!(
        m.pair_logits(&x, &x.flip(&[0]).unwrap()).unwrap().dims(),
        &[3]
    );
    let _ = x.sum(D::Minus1).unwrap();
}

#[test]
fn the_input_profile_survives_the_model_file_and_bad_references_are_refused() {
    let mut model = SiameseModel::new(&seed_cnn(1, 28, 28), 5, &Device::Cpu).unwrap();
    let x = images(60, 1, 28, 28, 3);
    let (e, norms) = model.embed_with_norms(&x).unwrap();
    assert!(
        e.sub(&model.embed(&x).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            < 1e-6
    );
    let stats = siam_model::ood::image_stats(&x, &model.config().input, &norms).unwrap();
    let p = siam_model::InputProfile::fit(&stats, &e, model.distance_kind(), 1)
        .unwrap()
        .unwrap();
    assert_eq!(p.reference_count, 30);
    model.meta_mut().input_profile = Some(p.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    model.save(&path).unwrap();
    let back = SiameseModel::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta().input_profile.as_ref(), Some(&p));
    assert_eq!(back.fingerprint().unwrap(), model.fingerprint().unwrap());
    // The training images themselves are familiar; a blank image and noise far brighter
    // than anything seen are not.
    let w = back.input_warnings(&x.narrow(0, 0, 4).unwrap()).unwrap();
    assert_eq!(w.len(), 4);
    assert!(w.iter().filter(|w| !w.is_empty()).count() <= 1, "{w:?}");
    let blank = Tensor::full(-0.286f32 / 0.353, (1, 1, 28, 28), &Device::Cpu).unwrap();
    let w = back.input_warnings(&blank).unwrap();
    assert!(w[0].iter().any(|w| w.kind == "intensity-spread"), "{w:?}");
    // A declared reference that is missing or misshapen names the file.
    let meta_only = siam_model::read_model_meta(&path).unwrap();
    assert_eq!(meta_only.input_profile.unwrap().reference_count, 30);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    for bad in ["missing", "shape"] {
        if bad == "missing" {
            tensors.remove(siam_model::ood::REFERENCE_TENSOR);
        } else {
            tensors.insert(
                siam_model::ood::REFERENCE_TENSOR.into(),
                Tensor::zeros((29, 16), DType::F32, &Device::Cpu).unwrap(),
            );
        }
        let q = dir.path().join(format!("{bad}.safetensors"));
        safetensors::serialize_to_file(tensors.iter(), Some(meta.clone()), &q).unwrap();
        let err = SiameseModel::load(&q, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{bad}.safetensors")), "{err}");
        assert!(err.contains(siam_model::ood::REFERENCE_TENSOR), "{err}");
    }
}
