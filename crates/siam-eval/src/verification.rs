//! Verification metrics from pair distances and `same` flags: ROC and AUC (ties handled),
//! EER, TAR at a FAR, accuracy and balanced accuracy at a threshold, and threshold
//! calibration. A pair is called "same" when its distance is at most the threshold.

use crate::error::{EvalError, Result};

/// A ROC curve over decreasing "same" scores (increasing distance thresholds).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Roc {
    /// False-positive rate at each threshold, from 0 to 1.
    pub fpr: Vec<f64>,
    /// True-positive rate at each threshold.
    pub tpr: Vec<f64>,
    /// Distance thresholds (pairs with d ≤ t are called same); the first is −∞ (nothing same).
    pub thresholds: Vec<f64>,
}

fn check(distances: &[f32], same: &[f32]) -> Result<(usize, usize)> {
    if distances.len() != same.len() {
        return Err(EvalError::Invalid(format!(
            "{} distances for {} same flags",
            distances.len(),
            same.len()
        )));
    }
    if let Some(d) = distances.iter().find(|d| !d.is_finite()) {
        return Err(EvalError::Invalid(format!("distance {d} is not finite")));
    }
    let mut pos = 0;
    for &s in same {
        if s == 1.0 {
            pos += 1;
        } else if s != 0.0 {
            return Err(EvalError::Invalid(format!(
                "same must be 1.0 or 0.0, found {s}"
            )));
        }
    }
    let neg = same.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(EvalError::Invalid(format!(
            "verification metrics need both same and different pairs; got {pos} same and {neg} different"
        )));
    }
    Ok((pos, neg))
}

/// The ROC curve; tied distances form one point (as scikit-learn's `roc_curve`).
pub fn roc(distances: &[f32], same: &[f32]) -> Result<Roc> {
    let (pos, neg) = check(distances, same)?;
    let mut order: Vec<usize> = (0..distances.len()).collect();
    order.sort_by(|&a, &b| distances[a].total_cmp(&distances[b]));
    let mut r = Roc {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::NEG_INFINITY],
    };
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let d = distances[order[i]];
        while i < order.len() && distances[order[i]] == d {
            if same[order[i]] == 1.0 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        r.fpr.push(fp as f64 / neg as f64);
        r.tpr.push(tp as f64 / pos as f64);
        r.thresholds.push(f64::from(d));
    }
    Ok(r)
}

impl Roc {
    /// Area under the curve by the trapezoid rule (ties count one half).
    pub fn auc(&self) -> f64 {
        self.fpr
            .windows(2)
            .zip(self.tpr.windows(2))
            .map(|(f, t)| (f[1] - f[0]) * (t[1] + t[0]) / 2.0)
            .sum()
    }

    /// Equal error rate: where FPR = 1 − TPR, linearly interpolated between ROC points.
    /// Returns (rate, distance threshold).
    pub fn eer(&self) -> (f64, f64) {
        for k in 1..self.fpr.len() {
            let (f0, f1) = (self.fpr[k - 1], self.fpr[k]);
            let (m0, m1) = (1.0 - self.tpr[k - 1], 1.0 - self.tpr[k]);
            // g = fpr − fnr goes from −1 to +1; find the crossing.
            let (g0, g1) = (f0 - m0, f1 - m1);
            if g0 <= 0.0 && g1 >= 0.0 {
                let a = if g1 - g0 > 0.0 { -g0 / (g1 - g0) } else { 0.0 };
                let rate = f0 + a * (f1 - f0);
                let t0 = if self.thresholds[k - 1].is_finite() {
                    self.thresholds[k - 1]
                } else {
                    self.thresholds[k]
                };
                return (rate, t0 + a * (self.thresholds[k] - t0));
            }
        }
        (0.5, self.thresholds.last().copied().unwrap_or(0.0))
    }

    /// Highest TPR with FPR ≤ `far`, and the threshold giving it.
    pub fn tar_at_far(&self, far: f64) -> (f64, f64) {
        let mut best = (0.0, f64::NEG_INFINITY);
        for k in 0..self.fpr.len() {
            if self.fpr[k] <= far + 1e-12 && self.tpr[k] >= best.0 {
                best = (self.tpr[k], self.thresholds[k]);
            }
        }
        best
    }
}

/// Accuracy and balanced accuracy of calling pairs with d ≤ `threshold` "same".
pub fn accuracy_at(distances: &[f32], same: &[f32], threshold: f32) -> Result<(f64, f64)> {
    let (pos, neg) = check(distances, same)?;
    let (mut tp, mut tn) = (0usize, 0usize);
    for (&d, &s) in distances.iter().zip(same) {
        let called = d <= threshold;
        if called && s == 1.0 {
            tp += 1;
        } else if !called && s == 0.0 {
            tn += 1;
        }
    }
    let acc = (tp + tn) as f64 / (pos + neg) as f64;
    let bal = 0.5 * (tp as f64 / pos as f64 + tn as f64 / neg as f64);
    Ok((acc, bal))
}

/// How to choose the decision threshold on validation pairs.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum Calibration {
    /// Maximise balanced accuracy (the default).
    #[default]
    BalancedAccuracy,
    /// The equal-error-rate point.
    Eer,
    /// The largest threshold whose false-accept rate is at most `far`.
    TargetFar {
        /// The false-accept rate allowed.
        far: f64,
    },
}

/// Chooses a threshold on (distances, same) by `method`.
pub fn calibrate(distances: &[f32], same: &[f32], method: Calibration) -> Result<f32> {
    let r = roc(distances, same)?;
    let t = match method {
        Calibration::BalancedAccuracy => {
            // Balanced accuracy at ROC point k is (tpr + 1 − fpr)/2; take the best and put the
            // threshold midway to the next distance so it generalises.
            let mut best = (f64::NEG_INFINITY, 0);
            for k in 1..r.fpr.len() {
                let b = 0.5 * (r.tpr[k] + 1.0 - r.fpr[k]);
                if b > best.0 {
                    best = (b, k);
                }
            }
            let k = best.1;
            match r.thresholds.get(k + 1) {
                Some(next) => (r.thresholds[k] + next) / 2.0,
                None => r.thresholds[k],
            }
        }
        Calibration::Eer => r.eer().1,
        Calibration::TargetFar { far } => {
            if !(0.0..=1.0).contains(&far) {
                return Err(EvalError::Invalid(format!(
                    "target FAR {far} must be in [0, 1]"
                )));
            }
            let t = r.tar_at_far(far).1;
            if t.is_finite() {
                t
            } else {
                r.thresholds.get(1).map_or(0.0, |d| d - 1e-6)
            }
        }
    };
    Ok(t as f32)
}

/// Every verification figure at once.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VerificationReport {
    /// Pairs evaluated.
    pub pairs: usize,
    /// Area under the ROC curve.
    pub roc_auc: f64,
    /// Equal error rate.
    pub eer: f64,
    /// True-accept rate at a false-accept rate of 1e-2.
    pub tar_at_far_1e2: f64,
    /// True-accept rate at a false-accept rate of 1e-3.
    pub tar_at_far_1e3: f64,
    /// The threshold the accuracies are measured at.
    pub threshold: f32,
    /// Accuracy at the threshold.
    pub accuracy: f64,
    /// Balanced accuracy at the threshold.
    pub balanced_accuracy: f64,
}

/// Verification metrics; accuracies at `threshold`, or at the best (balanced-accuracy)
/// threshold on these pairs when `None`.
pub fn verification(
    distances: &[f32],
    same: &[f32],
    threshold: Option<f32>,
) -> Result<VerificationReport> {
    let r = roc(distances, same)?;
    let threshold = match threshold {
        Some(t) => t,
        None => calibrate(distances, same, Calibration::BalancedAccuracy)?,
    };
    let (accuracy, balanced_accuracy) = accuracy_at(distances, same, threshold)?;
    Ok(VerificationReport {
        pairs: distances.len(),
        roc_auc: r.auc(),
        eer: r.eer().0,
        tar_at_far_1e2: r.tar_at_far(1e-2).0,
        tar_at_far_1e3: r.tar_at_far(1e-3).0,
        threshold,
        accuracy,
        balanced_accuracy,
    })
}

/// One held-out fold of [`kfold`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FoldFigure {
    /// The fold (from 0).
    pub fold: usize,
    /// Its pairs.
    pub pairs: usize,
    /// The threshold calibrated on the other folds.
    pub threshold: f32,
    /// Accuracy on this fold at that threshold.
    pub accuracy: f64,
}

/// The k-fold verification protocol (LFW's): per-fold figures, their mean and spread.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KFoldReport {
    /// Each fold held out in turn.
    pub folds: Vec<FoldFigure>,
    /// Mean accuracy over the folds.
    pub accuracy_mean: f64,
    /// Standard deviation of the fold accuracies (population, numpy's default `ddof = 0`).
    pub accuracy_std: f64,
}

/// Contiguous folds of `n` pairs: pair `i` is in fold ⌊i·k/n⌋ (scikit-learn's `KFold`
/// without shuffling, for the sizes it produces).
pub fn contiguous_folds(n: usize, k: usize) -> Vec<usize> {
    (0..n).map(|i| i * k / n.max(1)).collect()
}

/// For each fold, calibrates the threshold by `method` on the pairs of the other folds and
/// measures accuracy on the fold: the LFW protocol. `folds[i]` is pair `i`'s fold, 0..K−1,
/// every fold present; each fold's complement must hold same and different pairs.
pub fn kfold(
    distances: &[f32],
    same: &[f32],
    folds: &[usize],
    method: Calibration,
) -> Result<KFoldReport> {
    check(distances, same)?;
    if folds.len() != distances.len() {
        return Err(EvalError::Invalid(format!(
            "{} fold numbers for {} pairs",
            folds.len(),
            distances.len()
        )));
    }
    let k = folds.iter().max().map_or(0, |m| m + 1);
    if k < 2 {
        return Err(EvalError::Invalid(
            "the k-fold protocol needs at least two folds".into(),
        ));
    }
    let mut out = Vec::with_capacity(k);
    for f in 0..k {
        let (mut dt, mut st, mut dh, mut sh) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((&d, &s), &g) in distances.iter().zip(same).zip(folds) {
            if g == f {
                dh.push(d);
                sh.push(s);
            } else {
                dt.push(d);
                st.push(s);
            }
        }
        if dh.is_empty() {
            return Err(EvalError::Invalid(format!("fold {f} has no pairs")));
        }
        let threshold = calibrate(&dt, &st, method)
            .map_err(|e| EvalError::Invalid(format!("calibrating without fold {f}: {e}")))?;
        let correct = dh
            .iter()
            .zip(&sh)
            .filter(|&(&d, &s)| (d <= threshold) == (s == 1.0))
            .count();
        out.push(FoldFigure {
            fold: f,
            pairs: dh.len(),
            threshold,
            accuracy: correct as f64 / dh.len() as f64,
        });
    }
    let mean = out.iter().map(|f| f.accuracy).sum::<f64>() / k as f64;
    let var = out.iter().map(|f| (f.accuracy - mean).powi(2)).sum::<f64>() / k as f64;
    Ok(KFoldReport {
        folds: out,
        accuracy_mean: mean,
        accuracy_std: var.sqrt(),
    })
}
