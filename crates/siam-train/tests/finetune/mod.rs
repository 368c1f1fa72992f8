//! A ResNet run from a pretrained torchvision backbone: the fixture image folder read as RGB,
//! the narrow torchvision ResNet-18 of `fixtures/models/resnet/` as the starting point.

use std::path::{Path, PathBuf};

use siam_model::{EncoderConfig, ResnetConfig, SiameseModel, Stem};
use siam_train::{Event, TrainConfig, train};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p)
}

/// A small colour image folder: 16 fixture images a class (channel-first pixels), each
/// tinted by its own colour (a per-image weight for each channel), saved as RGB PNGs.
fn colour_folder(root: &Path) {
    let (_, gray) =
        siam_train::data::eval_set("fixtures", &siam_model::InputSpec::fashion_mnist()).unwrap();
    let by = gray.indices_by_class();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (c, idx) in by.iter().enumerate() {
        for (k, &i) in idx[..16].iter().enumerate() {
            let tint = [
                (c * 37 + k * 11) % 100,
                (c * 53 + k * 7) % 100,
                (c * 17 + k * 29) % 100,
            ];
            for t in tint {
                pixels.extend(
                    gray.image(i)
                        .iter()
                        .map(|&v| ((u32::from(v) * (40 + t as u32)) / 140) as u8),
                );
            }
            labels.push(c as u32);
        }
    }
    let shape = siam_data::ImageShape {
        channels: 3,
        height: 28,
        width: 28,
    };
    let set = siam_data::ImageSet::new(pixels, labels, shape, gray.class_names().to_vec()).unwrap();
    for i in 0..set.len() {
        let class = set.class_names()[set.label(i) as usize].replace('/', "-");
        std::fs::create_dir_all(root.join(&class)).unwrap();
        siam_data::folder::save_png(&set, i, root.join(&class).join(format!("{i:03}.png")))
            .unwrap();
    }
}

fn resnet_run(root: &Path, pretrained: Option<&Path>) -> TrainConfig {
    let mut c = super::tiny();
    c.data.source = root.display().to_string();
    c.data.val_fraction = 0.25;
    c.data.color = siam_data::ColorMode::Rgb;
    c.model.encoder = EncoderConfig::Resnet18(ResnetConfig {
        widths: vec![4, 8, 16, 32],
        stem: Stem::Imagenet,
        hidden: 0,
        embedding_dim: 16,
        pretrained: pretrained.map(|p| p.display().to_string()),
    });
    c.epochs = 1;
    c.steps_per_epoch = 3;
    c
}

/// Every backbone weight of a model, by name.
fn backbone(m: &SiameseModel) -> Vec<(String, Vec<f32>)> {
    let data = m.varmap().data().lock().unwrap();
    let mut v: Vec<(String, Vec<f32>)> = data
        .iter()
        .filter(|(k, _)| k.starts_with("encoder.") && !k.starts_with("encoder.head."))
        .map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_resnet_trains_from_a_pretrained_torchvision_backbone_on_rgb_images() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of the state dict, removed after training: the model file must not need it.
    let weights = dir.path().join("resnet18.safetensors");
    std::fs::copy(
        repo("fixtures/models/resnet/resnet18.safetensors"),
        &weights,
    )
    .unwrap();
    let root = dir.path().join("colour");
    colour_folder(&root);
    let cfg = resnet_run(&root, Some(&weights));
    let mut notes = Vec::new();
    let s = train(
        &cfg,
        &dir.path().join("run"),
        &Default::default(),
        &mut |e| {
            if let Event::Note(n) = e {
                notes.push(n.to_string());
            }
        },
    )
    .unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("pretrained backbone from") && n.contains("tensors loaded")),
        "{notes:?}"
    );
    std::fs::remove_file(&weights).unwrap();
    let trained = SiameseModel::load(&s.model, &candle_core::Device::Cpu).unwrap();
    assert_eq!(trained.config().input.channels, 3);
    assert!(s.test.verification.roc_auc.is_finite());
    // The run started from the file, not from its seed: a few steps later the backbone is
    // far closer to torchvision's weights than a run from the seed alone is.
    let tv = candle_core::safetensors::load(
        repo("fixtures/models/resnet/resnet18.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let distance = |m: &SiameseModel| -> f32 {
        backbone(m)
            .iter()
            .filter(|(k, _)| k.ends_with(".weight"))
            .map(|(k, v)| {
                let t: Vec<f32> = tv[&k["encoder.".len()..]]
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                v.iter()
                    .zip(&t)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
            })
            .sum::<f32>()
            .sqrt()
    };
    let scratch = train(
        &resnet_run(&root, None),
        &dir.path().join("scratch"),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    let scratch = SiameseModel::load(&scratch.model, &candle_core::Device::Cpu).unwrap();
    let (d_pre, d_scratch) = (distance(&trained), distance(&scratch));
    assert!(d_pre * 4.0 < d_scratch, "{d_pre} vs {d_scratch}");
}

#[test]
fn a_pretrained_file_that_does_not_fit_fails_before_the_run_folder_exists() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("colour");
    colour_folder(&root);
    let mut cfg = resnet_run(
        &root,
        Some(&repo("fixtures/models/resnet/resnet34.safetensors")),
    );
    let run = dir.path().join("run");
    let e = train(&cfg, &run, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("resnet34.safetensors") && e.contains("nothing was loaded"),
        "{e}"
    );
    assert!(!run.exists());
    cfg = resnet_run(&root, Some(&dir.path().join("absent.safetensors")));
    let e = train(&cfg, &run, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
    assert!(!run.exists());
    // A timm name: without the `hub` feature, an error that says how to get it; with it, an
    // absent name is not in the cache (and, offline, not downloadable).
    if let EncoderConfig::Resnet18(r) = &mut cfg.model.encoder {
        r.pretrained = Some("timm:resnet18.no_such_weights".into());
    }
    let e = train(&cfg, &run, &Default::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("timm:resnet18.no_such_weights"), "{e}");
    if cfg!(not(feature = "hub")) {
        assert!(e.contains("`hub` feature"), "{e}");
    }
    assert!(!run.exists());
    assert_eq!(
        siam_train::pretrained_file("w/resnet18.safetensors").unwrap(),
        PathBuf::from("w/resnet18.safetensors")
    );
    // --pretrained on an encoder that is not a ResNet is a config error naming the encoder.
    let mut c = TrainConfig::preset("quick").unwrap();
    let e = c.set_pretrained("x.safetensors").unwrap_err().to_string();
    assert!(e.contains("seed-cnn") || e.contains("convnet"), "{e}");
}

/// Freezing a backbone that no pretrained file filled is noted in the log, with the settings
/// that train from scratch; with a pretrained file, or without the freeze, there is no note.
#[test]
fn a_frozen_backbone_without_pretrained_weights_is_noted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("colour");
    colour_folder(&root);
    let weights = repo("fixtures/models/resnet/resnet18.safetensors");
    let freeze = |epochs| siam_train::config::Finetune {
        backbone_lr_scale: 0.1,
        freeze_backbone_epochs: epochs,
    };
    for (name, pretrained, epochs, noted) in [
        ("scratch-frozen", None, 1, true),
        ("pretrained-frozen", Some(weights.as_path()), 1, false),
        ("scratch-unfrozen", None, 0, false),
    ] {
        let mut cfg = resnet_run(&root, pretrained);
        cfg.epochs = 2;
        cfg.steps_per_epoch = 1;
        cfg.finetune = Some(freeze(epochs));
        let mut notes = Vec::new();
        train(
            &cfg,
            &dir.path().join(name),
            &Default::default(),
            &mut |e| {
                if let Event::Note(n) = e {
                    notes.push(n.to_string());
                }
            },
        )
        .unwrap();
        let found = notes.iter().any(|n| {
            n.contains("freezes a backbone drawn at random")
                && n.contains("finetune.freeze-backbone-epochs = 0")
        });
        assert_eq!(found, noted, "{name}: {notes:?}");
    }
}

/// `[finetune]` with one frozen epoch of two: the checkpoint at the end of epoch 1 holds the
/// pretrained backbone exactly — weights and BatchNorm running statistics — while the head has
/// learnt; epoch 2 then trains the backbone (at a tenth of the rate).
#[test]
fn frozen_backbone_epochs_leave_the_backbone_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("colour");
    colour_folder(&root);
    let weights = repo("fixtures/models/resnet/resnet18.safetensors");
    let mut cfg = resnet_run(&root, Some(&weights));
    cfg.epochs = 2;
    cfg.checkpoint.keep_last = 4;
    cfg.finetune = Some(siam_train::config::Finetune {
        backbone_lr_scale: 0.1,
        freeze_backbone_epochs: 1,
    });
    let run = dir.path().join("run");
    train(&cfg, &run, &Default::default(), &mut |_| {}).unwrap();
    let tv = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let ckpt = |step: usize| {
        candle_core::safetensors::load(
            run.join(format!("checkpoints/step-{step:08}.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let values =
        |t: &candle_core::Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let (e1, e2) = (ckpt(3), ckpt(6));
    let mut backbone = 0;
    for (k, t) in &e1 {
        let Some(name) = k.strip_prefix("model.encoder.") else {
            continue;
        };
        if name.starts_with("head.") {
            continue;
        }
        backbone += 1;
        assert_eq!(values(t), values(&tv[name]), "{name} moved while frozen");
        assert_ne!(
            values(&e2[k]),
            values(t),
            "{name} did not train after the frozen epoch"
        );
    }
    assert_eq!(backbone, 100, "backbone tensors compared");
    let head = "model.encoder.head.out.weight";
    assert_ne!(values(&e1[head]), values(&e2[head]));
    // Exact resume across the end of the frozen epoch: cut inside it and after it.
    for cut_at in [2, 4] {
        let cut = dir.path().join(format!("cut-{cut_at}"));
        let stop = siam_train::TrainOptions {
            stop_after: Some(cut_at),
            ..Default::default()
        };
        assert!(train(&cfg, &cut, &stop, &mut |_| {}).is_err());
        siam_train::resume(&cut, &Default::default(), &mut |_| {}).unwrap();
        assert_eq!(
            super::metrics(&run),
            super::metrics(&cut),
            "cut at {cut_at}"
        );
        assert_eq!(
            super::weights(&run.join("model.safetensors")),
            super::weights(&cut.join("model.safetensors")),
            "cut at {cut_at}"
        );
    }
    // Bad settings are named.
    let mut bad = cfg.clone();
    bad.finetune = Some(siam_train::config::Finetune {
        backbone_lr_scale: 0.1,
        freeze_backbone_epochs: 2,
    });
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("finetune.freeze-backbone-epochs"), "{e}");
}

/// Standard base64 (the report's data URIs), for the test only.
fn unbase64(s: &str) -> Vec<u8> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = A.iter().position(|&a| a == c).expect("base64 character") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// `siam diagnose` on a colour folder with the ResNet trained on it: a planted copy is found,
/// and the report shows it as a colour thumbnail (3 channels, the tint kept).
#[test]
fn diagnose_shows_colour_images_in_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("colour");
    colour_folder(&root);
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&classes[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::copy(&files[0], classes[0].join("zz-copy.png")).unwrap();
    let cfg = resnet_run(&root, None);
    let s = train(
        &cfg,
        &dir.path().join("run"),
        &Default::default(),
        &mut |_| {},
    )
    .unwrap();
    let opts = siam_train::diagnose::DiagnoseOptions {
        data: root.display().to_string(),
        baselines: false,
        pairs: 200,
        ..Default::default()
    };
    let (diagnosis, _, _) =
        siam_train::diagnose::diagnose(&s.model, &candle_core::Device::Cpu, &opts).unwrap();
    let q = diagnosis.measurements.data_quality.as_ref().unwrap();
    assert!(q.duplicates_same_class >= 1, "{:?}", q.duplicate_list);
    let copy = q
        .duplicate_list
        .iter()
        .find(|d| d.a.contains("zz-copy") || d.b.contains("zz-copy"))
        .expect("the planted copy is listed");
    let html = siam_eval::report::html(&diagnosis, &[]);
    for name in [&copy.a, &copy.b] {
        let uri = &q.thumbnails[name];
        assert!(html.contains(uri.as_str()), "the report shows {name}");
        let png = unbase64(uri.strip_prefix("data:image/png;base64,").unwrap());
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!(img.color(), image::ColorType::Rgb8, "{name}");
        let rgb = img.to_rgb8();
        assert_eq!((rgb.width(), rgb.height()), (28, 28));
        assert!(
            rgb.pixels().any(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2]),
            "{name} lost its colour"
        );
    }
}
