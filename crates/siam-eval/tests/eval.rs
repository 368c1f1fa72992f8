//! siam-eval against scikit-learn and pytorch-metric-learning on a committed fixture
//! (`tests/fixtures/eval_case.json`, made by `tests/fixtures/make_reference.py`).

use candle_core::{Device, Tensor};
use serde_json::Value;
use siam_eval::verification::{Calibration, accuracy_at, calibrate};
use siam_eval::{distance_stats, retrieval, roc, verification};
use siam_model::Distance;

fn case() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eval_case.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

/// The LFW k-fold protocol against scikit-learn. Reference (python 3.11, numpy, sklearn 1.x):
///
/// ```python
/// import numpy as np
/// from sklearn.metrics import roc_curve, accuracy_score
/// rng = np.random.default_rng(7)
/// n = 40
/// same = (np.arange(n) % 2 == 0).astype(int)
/// d = np.round(np.where(same == 1, rng.normal(0.5, 0.25, n), rng.normal(1.0, 0.25, n)), 3).astype(np.float32)
/// folds = np.arange(n) * 4 // n
/// accs, ths = [], []
/// for f in range(4):
///     tr, te = folds != f, folds == f
///     fpr, tpr, thr = roc_curve(same[tr], -d[tr].astype(np.float64), drop_intermediate=False)
///     b = 0.5 * (tpr + 1 - fpr)                  # balanced accuracy at each distinct distance
///     k = int(np.argmax(b[1:])) + 1
///     t = np.float32((-thr[k] + -thr[k + 1]) / 2 if k + 1 < len(thr) else -thr[k])
///     ths.append(float(t)); accs.append(accuracy_score(same[te], (d[te] <= t).astype(int)))
/// print(ths, accs, np.mean(accs), np.std(accs))
/// # [0.6610000133514404, 0.5759999752044678, 0.5694999694824219, 0.5759999752044678]
/// # [0.9, 0.9, 1.0, 0.8] 0.9 0.07071067811865474
/// ```
#[test]
fn kfold_matches_scikit_learn() {
    let d: Vec<f32> = vec![
        0.5, 1.016, 0.431, 1.019, 0.386, 0.613, 0.515, 1.03, 0.377, 1.5, 0.622, 0.7, 0.526, 1.144,
        0.493, 1.171, 0.164, 1.167, 0.025, 0.831, 0.04, 0.884, 0.183, 0.703, 0.539, 0.951, -0.129,
        1.286, 0.488, 0.801, 0.117, 0.502, 0.255, 0.976, 0.765, 1.172, 0.492, 0.908, 0.354, 1.381,
    ];
    let same: Vec<f32> = (0..40).map(|i| f32::from(i % 2 == 0)).collect();
    let folds = siam_eval::verification::contiguous_folds(40, 4);
    assert_eq!(&folds[8..12], [0, 0, 1, 1]);
    let r = siam_eval::kfold(&d, &same, &folds, Calibration::BalancedAccuracy).unwrap();
    let ths: Vec<f32> = r.folds.iter().map(|f| f.threshold).collect();
    for (t, want) in ths.iter().zip([0.661f32, 0.576, 0.5695, 0.576]) {
        assert!((t - want).abs() < 1e-6, "{ths:?}");
    }
    let accs: Vec<f64> = r.folds.iter().map(|f| f.accuracy).collect();
    assert_eq!(accs, [0.9, 0.9, 1.0, 0.8]);
    assert!((r.accuracy_mean - 0.9).abs() < 1e-12);
    assert!((r.accuracy_std - 0.07071067811865474).abs() < 1e-12);
    assert!(r.folds.iter().all(|f| f.pairs == 10));
    // One fold is no protocol; fold numbers must match the pairs.
    assert!(siam_eval::kfold(&d, &same, &[0; 40], Calibration::BalancedAccuracy).is_err());
    assert!(siam_eval::kfold(&d, &same, &folds[..39], Calibration::BalancedAccuracy).is_err());
}

#[test]
fn verification_matches_scikit_learn() {
    let c = case();
    let (d, s) = (f32s(&c["distances"]), f32s(&c["same"]));
    let r = verification(&d, &s, Some(f(&c["threshold"]) as f32)).unwrap();
    assert!(
        (r.roc_auc - f(&c["roc_auc"])).abs() < 1e-9,
        "{} vs {}",
        r.roc_auc,
        c["roc_auc"]
    );
    assert!(
        (r.eer - f(&c["eer"])).abs() < 1e-9,
        "{} vs {}",
        r.eer,
        c["eer"]
    );
    assert!((r.tar_at_far_1e2 - f(&c["tar_at_far_1e2"])).abs() < 1e-9);
    assert!((r.accuracy - f(&c["accuracy"])).abs() < 1e-9);
    assert!((r.balanced_accuracy - f(&c["balanced_accuracy"])).abs() < 1e-9);
    assert_eq!(r.pairs, 300);
}

#[test]
fn roc_handles_ties_and_extremes() {
    // All tied: one step from (0,0) to (1,1); AUC 0.5.
    let r = roc(&[0.5, 0.5, 0.5, 0.5], &[1.0, 0.0, 1.0, 0.0]).unwrap();
    assert_eq!(r.fpr, vec![0.0, 1.0]);
    assert_eq!(r.auc(), 0.5);
    // Perfect separation and its inversion.
    let same = [1.0, 1.0, 0.0, 0.0];
    assert_eq!(roc(&[0.1, 0.2, 0.8, 0.9], &same).unwrap().auc(), 1.0);
    assert_eq!(roc(&[0.9, 0.8, 0.2, 0.1], &same).unwrap().auc(), 0.0);
    assert_eq!(roc(&[0.1, 0.2, 0.8, 0.9], &same).unwrap().eer().0, 0.0);
    assert!(
        roc(&[0.1, 0.2], &[1.0, 1.0])
            .unwrap_err()
            .to_string()
            .contains("0 different")
    );
    assert!(roc(&[0.1, f32::NAN], &[1.0, 0.0]).is_err());
    assert!(roc(&[0.1, 0.2], &[1.0, 2.0]).is_err());
}

#[test]
fn calibration_finds_the_separating_threshold() {
    let d = [0.1f32, 0.2, 0.3, 0.7, 0.8, 0.9];
    let s = [1.0f32, 1.0, 1.0, 0.0, 0.0, 0.0];
    let t = calibrate(&d, &s, Calibration::BalancedAccuracy).unwrap();
    assert!((t - 0.5).abs() < 1e-6, "midway between 0.3 and 0.7: {t}");
    assert_eq!(accuracy_at(&d, &s, t).unwrap(), (1.0, 1.0));
    // On the fixture, the calibrated threshold is the best balanced accuracy over all cut points.
    let c = case();
    let (d, s) = (f32s(&c["distances"]), f32s(&c["same"]));
    let t = calibrate(&d, &s, Calibration::BalancedAccuracy).unwrap();
    let best = accuracy_at(&d, &s, t).unwrap().1;
    for &cut in &d {
        assert!(accuracy_at(&d, &s, cut).unwrap().1 <= best + 1e-12);
    }
    // A target FAR bounds the false accepts.
    let t = calibrate(&d, &s, Calibration::TargetFar { far: 0.05 }).unwrap();
    let neg = s.iter().filter(|&&x| x == 0.0).count() as f64;
    let fa = d
        .iter()
        .zip(&s)
        .filter(|(x, y)| **x <= t && **y == 0.0)
        .count() as f64;
    assert!(fa / neg <= 0.05);
    // The EER threshold balances the two error rates (within a tie step).
    let t = calibrate(&d, &s, Calibration::Eer).unwrap();
    let (_, bal) = accuracy_at(&d, &s, t).unwrap();
    assert!(bal > 0.7);
}

fn embeddings(c: &Value, idx: Option<&Value>) -> (Tensor, Vec<u32>) {
    let all: Vec<Vec<f32>> = c["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(f32s)
        .collect();
    let labels: Vec<u32> = c["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let rows: Vec<usize> = match idx {
        Some(v) => v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect(),
        None => (0..all.len()).collect(),
    };
    let flat: Vec<f32> = rows.iter().flat_map(|&r| all[r].clone()).collect();
    (
        Tensor::from_vec(flat, (rows.len(), 4), &Device::Cpu).unwrap(),
        rows.iter().map(|&r| labels[r]).collect(),
    )
}

/// The three retrieval figures equal pytorch-metric-learning's.
fn same_as_pml(r: &siam_eval::RetrievalReport, want: &Value) {
    assert!(
        (r.precision_at_1 - f(&want["precision_at_1"])).abs() < 1e-9,
        "{r:?}"
    );
    assert!(
        (r.r_precision - f(&want["r_precision"])).abs() < 1e-9,
        "{r:?}"
    );
    assert!(
        (r.map_at_r - f(&want["mean_average_precision_at_r"])).abs() < 1e-9,
        "{r:?}"
    );
}

#[test]
fn retrieval_matches_pytorch_metric_learning() {
    let c = case();
    let (e, l) = embeddings(&c, None);
    for chunk in [1, 7, 1000] {
        let r = retrieval(&e, &l, None, Distance::Euclidean, chunk).unwrap();
        same_as_pml(&r, &c["loo"]);
        assert_eq!(r.queries, 60);
    }
    let (q, ql) = embeddings(&c, Some(&c["query_index"]));
    let (g, gl) = embeddings(&c, Some(&c["gallery_index"]));
    let r = retrieval(&q, &ql, Some((&g, &gl)), Distance::Euclidean, 5).unwrap();
    same_as_pml(&r, &c["query_gallery"]);
}

#[test]
fn distance_stats_count_against_the_margin() {
    let d = [0.2f32, 0.6, 1.2, 0.9, 2.0];
    let s = [1.0f32, 1.0, 1.0, 0.0, 0.0];
    let st = distance_stats(&d, &s, 1.0).unwrap();
    assert!((st.same_mean - 2.0 / 3.0).abs() < 1e-6);
    assert_eq!(st.different_beyond_margin, 0.5);
    assert!((st.same_inside_margin - 2.0 / 3.0).abs() < 1e-9);
    let q = siam_eval::stats::quantiles(&[0.0, 10.0], 21);
    assert_eq!((q[0], q[10], q[20]), (0.0, 5.0, 10.0));
    assert_eq!(siam_eval::stats::rank_in(&q, 2.5), 0.25);
}

mod findings {
    //! The diagnosis rules on hand-made measurements: each fires on its evidence and stays
    //! quiet on a healthy model's figures.

    use siam_eval::diagnose::{
        Consistency, Context, Generalization, Geometry, History, HistoryStep, HistoryValidation,
        Measurements, findings,
    };
    use siam_eval::{DistanceStats, Kind, RetrievalReport, Severity, VerificationReport};

    /// The shipped model's figures on the fixtures (rounded).
    fn healthy() -> Measurements {
        Measurements {
            context: Context {
                loss: Some("contrastive".into()),
                margin: Some(1.0),
                normalized: true,
                different_share: Some(0.89),
                trained: true,
                class_counts: (0..10).map(|c| (format!("c{c}"), 100)).collect(),
                ..Context::default()
            },
            verification: VerificationReport {
                pairs: 2000,
                roc_auc: 0.97,
                eer: 0.086,
                tar_at_far_1e2: 0.5,
                tar_at_far_1e3: 0.2,
                threshold: 0.55,
                accuracy: 0.92,
                balanced_accuracy: 0.92,
            },
            best_threshold: 0.56,
            best_balanced_accuracy: 0.925,
            stored_threshold: Some(0.55),
            true_accept_rate: 0.93,
            true_reject_rate: 0.91,
            retrieval: RetrievalReport {
                queries: 1000,
                precision_at_1: 0.82,
                r_precision: 0.7,
                map_at_r: 0.6,
            },
            stats: DistanceStats {
                same_mean: 0.23,
                same_std: 0.16,
                different_mean: 0.98,
                different_std: 0.33,
                margin: 1.0,
                different_beyond_margin: 0.51,
                same_inside_margin: 0.9995,
            },
            different_median: 1.0,
            same_p95: 0.55,
            geometry: Geometry {
                points: 1000,
                dims: 128,
                mean_norm: 1.0,
                mean_pairwise_distance: 0.9,
                mean_dim_variance: 0.0038,
                dead_dims: 0,
                effective_rank: 3.5,
                top_component_share: 0.56,
            },
            consistency: Consistency {
                alone_vs_batch: 6e-8,
                repeat: 0.0,
                asymmetry: 0.0,
                batchnorm_layers: 0,
                batchnorm_at_init: 0,
                train_eval_shift: None,
            },
            pixels_precision_at_1: Some(0.739),
            untrained_precision_at_1: Some(0.745),
            untrained_roc_auc: Some(0.8),
            non_finite_weights: vec![],
            non_finite_embeddings: 0,
            history: None,
            generalization: None,
            classes: None,
            input_check: None,
            relu_activity: vec![],
            data_quality: None,
        }
    }

    fn kinds(m: &Measurements) -> Vec<Kind> {
        findings(m)
            .into_iter()
            .filter(|f| f.severity != Severity::Info)
            .map(|f| f.kind)
            .collect()
    }

    #[test]
    fn a_healthy_model_gets_no_findings() {
        assert_eq!(kinds(&healthy()), []);
    }

    #[test]
    fn same_pairs_farther_than_different_pairs_are_inverted_labels() {
        let mut m = healthy();
        m.verification.roc_auc = 0.03;
        m.stats.same_mean = 1.1;
        m.stats.different_mean = 0.3;
        assert_eq!(kinds(&m).first(), Some(&Kind::InvertedLabels));
        m.verification.roc_auc = 0.55; // not below 0.5, but far below the untrained 0.8
        assert_eq!(kinds(&m).first(), Some(&Kind::InvertedLabels));
        m.untrained_roc_auc = Some(0.6); // an encoder that starts uninformative: no evidence
        assert!(!kinds(&m).contains(&Kind::InvertedLabels));
    }

    #[test]
    fn collapse_by_distance_rank_or_stuck_loss() {
        let mut m = healthy();
        m.geometry.mean_pairwise_distance = 1e-8;
        assert_eq!(kinds(&m).first(), Some(&Kind::Collapse));
        let mut m = healthy();
        m.stats.different_mean = 0.05; // 5 % of margin 1
        assert!(kinds(&m).contains(&Kind::Collapse));
        let mut m = healthy();
        m.geometry.effective_rank = 1.2;
        assert!(kinds(&m).contains(&Kind::Collapse));
        // A triplet run whose loss sits at the margin, with a low-rank space.
        let mut m = healthy();
        m.context.loss = Some("triplet".into());
        m.context.margin = Some(0.2);
        m.geometry.effective_rank = 2.5;
        m.history = Some(History {
            steps: (1..=10)
                .map(|s| HistoryStep {
                    step: s * 10,
                    loss: Some(0.2 + 0.001 * (s % 2) as f64),
                    ..Default::default()
                })
                .collect(),
            ..History::default()
        });
        let f = findings(&m);
        let c = f
            .iter()
            .find(|f| f.kind == Kind::Collapse)
            .expect("collapse");
        assert!(
            c.evidence
                .iter()
                .any(|e| e.name == "collapsed-loss" && e.value == 0.2)
        );
    }

    #[test]
    fn margins_that_do_not_fit() {
        let mut m = healthy();
        m.context.margin = Some(5.0);
        let f = findings(&m);
        let ms = f
            .iter()
            .find(|f| f.kind == Kind::MarginScale)
            .expect("unreachable");
        assert_eq!(ms.severity, Severity::Error);
        let mut m = healthy();
        m.context.normalized = false;
        m.context.margin = Some(1.0);
        m.different_median = 40.0;
        m.stats.different_beyond_margin = 1.0;
        m.stats.same_inside_margin = 0.2;
        assert!(
            kinds(&m).contains(&Kind::MarginScale),
            "unit-sphere margin on a free scale"
        );
        let mut m = healthy();
        m.stats.different_beyond_margin = 0.01;
        assert!(kinds(&m).contains(&Kind::MarginScale), "nearly none beyond");
        m.context.loss = Some("bce".into());
        assert!(!kinds(&m).contains(&Kind::MarginScale), "BCE has no margin");
    }

    #[test]
    fn inconsistent_outputs_are_eval_mode() {
        for f in [
            |m: &mut Measurements| m.consistency.alone_vs_batch = 0.2,
            |m: &mut Measurements| m.consistency.repeat = 0.01,
            |m: &mut Measurements| m.consistency.asymmetry = 0.01,
            |m: &mut Measurements| {
                m.consistency.batchnorm_layers = 4;
                m.consistency.batchnorm_at_init = 4
            },
            |m: &mut Measurements| {
                m.consistency.batchnorm_layers = 4;
                m.consistency.train_eval_shift = Some(3.0)
            },
        ] {
            let mut m = healthy();
            f(&mut m);
            assert!(kinds(&m).contains(&Kind::EvalMode), "{:?}", m.consistency);
        }
        let mut m = healthy();
        m.consistency.batchnorm_layers = 4;
        m.consistency.batchnorm_at_init = 4;
        m.context.trained = false; // a fresh model has initial statistics by design
        assert!(!kinds(&m).contains(&Kind::EvalMode));
    }

    #[test]
    fn non_finite_values_anywhere() {
        let mut m = healthy();
        m.non_finite_weights = vec!["encoder.fc.bias".into()];
        assert_eq!(kinds(&m).first(), Some(&Kind::NonFinite));
        let mut m = healthy();
        m.history = Some(History {
            steps: vec![HistoryStep {
                step: 5,
                loss: None,
                ..Default::default()
            }],
            ..History::default()
        });
        assert_eq!(kinds(&m).first(), Some(&Kind::NonFinite));
    }

    #[test]
    fn weak_features_against_baselines() {
        let mut m = healthy();
        m.retrieval.precision_at_1 = 0.74;
        assert!(kinds(&m).contains(&Kind::WeakFeatures));
        m.pixels_precision_at_1 = None;
        m.untrained_precision_at_1 = None;
        assert!(
            !kinds(&m).contains(&Kind::WeakFeatures),
            "no baselines, no claim"
        );
    }

    #[test]
    fn worse_than_untrained_while_training_figures_are_good_is_over_specialised() {
        // On this data the trained encoder retrieves worse than untrained, but on its own
        // training classes it is far better: over-specialised, not weak, and its fix is not
        // "train longer".
        let mut m = healthy();
        m.retrieval.precision_at_1 = 0.70;
        m.generalization = Some(Generalization {
            train_precision_at_1: 0.95,
            val_precision_at_1: 0.70,
            train_roc_auc: 0.99,
            val_roc_auc: 0.8,
            train_untrained_precision_at_1: Some(0.75),
        });
        let f = findings(&m);
        let o = f
            .iter()
            .find(|f| f.kind == Kind::OverSpecialised)
            .expect("over-specialised");
        assert!(!f.iter().any(|f| f.kind == Kind::WeakFeatures), "{f:?}");
        assert!(!o.fix.contains("longer"), "{}", o.fix);
        assert!(o.fix.contains("self-supervised"));
        let names: Vec<&str> = o.evidence.iter().map(|e| e.name.as_str()).collect();
        assert!(
            names.contains(&"untrained-precision-at-1") && names.contains(&"train-precision-at-1")
        );
        // Without good training figures it is plain weak features.
        m.generalization = None;
        assert!(kinds(&m).contains(&Kind::WeakFeatures));
        assert!(!kinds(&m).contains(&Kind::OverSpecialised));
        // Known seen / unseen classes: good on the seen ones, worse than untrained on the
        // unseen ones — even where the whole data's figure beats the baselines.
        let mut m = healthy();
        m.classes = Some(siam_eval::diagnose::ClassBreakdown {
            seen_classes: 7,
            unseen_classes: 3,
            seen_precision_at_1: Some(0.9),
            seen_untrained_precision_at_1: Some(0.8),
            unseen_precision_at_1: Some(0.80),
            unseen_untrained_precision_at_1: Some(0.9),
            unseen_pixels_precision_at_1: Some(0.93),
        });
        let f = findings(&m);
        let o = f
            .iter()
            .find(|f| f.kind == Kind::OverSpecialised)
            .expect("over-specialised on unseen classes");
        assert!(o.summary.contains("never saw"), "{}", o.summary);
        // Training that made the seen classes worse too is not specialisation.
        m.classes.as_mut().unwrap().seen_untrained_precision_at_1 = Some(0.95);
        assert!(!kinds(&m).contains(&Kind::OverSpecialised));
        // Data of unseen classes only (a held-out test set): the signal destroyed there while
        // training helped on its own training sample is over-specialisation, not inverted labels.
        let mut u = healthy();
        u.verification.roc_auc = 0.58;
        u.untrained_roc_auc = Some(0.74);
        u.retrieval.precision_at_1 = 0.77;
        u.classes = Some(siam_eval::diagnose::ClassBreakdown {
            seen_classes: 0,
            unseen_classes: 3,
            seen_precision_at_1: None,
            seen_untrained_precision_at_1: None,
            unseen_precision_at_1: Some(0.77),
            unseen_untrained_precision_at_1: Some(0.94),
            unseen_pixels_precision_at_1: Some(0.94),
        });
        assert!(
            kinds(&u).contains(&Kind::InvertedLabels),
            "no evidence of training yet"
        );
        u.generalization = Some(Generalization {
            train_precision_at_1: 0.9,
            val_precision_at_1: 0.6,
            train_roc_auc: 0.97,
            val_roc_auc: 0.6,
            train_untrained_precision_at_1: Some(0.8),
        });
        let k = kinds(&u);
        assert!(k.contains(&Kind::OverSpecialised), "{k:?}");
        assert!(!k.contains(&Kind::InvertedLabels), "{k:?}");
        // Unseen classes as good as the baselines: nothing to say.
        m.classes.as_mut().unwrap().seen_untrained_precision_at_1 = Some(0.8);
        m.classes.as_mut().unwrap().unseen_precision_at_1 = Some(0.95);
        assert!(!kinds(&m).contains(&Kind::OverSpecialised));
    }

    #[test]
    fn overfitting_from_the_gap_or_the_history() {
        let mut m = healthy();
        m.generalization = Some(Generalization {
            train_precision_at_1: 0.99,
            val_precision_at_1: 0.8,
            train_roc_auc: 0.999,
            val_roc_auc: 0.96,
            train_untrained_precision_at_1: None,
        });
        assert!(kinds(&m).contains(&Kind::Overfitting));
        let mut m = healthy();
        let v = |step, metric| HistoryValidation {
            step,
            loss: None,
            metric,
            roc_auc: 0.9,
            precision_at_1: 0.8,
        };
        m.history = Some(History {
            steps: vec![
                HistoryStep {
                    step: 100,
                    loss: Some(0.5),
                    ..Default::default()
                },
                HistoryStep {
                    step: 200,
                    loss: Some(0.3),
                    ..Default::default()
                },
                HistoryStep {
                    step: 300,
                    loss: Some(0.1),
                    ..Default::default()
                },
            ],
            validations: vec![v(100, 0.6), v(200, 0.7), v(300, 0.6)],
            metric: "map-at-r".into(),
            higher_is_better: true,
            diverged: None,
            initial_weight_norm: None,
        });
        assert!(kinds(&m).contains(&Kind::Overfitting));
        // Still improving at the end: no finding.
        if let Some(h) = &mut m.history {
            h.validations[2].metric = 0.75;
        }
        assert!(!kinds(&m).contains(&Kind::Overfitting));
    }

    #[test]
    fn thresholds_and_imbalance() {
        let mut m = healthy();
        m.verification.balanced_accuracy = 0.6;
        assert!(kinds(&m).contains(&Kind::StaleThreshold));
        let mut m = healthy();
        m.stored_threshold = None;
        assert!(kinds(&m).contains(&Kind::StaleThreshold));
        let mut m = healthy();
        m.context.positive_fraction = Some(0.05);
        assert!(kinds(&m).contains(&Kind::PairImbalance));
        let mut m = healthy();
        m.true_accept_rate = 0.02;
        assert!(
            kinds(&m).contains(&Kind::PairImbalance),
            "always answers different"
        );
        let mut m = healthy();
        m.context.class_counts[3].1 = 10;
        assert!(kinds(&m).contains(&Kind::ClassImbalance));
        let mut m = healthy();
        m.context.train_class_counts = Some(
            (0..10)
                .map(|c| (format!("c{c}"), if c == 0 { 1 } else { 450 }))
                .collect(),
        );
        assert!(kinds(&m).contains(&Kind::ClassImbalance));
    }

    fn input_check(flagged: usize, by: &[(&str, usize)]) -> siam_eval::diagnose::InputCheck {
        siam_eval::diagnose::InputCheck {
            images: 1000,
            flagged,
            rate: flagged as f64 / 1000.0,
            by_kind: by.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            expected_rate: 0.012,
        }
    }

    #[test]
    fn unfamiliar_inputs_when_much_of_the_data_falls_outside_the_input_check() {
        // Training-like data: about the expected share flagged, no finding.
        let mut m = healthy();
        m.input_check = Some(input_check(
            15,
            &[("far-from-training", 10), ("intensity-mean", 5)],
        ));
        assert!(!kinds(&m).contains(&Kind::UnfamiliarInputs));
        // Inverted images: most flagged for brightness.
        m.input_check = Some(input_check(
            930,
            &[("intensity-mean", 900), ("far-from-training", 400)],
        ));
        let f = findings(&m);
        let u = f.iter().find(|f| f.kind == Kind::UnfamiliarInputs).unwrap();
        assert_eq!(u.severity, Severity::Warning);
        assert!(u.summary.starts_with("93% of the images"), "{}", u.summary);
        assert!(
            u.summary.contains("brightness") && u.summary.contains("another kind"),
            "{}",
            u.summary
        );
        assert!(!u.summary.contains("contrast"), "{}", u.summary);
        let share = u
            .evidence
            .iter()
            .find(|e| e.name == "intensity-mean-share")
            .unwrap();
        assert!((share.value - 0.9).abs() < 1e-9);
        assert!(u.fix.contains("siam calibrate"));
        // A model whose own held-out images are flagged often needs five times that.
        let mut c = input_check(250, &[("far-from-training", 250)]);
        c.expected_rate = 0.1;
        m.input_check = Some(c);
        assert!(!kinds(&m).contains(&Kind::UnfamiliarInputs));
    }

    #[test]
    fn findings_come_worst_first_and_serialise_with_stable_kinds() {
        let mut m = healthy();
        m.stored_threshold = None; // warning
        m.non_finite_embeddings = 3; // error
        let f = findings(&m);
        assert!(f.windows(2).all(|w| w[0].severity >= w[1].severity));
        let j = serde_json::to_value(&f).unwrap();
        assert_eq!(j[0]["kind"], "non-finite");
        assert_eq!(j[0]["severity"], "error");
        assert!(j[0]["fix"].as_str().unwrap().len() > 20);
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
    }

    /// A history of `n` logged steps: weights growing from `w0` to `w1`, updates of `ratio`,
    /// the loss from 0.5 down by `fall` per step, validations improving to the end or not.
    fn lr_history(w0: f64, w1: f64, ratio: f64, fall: f64, improving: bool) -> History {
        let n = 12u64;
        let v = |step, metric| HistoryValidation {
            step,
            loss: None,
            metric,
            roc_auc: 0.9,
            precision_at_1: 0.8,
        };
        History {
            steps: (1..=n)
                .map(|i| HistoryStep {
                    step: i * 10,
                    loss: Some(0.5 - fall * i as f64),
                    lr: Some(1e-3),
                    grad_norm: Some(0.2),
                    grad_norm_max: Some(0.3),
                    weight_norm: Some(w0 + (w1 - w0) * i as f64 / n as f64),
                    update_ratio: Some(ratio),
                })
                .collect(),
            validations: if improving {
                vec![v(40, 0.5), v(80, 0.6), v(120, 0.7)]
            } else {
                vec![v(40, 0.5), v(80, 0.7), v(120, 0.6)]
            },
            metric: "map-at-r".into(),
            higher_is_better: true,
            diverged: None,
            initial_weight_norm: Some(w0),
        }
    }

    #[test]
    fn learning_rate_findings_follow_the_logged_evidence() {
        let with = |h: History, lr: f64| {
            let mut m = healthy();
            m.context.lr = Some(lr);
            m.history = Some(h);
            m
        };
        // Weights grown 5x: too high, with a 10x lower rate; an error once the model retrieves
        // worse than untrained, and weak-features gives way to it.
        let m = with(lr_history(10.0, 50.0, 5e-3, 0.01, false), 0.3);
        assert_eq!(kinds(&m), vec![Kind::LrTooHigh]);
        let f = findings(&m);
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(f[0].fix.contains("lr = 3.0e-2"), "{}", f[0].fix);
        let mut worse = m.clone();
        worse.retrieval.precision_at_1 = 0.6;
        let f = findings(&worse);
        assert_eq!(f[0].kind, Kind::LrTooHigh);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(!kinds(&worse).contains(&Kind::WeakFeatures));
        // Updates of 5 % of the weights per step: too high without any growth.
        assert_eq!(
            kinds(&with(lr_history(10.0, 10.0, 0.05, 0.01, false), 0.3)),
            vec![Kind::LrTooHigh]
        );
        // Tiny updates and still improving: too low, with a 10x higher rate.
        let m = with(lr_history(10.0, 10.0, 2e-4, 0.001, true), 1e-5);
        assert_eq!(kinds(&m), vec![Kind::LrTooLow]);
        assert!(findings(&m)[0].fix.contains("lr = 1.0e-4"));
        // Tiny updates but converged (best validation earlier, loss flat at the end): no finding.
        assert!(kinds(&with(lr_history(10.0, 10.0, 2e-4, 0.0, false), 1e-5)).is_empty());
        // A healthy run: a few per cent of growth, updates of 5e-3.
        assert!(kinds(&with(lr_history(10.0, 10.6, 5e-3, 0.01, true), 1e-3)).is_empty());
        // A log from before siam recorded weight norms: nothing is claimed.
        let mut old = lr_history(10.0, 50.0, 5e-3, 0.01, false);
        old.initial_weight_norm = None;
        for s in &mut old.steps {
            s.weight_norm = None;
            s.update_ratio = None;
        }
        assert!(kinds(&with(old, 0.3)).is_empty());
    }

    #[test]
    fn dead_units_are_found_from_a_quarter_of_a_layer() {
        let layer = |name: &str, units, dead| siam_model::ReluActivity {
            layer: name.into(),
            units,
            dead,
            active_share: 0.4,
        };
        let mut m = healthy();
        m.relu_activity = vec![layer("conv1", 32, 0), layer("conv2", 64, 10)];
        assert!(kinds(&m).is_empty(), "16 % of a layer is not flagged");
        m.relu_activity[1].dead = 19;
        assert_eq!(kinds(&m), vec![Kind::DeadUnits]);
        let f = &findings(&m)[0];
        assert!(f.summary.contains("conv2 19 of 64"), "{}", f.summary);
        assert!(f.evidence.iter().any(|e| e.name == "dead-conv2"));
        // A tiny layer (under 8 units) does not decide.
        m.relu_activity = vec![layer("head", 4, 2), layer("conv2", 64, 0)];
        assert!(kinds(&m).is_empty());
    }
}
