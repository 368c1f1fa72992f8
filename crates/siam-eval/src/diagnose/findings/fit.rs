//! How the model fits its data and its threshold: weak features, overfitting, a stale
//! threshold, pair and class imbalance.

use super::*;

pub(super) fn fit(m: &Measurements, out: &mut Vec<Finding>) {
    let c = &m.context;
    let v = &m.verification;
    // weak-features
    if let (Some(px), Some(un)) = (m.pixels_precision_at_1, m.untrained_precision_at_1)
        && !out.iter().any(|f| {
            matches!(
                f.kind,
                Kind::OverSpecialised | Kind::LrTooHigh | Kind::LrTooLow
            )
        })
    {
        let p1 = m.retrieval.precision_at_1;
        let best = px.max(un);
        if p1 <= best + 0.005 {
            out.push(
                finding(
                    Kind::WeakFeatures,
                    Severity::Warning,
                    format!(
                        "retrieval is no better than {}: precision@1 {:.3} against {:.3}",
                        if px >= un { "raw pixels" } else { "an untrained encoder of the same shape" },
                        p1,
                        best
                    ),
                )
                .with("precision-at-1", p1)
                .with("pixels-precision-at-1", px)
                .with("untrained-precision-at-1", un)
                .explain(
                    "The encoder does not extract features more discriminative than its input: too weak a network, too \
                     little or too easy training (random pairs are mostly trivially different), or a loss that teaches \
                     only a verifier.",
                    "Train longer with P×K batches (sampler kind = \"pk\") and mining, augmentation, and a deeper encoder \
                     (encoder kind = \"convnet\"); check the learning rate is not too low.",
                ),
            );
        }
    }

    // overfitting
    if let Some(gz) = &m.generalization {
        let gap_p1 = gz.train_precision_at_1 - gz.val_precision_at_1;
        let gap_auc = gz.train_roc_auc - gz.val_roc_auc;
        if gap_p1 > 0.08 || gap_auc > 0.05 {
            out.push(
                finding(
                    Kind::Overfitting,
                    Severity::Warning,
                    format!(
                        "training figures are far better than validation: precision@1 {:.3} vs {:.3}, ROC-AUC {:.3} vs {:.3}",
                        gz.train_precision_at_1, gz.val_precision_at_1, gz.train_roc_auc, gz.val_roc_auc
                    ),
                )
                .with("train-precision-at-1", gz.train_precision_at_1)
                .with("val-precision-at-1", gz.val_precision_at_1)
                .with("train-roc-auc", gz.train_roc_auc)
                .with("val-roc-auc", gz.val_roc_auc)
                .explain(
                    "The network memorised its training images instead of learning what makes two images alike.",
                    "Add augmentation, weight decay and early stopping (validation.patience); use more data or a smaller \
                     encoder; keep the model from the best validation, which siam does by default.",
                ),
            );
        }
    }
    if let Some(h) = &m.history
        && h.validations.len() >= 3
        && !out.iter().any(|f| f.kind == Kind::Overfitting)
    {
        let sign = if h.higher_is_better { 1.0 } else { -1.0 };
        let (bi, best) = h
            .validations
            .iter()
            .enumerate()
            .max_by(|a, b| (sign * a.1.metric).total_cmp(&(sign * b.1.metric)))
            .map(|(i, v)| (i, v.metric))
            .unwrap_or((0, 0.0));
        let last = h.validations.last().map_or(best, |v| v.metric);
        let drop = sign * (best - last);
        let loss_at = |step: u64| {
            h.steps
                .iter()
                .filter(|s| s.step <= step)
                .filter_map(|s| s.loss)
                .next_back()
        };
        let train_fell = match (
            loss_at(h.validations[bi].step),
            h.steps.last().and_then(|s| s.loss),
        ) {
            (Some(a), Some(b)) => b < 0.9 * a,
            _ => false,
        };
        if bi + 1 < h.validations.len() && drop > 0.02 * best.abs().max(0.1) && train_fell {
            out.push(
                finding(
                    Kind::Overfitting,
                    Severity::Warning,
                    format!(
                        "validation {} fell from {:.3} (step {}) to {:.3} while the training loss kept falling",
                        h.metric, best, h.validations[bi].step, last
                    ),
                )
                .with("best-validation-metric", best)
                .with("last-validation-metric", last)
                .with("best-step", h.validations[bi].step as f64)
                .explain(
                    "After its best validation the network fits the training pairs better and generalises worse.",
                    "Keep the best model (siam does), and set validation.patience to stop early; add augmentation or \
                     weight decay.",
                ),
            );
        }
    }

    // stale-threshold
    match m.stored_threshold {
        Some(t) => {
            let at_stored = m.verification.balanced_accuracy;
            if m.best_balanced_accuracy - at_stored > 0.03 {
                out.push(
                    finding(
                        Kind::StaleThreshold,
                        Severity::Warning,
                        format!(
                            "the stored threshold {t:.4} gives balanced accuracy {at_stored:.3} here; {:.4} would give {:.3}",
                            m.best_threshold, m.best_balanced_accuracy
                        ),
                    )
                    .with("stored-threshold", f64::from(t))
                    .with("best-threshold", f64::from(m.best_threshold))
                    .with("balanced-accuracy-at-stored", at_stored)
                    .with("best-balanced-accuracy", m.best_balanced_accuracy)
                    .explain(
                        "The threshold was calibrated on other data (or before the weights changed); distances on this \
                         data sit on another scale, so the verdicts are biased to one side.",
                        "Recalibrate on validation pairs from this data: `siam calibrate --model M --data D --out M2` \
                         (do not tune it on the test pairs you report).",
                    ),
                );
            }
        }
        None => out.push(
            finding(
                Kind::StaleThreshold,
                Severity::Warning,
                "the model file stores no threshold, so it cannot give verdicts".into(),
            )
            .with("best-threshold", f64::from(m.best_threshold))
            .explain(
                "Without a calibrated threshold a distance cannot be turned into same/different.",
                "Calibrate on validation pairs: `siam calibrate --model M --data D --out M2`.",
            ),
        ),
    }

    // pair-imbalance
    let one_sided = m.true_accept_rate < 0.1 || m.true_reject_rate < 0.1;
    if let Some(p) = c.positive_fraction
        && !(0.2..=0.8).contains(&p)
    {
        out.push(
            finding(
                Kind::PairImbalance,
                Severity::Warning,
                format!(
                    "the training pairs were {:.0}% same pairs",
                    100.0 * p
                ),
            )
            .with("positive-fraction", p)
            .with("true-accept-rate", m.true_accept_rate)
            .with("true-reject-rate", m.true_reject_rate)
            .explain(
                "With skewed pairs the loss is dominated by one kind, and accuracy rewards always answering the common \
                 verdict.",
                "Draw balanced pairs (sampler positive-fraction = 0.5) or P×K batches; judge by ROC-AUC and balanced \
                 accuracy, which siam reports.",
            ),
        );
    } else if one_sided && v.roc_auc >= 0.45 {
        let says = if m.true_accept_rate < 0.1 {
            "different"
        } else {
            "same"
        };
        out.push(
            finding(
                Kind::PairImbalance,
                Severity::Warning,
                format!(
                    "at its threshold the model nearly always answers \"{says}\": true-accept rate {:.3}, true-reject rate {:.3}",
                    m.true_accept_rate, m.true_reject_rate
                ),
            )
            .with("true-accept-rate", m.true_accept_rate)
            .with("true-reject-rate", m.true_reject_rate)
            .with("balanced-accuracy", v.balanced_accuracy)
            .explain(
                format!("Its accuracy is no better than always answering \"{says}\"; the threshold or the training pairs were skewed toward one verdict."),
                "Recalibrate the threshold on balanced validation pairs and train on balanced pairs or P×K batches.",
            ),
        );
    }

    // class-imbalance
    for (counts, which) in [
        (Some(&c.class_counts), "the diagnosed data"),
        (c.train_class_counts.as_ref(), "the training split"),
    ] {
        let Some(counts) = counts else { continue };
        let present: Vec<usize> = counts.iter().map(|x| x.1).collect();
        let (lo, hi) = (
            present.iter().copied().min().unwrap_or(0),
            present.iter().copied().max().unwrap_or(0),
        );
        if counts.len() >= 2 && (lo < 2 || hi as f64 > 5.0 * lo as f64) {
            let small = counts
                .iter()
                .min_by_key(|x| x.1)
                .map_or(String::new(), |x| x.0.clone());
            out.push(
                finding(
                    Kind::ClassImbalance,
                    Severity::Warning,
                    format!(
                        "class sizes in {which} range from {lo} ({small}) to {hi} images"
                    ),
                )
                .with("smallest-class", lo as f64)
                .with("largest-class", hi as f64)
                .with("classes", counts.len() as f64)
                .explain(
                    "Large classes dominate random pairs and retrieval averages; small classes get few same pairs and \
                     their embeddings stay loose.",
                    "Use P×K batches (each batch takes P classes uniformly), collect more images of the small classes, \
                     and read per-class figures before trusting the averages.",
                ),
            );
        }
    }
}
