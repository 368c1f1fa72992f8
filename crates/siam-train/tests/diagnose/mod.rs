//! `diagnose` against deliberately broken models trained on the fixtures: each must be flagged
//! with the right kind, and a healthy model must get a clean report. (A module of the train
//! test binary: one test binary per crate.)

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use siam_data::{Normalize, PairSampler, Transform};
use siam_eval::{Kind, Severity};
use siam_model::{Distance, EncoderConfig, InputSpec, ModelConfig, SiameseModel};
use siam_train::config::OptimizerConfig;
use siam_train::diagnose::{DiagnoseOptions, diagnose};
use siam_train::optim::Optimizer;
use siam_train::{TrainConfig, TrainOptions, train};

const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/models/fashion-mnist.safetensors"
);

fn opts(run: Option<&Path>) -> DiagnoseOptions {
    DiagnoseOptions {
        data: "fixtures".into(),
        run: run.map(Path::to_path_buf),
        pairs: 2000,
        seed: 42,
        max_images: 1000,
        baselines: true,
    }
}

fn kinds(model: &Path, run: Option<&Path>) -> (Vec<Kind>, siam_eval::Diagnosis) {
    let (d, _, _) = diagnose(model, &Device::Cpu, &opts(run)).unwrap();
    let k = d
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Info)
        .map(|f| f.kind)
        .collect();
    (k, d)
}

/// The quick recipe (2 × 30 steps of P×K 8×8 on the fixtures), changed by `f`.
fn quick_run(dir: &Path, f: impl FnOnce(&mut TrainConfig)) -> PathBuf {
    let mut c = TrainConfig::preset("quick").unwrap();
    f(&mut c);
    let s = train(&c, dir, &TrainOptions::default(), &mut |_| {}).unwrap();
    s.model
}

#[test]
fn the_shipped_model_is_healthy() {
    let (k, d) = kinds(Path::new(SHIPPED), None);
    assert!(
        k.is_empty(),
        "a healthy model got findings: {:#?}",
        d.findings
    );
    assert!(d.healthy());
    let m = &d.measurements;
    assert!(m.retrieval.precision_at_1 > m.pixels_precision_at_1.unwrap() + 0.03);
    assert!(m.consistency.alone_vs_batch < 1e-5 && m.consistency.asymmetry < 1e-6);
    // The context comes from the model file's training record.
    assert_eq!(m.context.loss.as_deref(), Some("contrastive"));
    assert_eq!(m.context.margin, Some(1.0));
}

/// A hand-written loop with the most common Siamese bug: the contrastive loss is written for
/// "label 1 = dissimilar" but fed `same` (1 = same class). With ten classes the network cannot
/// push every class apart from itself on unseen images; it drives the distances from
/// informative (an untrained encoder) to meaningless, and diagnose names the flipped convention.
#[test]
fn inverted_labels_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let (train_set, _) = siam_train::data::fixtures().unwrap();
    let cfg = ModelConfig {
        encoder: EncoderConfig::SeedCnn { embedding_dim: 32 },
        input: InputSpec::fashion_mnist(),
        normalize: false,
        distance: Distance::Euclidean,
        pair_head: false,
        test_time_flip: false,
    };
    let dev = Device::Cpu;
    let mut model = SiameseModel::new(&cfg, 1, &dev).unwrap();
    let vars: Vec<(String, candle_core::Var)> = {
        let data = model.varmap().data().lock().unwrap();
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut opt = Optimizer::new(
        OptimizerConfig::Adamw {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        vars,
    );
    let sampler = PairSampler::new(&train_set, 64, 0.5, 7).unwrap();
    let t = Transform::eval(Some(Normalize {
        mean: vec![0.286],
        std: vec![0.353],
    }));
    for step in 0..60 {
        let p = sampler.batch(0, step);
        let a = t.tensor(&train_set, &p.a, 0, step, &dev).unwrap();
        let b = t.tensor(&train_set, &p.b, 0, step, &dev).unwrap();
        let e = model
            .forward_t(&Tensor::cat(&[&a, &b], 0).unwrap(), true)
            .unwrap();
        let n = p.a.len();
        let d = model
            .distance(&e.narrow(0, 0, n).unwrap(), &e.narrow(0, n, n).unwrap())
            .unwrap();
        // The bug: "dissimilar" = same.
        let dissimilar: Vec<f32> = p.same.iter().map(|s| 1.0 - s).collect();
        let flipped = Tensor::from_vec(dissimilar, n, &dev).unwrap();
        let loss = siam_model::loss::contrastive(&d, &flipped, 2.0).unwrap();
        opt.step(&loss.backward().unwrap(), 1e-3).unwrap();
    }
    let meta = model.meta_mut();
    meta.threshold = Some(1.0);
    meta.training = Some(serde_json::json!({ "loss": { "kind": "contrastive", "margin": 2.0 } }));
    let path = dir.path().join("inverted.safetensors");
    model.save(&path).unwrap();
    let (k, d) = kinds(&path, None);
    assert_eq!(k.first(), Some(&Kind::InvertedLabels), "{:#?}", d.findings);
    let m = &d.measurements;
    assert!(m.verification.roc_auc < 0.6, "{}", m.verification.roc_auc);
    assert!(m.untrained_roc_auc.unwrap() > m.verification.roc_auc + 0.1);
}

#[test]
fn a_margin_the_unit_sphere_cannot_reach_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let model = quick_run(&dir.path().join("run"), |c| {
        c.set_margin(10.0).unwrap();
    });
    let (k, d) = kinds(&model, Some(&dir.path().join("run")));
    assert!(k.contains(&Kind::MarginScale), "{:#?}", d.findings);
    let f = d
        .findings
        .iter()
        .find(|f| f.kind == Kind::MarginScale)
        .unwrap();
    assert_eq!(f.severity, Severity::Error);
    let suggested = f
        .evidence
        .iter()
        .find(|e| e.name == "suggested-margin")
        .unwrap();
    assert_eq!(suggested.value, 1.0);
    assert!(f.fix.contains("--margin 1"), "{}", f.fix);
}

#[test]
fn a_margin_far_beyond_an_unnormalised_scale_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let model = quick_run(&dir.path().join("run"), |c| {
        c.model.normalize = false;
        c.set_margin(1000.0).unwrap();
    });
    let (k, d) = kinds(&model, Some(&dir.path().join("run")));
    assert!(k.contains(&Kind::MarginScale), "{:#?}", d.findings);
    let f = d
        .findings
        .iter()
        .find(|f| f.kind == Kind::MarginScale)
        .unwrap();
    let suggested = f
        .evidence
        .iter()
        .find(|e| e.name == "suggested-margin")
        .unwrap()
        .value;
    let median = d.measurements.different_median;
    assert!(
        suggested > 0.5 * median && suggested < 2.0 * median,
        "suggested {suggested}, different-pair median {median}"
    );
}

#[test]
fn a_learning_rate_that_collapses_the_space_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = quick_run(&run, |c| c.set_lr(3.0));
    let (k, d) = kinds(&model, Some(&run));
    assert_eq!(k.first(), Some(&Kind::Collapse), "{:#?}", d.findings);
    // The run folder's history is read and drawn.
    let (d2, evidence, history) = diagnose(&model, &Device::Cpu, &opts(Some(&run))).unwrap();
    let h = history.unwrap();
    assert!(!h.steps.is_empty() && !h.validations.is_empty());
    let charts = siam_eval::plot::charts(
        &evidence,
        d2.measurements.context.margin,
        d2.measurements.stored_threshold,
        Some(&h),
        siam_eval::plot::Projection::Pca,
        500,
    )
    .unwrap();
    let names: Vec<&str> = charts.iter().map(|c| c.name).collect();
    assert_eq!(names, ["embedding", "distances", "roc", "training"]);
}

/// BatchNorm whose running statistics were never updated (as when a model is trained with its
/// normalisation kept in batch-statistics mode and exported without them).
#[test]
fn batchnorm_statistics_never_updated_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let path = quick_run(&run, |c| {
        c.model.encoder = EncoderConfig::Convnet {
            channels: vec![8, 16],
            hidden: 0,
            dropout: 0.0,
            embedding_dim: 32,
            pooling: siam_model::Pooling::GlobalAverage,
        };
        c.epochs = 1;
        c.steps_per_epoch = 20;
    });
    // A healthy BatchNorm model first: its statistics were updated, nothing to flag there.
    let (k, d) = kinds(&path, None);
    assert!(!k.contains(&Kind::EvalMode), "{:#?}", d.findings);
    assert_eq!(d.measurements.consistency.batchnorm_layers, 4);
    assert_eq!(d.measurements.consistency.batchnorm_at_init, 0);
    let model = SiameseModel::load(&path, &Device::Cpu).unwrap();
    {
        let data = model.varmap().data().lock().unwrap();
        for (k, v) in data.iter() {
            let fill = if k.ends_with(".running_mean") {
                0.0
            } else if k.ends_with(".running_var") {
                1.0
            } else {
                continue;
            };
            let t = (Tensor::ones(v.dims(), DType::F32, &Device::Cpu).unwrap() * fill).unwrap();
            v.set(&t).unwrap();
        }
    }
    let broken = dir.path().join("stale-bn.safetensors");
    model.save(&broken).unwrap();
    let (k, d) = kinds(&broken, None);
    assert!(k.contains(&Kind::EvalMode), "{:#?}", d.findings);
    assert_eq!(d.measurements.consistency.batchnorm_at_init, 4);
    assert!(d.measurements.consistency.train_eval_shift.unwrap() > 0.0);
}

#[test]
fn nan_weights_are_diagnosed_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = SiameseModel::load(Path::new(SHIPPED), &Device::Cpu).unwrap();
    {
        let data = model.varmap().data().lock().unwrap();
        let v = data.get("encoder.fc.bias").expect("seed CNN has fc.bias");
        let mut vals: Vec<f32> = v.as_tensor().to_vec1().unwrap();
        vals[0] = f32::NAN;
        v.set(&Tensor::from_vec(vals.clone(), vals.len(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let p = dir.path().join("nan.safetensors");
    model.save(&p).unwrap();
    assert!(SiameseModel::load(&p, &Device::Cpu).is_err());
    let (k, d) = kinds(&p, None);
    assert_eq!(k.first(), Some(&Kind::NonFinite), "{:#?}", d.findings);
    assert_eq!(d.measurements.non_finite_weights, ["encoder.fc.bias"]);
    assert_eq!(d.measurements.non_finite_embeddings, 1000);
}

#[test]
fn a_stale_threshold_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = SiameseModel::load(Path::new(SHIPPED), &Device::Cpu).unwrap();
    model.meta_mut().threshold = Some(0.05);
    let p = dir.path().join("stale.safetensors");
    model.save(&p).unwrap();
    let (k, d) = kinds(&p, None);
    assert!(k.contains(&Kind::StaleThreshold), "{:#?}", d.findings);
    // Calling almost everything "different" is also the one-sided verdict of pair-imbalance.
    assert!(k.contains(&Kind::PairImbalance), "{:#?}", d.findings);
    assert!(d.measurements.true_accept_rate < 0.1);
}

/// A real over-specialised run: the quick recipe trained on two of the fixtures' ten classes
/// (T-shirt/top and shirt; a three-way class split holds out three validation and five test
/// classes). Training separates its two classes better than the untrained encoder does, and on
/// the eight classes it never saw it retrieves worse than untrained: diagnose says
/// over-specialised (not weak-features, whose fix — train longer, a deeper encoder — would
/// make it worse), with the seen/unseen evidence and the validation that peaked.
#[test]
fn training_on_two_classes_is_over_specialised() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = quick_run(&run, |c| {
        use siam_data::split::Holdout;
        c.data.class_split = Some(siam_train::config::ClassSplit {
            validation: Holdout::Classes(vec![3, 5, 8]),
            test: Holdout::Classes(vec![1, 2, 4, 7, 9]),
        });
        // Six epochs at 3e-3, validated once at the end (so the last model is kept): seeds 1,
        // 3, 7 and 42 all end over-specialised (unseen P@1 1.8–8 points below untrained).
        c.epochs = 6;
        c.steps_per_epoch = 40;
        c.validation.every_epochs = c.epochs;
        c.set_lr(3e-3);
    });
    let (k, d) = kinds(&model, Some(&run));
    let m = &d.measurements;
    let c = m.classes.as_ref().expect("seen/unseen split known");
    assert_eq!((c.seen_classes, c.unseen_classes), (2, 8));
    assert!(k.contains(&Kind::OverSpecialised), "{:#?}", d.findings);
    assert!(!k.contains(&Kind::WeakFeatures));
    let f = d
        .findings
        .iter()
        .find(|f| f.kind == Kind::OverSpecialised)
        .unwrap();
    let has = |n: &str| f.evidence.iter().any(|e| e.name == n);
    assert!(has("unseen-precision-at-1") && has("unseen-untrained-precision-at-1"));
    assert!(has("best-validation"), "{:?}", f.evidence);
    assert!(c.unseen_precision_at_1.unwrap() < c.unseen_untrained_precision_at_1.unwrap());
    assert!(c.seen_precision_at_1.unwrap() > c.seen_untrained_precision_at_1.unwrap());
    assert!(!f.fix.contains("longer"), "{}", f.fix);
}
