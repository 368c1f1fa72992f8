//! siam-train on the embedded fixtures: config errors, determinism, exact resume, the NaN
//! stop, early stopping and the checkpoint policy. Runs are tiny to keep the suite fast.

mod diagnose;
mod finetune;
mod fuzz_replay;

use std::path::Path;

use siam_model::{EncoderConfig, SiameseModel};
use siam_train::config::{LossConfig, OptimizerConfig, ScheduleKind};
use siam_train::{Event, TrainConfig, TrainError, TrainOptions, resume, train};

fn tiny() -> TrainConfig {
    let mut c = TrainConfig::preset("quick").unwrap();
    c.data.limit_per_class = Some(40);
    c.model.encoder = EncoderConfig::SeedCnn { embedding_dim: 16 };
    c.batch_size = 8;
    c.sampler = siam_data::SamplerConfig::Pk { p: 4, k: 2 };
    c.epochs = 2;
    c.steps_per_epoch = 4;
    c.log_every = 2;
    c.schedule.warmup_steps = 2;
    c.validation.pairs = 100;
    c.validation.test_pairs = 200;
    c
}

/// `edit` appended to `base`'s TOML is refused with an error naming `key`.
fn assert_edit_names_key(base: &TrainConfig, edit: &str, key: &str) {
    let text = format!("{}\n{edit}", base.to_toml());
    let e = TrainConfig::from_toml(&text, Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(key), "{key}: {e}");
}

fn quiet() -> impl FnMut(Event<'_>) {
    |_| {}
}

/// metrics.jsonl without the timing fields.
fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("pairs_per_s");
            o.remove("eta_s");
            o.remove("train_s");
            v
        })
        .collect()
}

fn weights(p: &Path) -> Vec<f32> {
    let m = SiameseModel::load(p, &candle_core::Device::Cpu).unwrap();
    let data = m.varmap().data().lock().unwrap();
    let mut names: Vec<_> = data.keys().cloned().collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            data[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn config_errors_name_the_key() {
    let p = Path::new("run.toml");
    let text = tiny().to_toml();
    assert_eq!(TrainConfig::from_toml(&text, p).unwrap(), tiny());
    let e = TrainConfig::from_toml(&text.replace("log-every", "log-evry"), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("run.toml") && e.contains("log-evry"), "{e}");
    let e = TrainConfig::from_toml(&text.replace("epochs = 2", "epochs = \"two\""), p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("epochs"), "{e}");
    let mut c = tiny();
    c.loss = LossConfig::Contrastive {
        margin: 0.0,
        pos_margin: 0.0,
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("loss.margin")
    );
    let mut c = tiny();
    c.sampler = siam_data::SamplerConfig::default();
    c.batch_size = 1;
    assert!(c.validate().unwrap_err().to_string().contains("batch-size"));
    let mut c = tiny();
    c.loss = LossConfig::Triplet {
        margin: 0.2,
        mining: Default::default(),
    };
    c.sampler = siam_data::SamplerConfig::default();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("sampler.kind")
    );
    assert!(
        TrainConfig::preset("nope")
            .unwrap_err()
            .to_string()
            .contains("known: default, unseen, fast, seed, quick, convnet, resnet")
    );
    // A class split leaving one training class is an error; a P×K batch asking for more
    // classes than the data has is capped, and the run says so and records it.
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny();
    c.data.class_split = Some(siam_train::config::ClassSplit {
        validation: siam_data::split::Holdout::Count(2),
        test: siam_data::split::Holdout::Count(7),
    });
    let e = train(
        &c,
        &dir.path().join("b"),
        &TrainOptions::default(),
        &mut quiet(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("1 for training"), "{e}");
    let mut c = tiny();
    c.data.holdout_classes = Some(siam_data::split::Holdout::Count(3));
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("data.class-split")
    );
    let mut c = tiny();
    c.sampler = siam_data::SamplerConfig::Pk { p: 11, k: 2 };
    let mut notes = Vec::new();
    let run = dir.path().join("capped");
    train(&c, &run, &TrainOptions::default(), &mut |e| {
        if let siam_train::Event::Note(n) = e {
            notes.push(n.to_string());
        }
    })
    .unwrap();
    assert_eq!(
        notes,
        ["sampler.p = 11 capped at 10: the training set has 10 classes with two or more images"]
    );
    let resolved = TrainConfig::from_file(&run.join("config.toml")).unwrap();
    assert_eq!(
        resolved.sampler,
        siam_data::SamplerConfig::Pk { p: 10, k: 2 }
    );
}

#[test]
fn a_run_fills_its_folder_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut events = 0;
    let s = train(&tiny(), &run, &TrainOptions::default(), &mut |_| {
        events += 1
    })
    .unwrap();
    for f in [
        "config.toml",
        "metrics.jsonl",
        "model.safetensors",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    assert!(events > 5);
    assert_eq!(s.steps, 8);
    let m = SiameseModel::load(&s.model, &candle_core::Device::Cpu).unwrap();
    assert!(m.meta().threshold.is_some() && m.meta().distance_quantiles.is_some());
    // Even 8 tiny steps beat chance on the test pairs.
    assert!(
        s.test.verification.roc_auc > 0.6,
        "{:?}",
        s.test.verification
    );
    // The resolved config can be read back, with the computed normalisation.
    let back = TrainConfig::from_file(&run.join("config.toml")).unwrap();
    assert!(back.data.mean.is_some());
    // An existing run folder is never overwritten.
    let e = train(&tiny(), &run, &TrainOptions::default(), &mut quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
}

#[test]
fn same_seed_same_metrics_and_exact_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny();
    cfg.sampler = siam_data::SamplerConfig::default(); // pairs, with augmentation
    cfg.augment = siam_data::AugmentConfig {
        hflip: true,
        rotate_degrees: 10.0,
        crop_padding: 2,
        ..Default::default()
    };
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let sa = train(&cfg, &a, &TrainOptions::default(), &mut quiet()).unwrap();
    assert!(
        sa.train_s > 0.0 && sa.train_s <= sa.wall_s,
        "{} {}",
        sa.train_s,
        sa.wall_s
    );
    train(&cfg, &b, &TrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(metrics(&a), metrics(&b));
    assert_eq!(
        weights(&a.join("model.safetensors")),
        weights(&b.join("model.safetensors"))
    );
    // Interrupted mid-epoch 2 (after step 6), then resumed: identical to the uninterrupted run.
    let stop = TrainOptions {
        stop_after: Some(6),
        ..Default::default()
    };
    let e = train(&cfg, &c, &stop, &mut quiet()).unwrap_err();
    assert!(matches!(e, TrainError::Interrupted { step: 6, .. }), "{e}");
    let s = resume(&c, &TrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(s.steps, 8);
    assert_eq!(metrics(&a), metrics(&c));
    // The training clock runs on across the resume: validation records carry it, rising, and
    // the summary's is at least the first epoch's (four steps, where the resumed process ran
    // two).
    let clocks: Vec<f64> = std::fs::read_to_string(c.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "validation")
        .map(|v| v["train_s"].as_f64().unwrap())
        .collect();
    assert_eq!(clocks.len(), 2, "{clocks:?}");
    assert!(clocks[0] > 0.0 && clocks[1] >= clocks[0], "{clocks:?}");
    assert!(s.train_s >= clocks[1], "{} {clocks:?}", s.train_s);
    assert_eq!(
        weights(&a.join("model.safetensors")),
        weights(&c.join("model.safetensors"))
    );
    // A different seed gives a different run.
    let mut other = cfg.clone();
    other.seed = 7;
    train(
        &other,
        &dir.path().join("d"),
        &TrainOptions::default(),
        &mut quiet(),
    )
    .unwrap();
    assert_ne!(metrics(&a), metrics(&dir.path().join("d")));
}

#[test]
fn a_diverging_run_stops_with_the_step_and_a_cause() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny();
    cfg.optimizer = OptimizerConfig::Sgd {
        lr: 1e30,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    cfg.schedule.warmup_steps = 0;
    let e = train(
        &cfg,
        &dir.path().join("nan"),
        &TrainOptions::default(),
        &mut quiet(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TrainError::Diverged(_)), "{msg}");
    assert!(
        msg.contains("step ") && msg.contains("learning rate") && msg.contains("checkpoint"),
        "{msg}"
    );
    // The log says how the run ended, and `diagnose` reads it as a non-finite finding.
    let h = siam_train::diagnose::read_history(&dir.path().join("nan"), Some(&cfg)).unwrap();
    assert_eq!(h.diverged.as_deref(), Some(msg.as_str()));
}

#[test]
fn early_stopping_and_checkpoint_policy() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny();
    cfg.epochs = 5;
    cfg.steps_per_epoch = 2;
    // A learning rate too small to change anything: the metric never improves.
    cfg.optimizer = OptimizerConfig::Adamw {
        lr: 1e-30,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    };
    cfg.schedule.kind = ScheduleKind::Constant;
    cfg.validation.patience = Some(2);
    cfg.checkpoint.keep_last = 1;
    let run = dir.path().join("es");
    let mut stopped = None;
    let s = train(&cfg, &run, &TrainOptions::default(), &mut |e| {
        if let Event::EarlyStop { step, best_step } = e {
            stopped = Some((step, best_step));
        }
    })
    .unwrap();
    assert_eq!(
        stopped,
        Some((6, 2)),
        "best at epoch 1, two more validations without improvement"
    );
    assert_eq!(s.steps, 6);
    // Kept: the last checkpoint and the best model's.
    let names: Vec<String> = siam_train::trainer::checkpoints(&run)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["step-00000002.safetensors", "step-00000006.safetensors"]
    );
}

#[test]
fn the_guide_config_parses() {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/guide.md"))
            .unwrap();
    let block = guide
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let c = TrainConfig::from_toml(block, Path::new("docs/guide.md")).unwrap();
    assert_eq!(c.data.source, "photos");
    assert_eq!(c.validation.patience, Some(3));
}

/// Every batch loss trains a P×K run to finite figures; the proxy losses keep their class
/// proxies in the checkpoints (trained: they move between checkpoints), not in the model file,
/// and an interrupted run resumes to exactly the uninterrupted one.
#[test]
fn batch_losses_train_and_proxies_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for loss in [
        LossConfig::MultiSimilarity {
            alpha: 2.0,
            beta: 50.0,
            base: 0.5,
            epsilon: 0.1,
        },
        LossConfig::NtXent { temperature: 0.1 },
        LossConfig::SupCon { temperature: 0.1 },
        LossConfig::Cosface {
            margin: 0.35,
            scale: 30.0,
        },
        LossConfig::Arcface {
            margin: 0.5,
            scale: 30.0,
        },
    ] {
        let name = loss.kind();
        let mut cfg = tiny();
        cfg.model.normalize = true;
        cfg.loss = loss.clone();
        let full = dir.path().join(format!("{name}-full"));
        let s = train(&cfg, &full, &TrainOptions::default(), &mut quiet()).unwrap();
        assert!(s.test.verification.roc_auc.is_finite(), "{name}");
        assert!(
            metrics(&full)
                .iter()
                .all(|r| r["loss"].as_f64().is_none_or(f64::is_finite)),
            "{name}"
        );
        if !loss.has_proxies() {
            continue;
        }
        let tensors = |p: &Path| {
            let bytes = std::fs::read(p).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            st.names().into_iter().map(String::from).collect::<Vec<_>>()
        };
        assert!(
            !tensors(&full.join("model.safetensors"))
                .iter()
                .any(|n| n.contains("prox")),
            "{name}: proxies in the model file"
        );
        let ckpts = siam_train::trainer::checkpoints(&full);
        let proxies = |p: &Path| {
            let t = candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
            t["loss.proxies"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_ne!(
            proxies(&ckpts[0]),
            proxies(ckpts.last().unwrap()),
            "{name}: the proxies did not train"
        );
        let cut = dir.path().join(format!("{name}-cut"));
        let stop = TrainOptions {
            stop_after: Some(5),
            ..Default::default()
        };
        assert!(matches!(
            train(&cfg, &cut, &stop, &mut quiet()).unwrap_err(),
            TrainError::Interrupted { step: 5, .. }
        ));
        resume(&cut, &TrainOptions::default(), &mut quiet()).unwrap();
        assert_eq!(metrics(&full), metrics(&cut), "{name}");
        assert_eq!(
            weights(&full.join("model.safetensors")),
            weights(&cut.join("model.safetensors")),
            "{name}"
        );
    }
}

/// Two-view self-supervised training on the fixtures: alone (weight 1, labels unused by the
/// loss), mixed with a supervised loss, and with views of half the images. Each run trains (finite losses, a test figure), the
/// term changes what is learned, and an interrupted two-view run resumes exactly (the second
/// view's randomness is a function of the sample, as the first's).
#[test]
fn two_view_self_supervised_runs_train_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = tiny();
    plain.model.normalize = true;
    let one = dir.path().join("one-view");
    train(&plain, &one, &TrainOptions::default(), &mut quiet()).unwrap();
    for (weight, both, projection_dim, view_fraction) in [
        (0.5, false, 0, 1.0),
        (1.0, false, 0, 1.0),
        (0.5, true, 0, 1.0),
        (0.5, false, 8, 1.0),
        (0.5, true, 0, 0.5),
    ] {
        let mut cfg = plain.clone();
        cfg.self_supervised = Some(siam_train::config::SelfSupervised {
            weight,
            temperature: 0.2,
            view_fraction,
            augment: None,
            supervise_both_views: both,
            projection_dim,
        });
        let weight = match (both, projection_dim) {
            (true, _) if view_fraction < 1.0 => format!("{weight}-both-views-{view_fraction}"),
            (true, _) => format!("{weight}-both"),
            (_, 0) => weight.to_string(),
            (_, p) => format!("{weight}-projection-{p}"),
        };
        let full = dir.path().join(format!("ssl-{weight}"));
        let s = train(&cfg, &full, &TrainOptions::default(), &mut quiet()).unwrap();
        assert!(s.test.verification.roc_auc.is_finite());
        let losses: Vec<f64> = metrics(&full)
            .iter()
            .filter_map(|r| r["loss"].as_f64())
            .collect();
        assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite() && *l > 0.0));
        assert_ne!(
            weights(&one.join("model.safetensors")),
            weights(&full.join("model.safetensors")),
            "weight {weight}: the self-supervised term changed nothing"
        );
        let text = std::fs::read_to_string(full.join("config.toml")).unwrap();
        assert!(text.contains("[self-supervised]"), "{text}");
        // The fraction is written when it is not the default of 1.
        assert_eq!(
            text.contains("view-fraction = 0.5"),
            view_fraction < 1.0,
            "{text}"
        );
        let cut = dir.path().join(format!("ssl-{weight}-cut"));
        let stop = TrainOptions {
            stop_after: Some(3),
            ..Default::default()
        };
        assert!(train(&cfg, &cut, &stop, &mut quiet()).is_err());
        resume(&cut, &TrainOptions::default(), &mut quiet()).unwrap();
        assert_eq!(metrics(&full), metrics(&cut), "weight {weight}");
        assert_eq!(
            weights(&full.join("model.safetensors")),
            weights(&cut.join("model.safetensors")),
        );
    }
    // Labelled second views train the classes too: another model than the first views alone.
    assert_ne!(
        weights(&dir.path().join("ssl-0.5/model.safetensors")),
        weights(&dir.path().join("ssl-0.5-both/model.safetensors")),
        "supervise-both-views changed nothing"
    );
    // The projection head trains, resumes exactly (the loop above) and changes the model.
    assert_ne!(
        weights(&dir.path().join("ssl-0.5/model.safetensors")),
        weights(&dir.path().join("ssl-0.5-projection-8/model.safetensors")),
        "projection-dim changed nothing"
    );
    // Views of half the images: another model than views of all of them.
    assert_ne!(
        weights(&dir.path().join("ssl-0.5-both/model.safetensors")),
        weights(&dir.path().join("ssl-0.5-both-views-0.5/model.safetensors")),
        "view-fraction changed nothing"
    );
    // Bad settings name the key.
    for (edit, key) in [
        (
            "[self-supervised]\nweight = 0.0\n",
            "self-supervised.weight",
        ),
        (
            "[self-supervised]\nweight = 0.5\ntemperature = -1.0\n",
            "self-supervised.temperature",
        ),
        (
            "[self-supervised]\nweight = 0.5\n[self-supervised.augment]\nnoise-std = 3.0\n",
            "self-supervised.augment.noise-std",
        ),
        (
            "[self-supervised]\nweight = 1.0\nsupervise-both-views = true\n",
            "self-supervised.supervise-both-views",
        ),
        (
            "[self-supervised]\nweight = 0.5\nview-fraction = 0.0\n",
            "self-supervised.view-fraction",
        ),
        (
            "[self-supervised]\nweight = 0.5\nview-fraction = 1.5\n",
            "self-supervised.view-fraction",
        ),
        ("[self-supervised]\nweight = 0.5\nwieght = 1.0\n", "wieght"),
    ] {
        assert_edit_names_key(&plain, edit, key);
    }
}

/// The uniformity term on the fixtures: it trains (finite losses), changes what is learned,
/// is written to the run's config, resumes exactly, and bad settings name the key.
#[test]
fn the_uniformity_term_trains_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = tiny();
    plain.model.normalize = true;
    let one = dir.path().join("plain");
    train(&plain, &one, &TrainOptions::default(), &mut quiet()).unwrap();
    let mut cfg = plain.clone();
    cfg.uniformity_term = Some(siam_train::config::UniformityTerm {
        weight: 1.0,
        t: 2.0,
    });
    let full = dir.path().join("uniform");
    let s = train(&cfg, &full, &TrainOptions::default(), &mut quiet()).unwrap();
    assert!(s.test.verification.roc_auc.is_finite());
    let losses: Vec<f64> = metrics(&full)
        .iter()
        .filter_map(|r| r["loss"].as_f64())
        .collect();
    assert!(!losses.is_empty() && losses.iter().all(|l| l.is_finite()));
    assert_ne!(
        weights(&one.join("model.safetensors")),
        weights(&full.join("model.safetensors")),
        "the uniformity term changed nothing"
    );
    let text = std::fs::read_to_string(full.join("config.toml")).unwrap();
    assert!(
        text.contains("[uniformity-term]\nweight = 1.0\nt = 2.0"),
        "{text}"
    );
    let cut = dir.path().join("uniform-cut");
    let stop = TrainOptions {
        stop_after: Some(3),
        ..Default::default()
    };
    assert!(train(&cfg, &cut, &stop, &mut quiet()).is_err());
    resume(&cut, &TrainOptions::default(), &mut quiet()).unwrap();
    assert_eq!(metrics(&full), metrics(&cut));
    assert_eq!(
        weights(&full.join("model.safetensors")),
        weights(&cut.join("model.safetensors")),
    );
    for (edit, key) in [
        (
            "[uniformity-term]\nweight = 0.0\n",
            "uniformity-term.weight",
        ),
        (
            "[uniformity-term]\nweight = 1.0\nt = -2.0\n",
            "uniformity-term.t",
        ),
        ("[uniformity-term]\nweight = 1.0\ntee = 2.0\n", "tee"),
    ] {
        assert_edit_names_key(&plain, edit, key);
    }
    let mut pairs = cfg.clone();
    pairs.sampler = siam_data::SamplerConfig::Pairs {
        positive_fraction: 0.5,
    };
    let e = pairs.validate().unwrap_err().to_string();
    assert!(
        e.contains("sampler.kind") && e.contains("uniformity"),
        "{e}"
    );
}

/// The recipes docs/BENCHMARKS.md runs parse and validate as they are committed.
#[test]
fn the_benchmark_recipes_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/recipes");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            TrainConfig::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 5, "{n} recipes");
}

/// `[contrastive-term]` adds `weight ×` the all-pairs contrastive loss to a batch loss: the
/// first step's logged loss (the initial weights, the same batch in every run) grows linearly
/// with the weight, by a positive term below margin²; the term changes what is learned; a
/// positive margin lowers it; bad settings name the key.
#[test]
fn the_contrastive_term_adds_to_a_batch_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = tiny();
    base.model.normalize = true;
    base.log_every = 1;
    base.loss = LossConfig::Cosface {
        margin: 0.35,
        scale: 30.0,
    };
    let first_loss = |cfg: &TrainConfig, name: &str| {
        let out = dir.path().join(name);
        train(cfg, &out, &TrainOptions::default(), &mut quiet()).unwrap();
        let m = metrics(&out);
        let step1 = m
            .iter()
            .find(|r| r["kind"] == "step" && r["step"] == 1)
            .unwrap();
        (
            step1["loss"].as_f64().unwrap(),
            weights(&out.join("model.safetensors")),
        )
    };
    let (l0, w0) = first_loss(&base, "plain");
    let with = |weight: f64| {
        let mut c = base.clone();
        c.contrastive_term = Some(siam_train::config::ContrastiveTerm {
            weight,
            margin: 1.0,
            pos_margin: 0.0,
        });
        c
    };
    let (l1, w1) = first_loss(&with(1.0), "term-1");
    let (l3, _) = first_loss(&with(3.0), "term-3");
    let term = l1 - l0;
    assert!(term > 0.0 && term < 1.0, "contrastive term {term}");
    assert!(
        ((l3 - l0) - 3.0 * term).abs() < 1e-4 * l3.abs().max(1.0),
        "not linear in the weight: {l0} {l1} {l3}"
    );
    assert_ne!(w0, w1, "the term changed nothing");
    let text = with(1.0).to_toml();
    assert!(text.contains("[contrastive-term]"), "{text}");
    assert!(!text.contains("pos-margin"), "{text}");
    // A positive margin stops pulling same-class pairs that are already close: (d − p)₊² < d²
    // for every positive pair, so the first step's loss falls, and the key round-trips.
    let mut loose = with(1.0);
    loose.contrastive_term.as_mut().unwrap().pos_margin = 0.9;
    let (lp, _) = first_loss(&loose, "term-loose");
    assert!(
        lp < l1 && lp > l0,
        "pos-margin 0.9: {lp} (plain {l0}, term {l1})"
    );
    let text = loose.to_toml();
    assert!(text.contains("pos-margin = 0.9"), "{text}");
    assert_eq!(
        TrainConfig::from_toml(&text, Path::new("x.toml")).unwrap(),
        loose
    );
    for (edit, key) in [
        (
            "[contrastive-term]\nweight = 0.0\n",
            "contrastive-term.weight",
        ),
        (
            "[contrastive-term]\nweight = 1.0\nmargin = -1.0\n",
            "contrastive-term.margin",
        ),
        (
            "[contrastive-term]\nweight = 1.0\nmargin = 1.0\npos-margin = 1.0\n",
            "contrastive-term.pos-margin",
        ),
    ] {
        let text = format!("{}\n{edit}", base.to_toml());
        let e = TrainConfig::from_toml(&text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
    let mut contrastive = with(1.0);
    contrastive.loss = LossConfig::Contrastive {
        margin: 1.0,
        pos_margin: 0.0,
    };
    let e = TrainConfig::from_toml(&contrastive.to_toml(), Path::new("x.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("contrastive-term"), "{e}");
}

/// `lr_find` on the fixtures with the `fast` recipe suggests a rate within a factor of ten of
/// the recipe's own (1e-3), over a loss that falls; `write_lr_find` writes the three files and
/// refuses a folder that holds anything (a run folder), leaving it as it was.
#[test]
fn lr_find_suggests_a_rate_near_the_recipes_own_and_writes_only_a_new_folder() {
    let cfg = TrainConfig::preset("fast").unwrap();
    let opts = siam_train::LrFindOptions {
        steps: 60,
        ..Default::default()
    };
    let r = siam_train::lr_find(&cfg, &opts).unwrap();
    assert_eq!(r.points.len(), 60, "{:?}", r.stopped);
    assert!((r.points[0].lr - 1e-7).abs() < 1e-12 && (r.points[59].lr - 1.0).abs() < 1e-9);
    let s = r.suggested.expect("a suggestion");
    assert!((1e-4..=1e-2).contains(&s), "suggested {s}");
    assert!(r.points.last().unwrap().smoothed < r.points[0].smoothed);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lr");
    let files = siam_train::write_lr_find(&r, &out).unwrap();
    assert_eq!(files.len(), 3);
    let back: siam_train::LrFind =
        serde_json::from_str(&std::fs::read_to_string(out.join("lr-find.json")).unwrap()).unwrap();
    // JSON keeps every figure to within its last digit.
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
    assert_eq!(back.points.len(), r.points.len());
    assert!(back.points.iter().zip(&r.points).all(|(a, b)| {
        close(a.lr, b.lr) && close(a.loss, b.loss) && close(a.smoothed, b.smoothed)
    }));
    assert!(close(back.suggested.unwrap(), s));
    assert!(
        std::fs::read(out.join("lr-find.png"))
            .unwrap()
            .starts_with(b"\x89PNG")
    );
    assert!(
        std::fs::read_to_string(out.join("lr-find.svg"))
            .unwrap()
            .contains("<svg")
    );
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.toml"), "x").unwrap();
    let e = siam_train::write_lr_find(&r, &run).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&run).unwrap().collect();
    assert_eq!(left.len(), 1);
}
