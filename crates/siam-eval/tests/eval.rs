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
