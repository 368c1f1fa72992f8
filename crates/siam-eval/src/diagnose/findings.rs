//! The rules: [`findings`] turns [`Measurements`] into [`Finding`]s, one block per kind.

use super::*;

/// The largest distance two unit vectors can have under `kind`.
fn sphere_diameter(kind: Distance) -> f64 {
    match kind {
        Distance::Euclidean | Distance::Cosine => 2.0,
        Distance::SquaredEuclidean => 4.0,
    }
}

fn round2(x: f64) -> f64 {
    if !(x > 0.0) || !x.is_finite() {
        return x;
    }
    let p = 10f64.powf(x.log10().floor() - 1.0);
    (x / p).round() * p
}

/// The loss a collapsed model (every distance ≈ 0) sits at, when it can be told.
fn collapsed_loss(c: &Context) -> Option<f64> {
    let m = c.margin?;
    match c.loss.as_deref()? {
        "triplet" => Some(m),
        "contrastive" => Some(c.different_share? * m * m),
        _ => None,
    }
}

/// The findings the measurements support, worst first. A healthy model gets none.
pub fn findings(m: &Measurements) -> Vec<Finding> {
    let mut out = Vec::new();
    let c = &m.context;
    let g = &m.geometry;
    let v = &m.verification;

    // non-finite
    let history_nan = m.history.as_ref().map_or(0, |h| {
        h.steps.iter().filter(|s| s.loss.is_none()).count() + usize::from(h.diverged.is_some())
    });
    if !m.non_finite_weights.is_empty() || m.non_finite_embeddings > 0 || history_nan > 0 {
        let mut what = Vec::new();
        if !m.non_finite_weights.is_empty() {
            what.push(format!(
                "weights {}",
                m.non_finite_weights
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if m.non_finite_embeddings > 0 {
            what.push(format!("{} embeddings", m.non_finite_embeddings));
        }
        if let Some(d) = m.history.as_ref().and_then(|h| h.diverged.as_ref()) {
            what.push(format!("the run log ({d})"));
        } else if history_nan > 0 {
            what.push("the run's loss history".into());
        }
        out.push(
            finding(
                Kind::NonFinite,
                Severity::Error,
                format!("NaN or infinity in {}", what.join("; ")),
            )
            .with("non-finite-weight-tensors", m.non_finite_weights.len() as f64)
            .with("non-finite-embeddings", m.non_finite_embeddings as f64)
            .with("non-finite-loss-records", history_nan as f64)
            .explain(
                "Training diverged: a learning rate too high for the model, a margin far from the embedding scale, \
                 unnormalised inputs, or a square root of zero in a hand-written distance (siam's distances add ε under \
                 the root, so their gradient at d = 0 is finite). Once a weight is NaN every output it touches is NaN.",
                "Retrain from the last good checkpoint with a 10x lower learning rate (--lr), normalised inputs and \
                 embeddings (model.normalize = true), and a margin that fits the scale; never use this file for decisions.",
            ),
        );
    }

    // over-specialised: worse than a baseline where training figures are good
    if let (Some(px), Some(un)) = (m.pixels_precision_at_1, m.untrained_precision_at_1) {
        let p1 = m.retrieval.precision_at_1;
        let cb = m.classes.as_ref();
        let unseen = cb.and_then(|c| {
            let b = c
                .unseen_untrained_precision_at_1?
                .max(c.unseen_pixels_precision_at_1?);
            Some((c.unseen_precision_at_1?, b))
        });
        let worse_here = p1 + 0.005 < px.max(un);
        let worse_unseen = unseen.is_some_and(|(u, b)| u + 0.005 < b);
        let train_p1 = m.generalization.as_ref().map(|g| g.train_precision_at_1);
        let worse_auc = m
            .untrained_roc_auc
            .is_some_and(|u| m.verification.roc_auc + 0.05 < u);
        // Training helped where it trained, and far more than where it did not: the seen
        // classes against the untrained encoder on the same images (P@1 of different class
        // subsets is not comparable), gaining at least 3 points more than the unseen ones.
        let helped_seen = cb.is_some_and(|c| {
            match (
                c.seen_precision_at_1,
                c.seen_untrained_precision_at_1,
                c.unseen_precision_at_1,
                c.unseen_untrained_precision_at_1,
            ) {
                (Some(s), Some(su), Some(u), Some(uu)) => s >= su && (s - su) - (u - uu) > 0.03,
                _ => false,
            }
        });
        // Or on the run's own training sample against the untrained encoder on it, by at least
        // 3 points more than here.
        let helped_training = m.generalization.as_ref().is_some_and(|g| {
            g.train_untrained_precision_at_1.is_some_and(|u| {
                let gain = g.train_precision_at_1 - u;
                gain >= 0.0 && gain - (p1 - un) > 0.03
            })
        });
        let good_in_training = helped_seen || helped_training;
        if (worse_here || worse_unseen || worse_auc) && good_in_training {
            let (what, have, base) = match unseen {
                Some((u, b)) if worse_unseen => ("on the classes it never saw", u, b),
                _ => ("on this data", p1, px.max(un)),
            };
            let mut f = finding(
                Kind::OverSpecialised,
                Severity::Warning,
                format!(
                    "training made the encoder worse than {} {what}: precision@1 {have:.3} against {base:.3}, while it \
                     separates its training classes well",
                    if px >= un { "raw pixels" } else { "untrained" },
                ),
            )
            .with("precision-at-1", p1)
            .with("pixels-precision-at-1", px)
            .with("untrained-precision-at-1", un)
            .with("roc-auc", m.verification.roc_auc);
            if let Some(a) = m.untrained_roc_auc {
                f = f.with("untrained-roc-auc", a);
            }
            if let Some(t) = train_p1 {
                f = f.with("train-precision-at-1", t);
            }
            if let Some(u) = m
                .generalization
                .as_ref()
                .and_then(|g| g.train_untrained_precision_at_1)
            {
                f = f.with("train-untrained-precision-at-1", u);
            }
            if let Some(c) = cb {
                for (name, v) in [
                    ("seen-classes", Some(c.seen_classes as f64)),
                    ("unseen-classes", Some(c.unseen_classes as f64)),
                    ("seen-precision-at-1", c.seen_precision_at_1),
                    (
                        "seen-untrained-precision-at-1",
                        c.seen_untrained_precision_at_1,
                    ),
                    ("unseen-precision-at-1", c.unseen_precision_at_1),
                    (
                        "unseen-untrained-precision-at-1",
                        c.unseen_untrained_precision_at_1,
                    ),
                    (
                        "unseen-pixels-precision-at-1",
                        c.unseen_pixels_precision_at_1,
                    ),
                ] {
                    if let Some(v) = v {
                        f = f.with(name, v);
                    }
                }
            }
            if let Some(h) = m.history.as_ref().filter(|h| !h.validations.is_empty()) {
                let sign = if h.higher_is_better { 1.0 } else { -1.0 };
                let best = h
                    .validations
                    .iter()
                    .enumerate()
                    .max_by(|a, b| (sign * a.1.metric).total_cmp(&(sign * b.1.metric)))
                    .map_or(0, |(i, _)| i);
                f = f
                    .with("best-validation", (best + 1) as f64)
                    .with("validations", h.validations.len() as f64);
            }
            out.push(f.explain(
                "The supervised loss learned only what tells the training classes apart and discarded what the \
                 untrained network already separated: the encoder is specialised to its training classes. Training \
                 longer, or a deeper encoder, specialises it further.",
                "Stop earlier: hold classes out with data.class-split so that validation measures classes the model \
                 never trains on, validate every epoch and keep the best (validation.patience = 1); train on more, or \
                 more varied, classes. Stronger augmentation (augment.resized-crop-min, augment.erase-probability) or a \
                 self-supervised term ([self-supervised] weight = 0.3) may help; measure them on held-out classes.",
            ));
        }
    }

    // inverted-labels: same pairs farther apart than different ones, or training that took
    // the distances from informative (untrained) to uninformative. A network trained with the
    // convention flipped cannot push every class apart from itself on unseen images; it ends
    // near ROC-AUC 0.5, below where an untrained encoder of its shape starts.
    // Training that destroyed the signal on classes it never saw, while it helped on its own,
    // is over-specialisation (above), not a flipped convention (which would spoil both).
    let unlearned = c.trained
        && !out.iter().any(|f| f.kind == Kind::OverSpecialised)
        && m.untrained_roc_auc
            .is_some_and(|u| v.roc_auc < 0.6 && v.roc_auc < u - 0.1);
    if unlearned && v.roc_auc >= 0.45 {
        let u = m.untrained_roc_auc.unwrap_or(f64::NAN);
        out.push(
            finding(
                Kind::InvertedLabels,
                Severity::Error,
                format!(
                    "training destroyed the same/different signal: ROC-AUC {:.3}, where an untrained encoder of this shape reaches {u:.3}",
                    v.roc_auc
                ),
            )
            .with("roc-auc", v.roc_auc)
            .with("untrained-roc-auc", u)
            .with("same-mean-distance", m.stats.same_mean)
            .with("different-mean-distance", m.stats.different_mean)
            .explain(
                "Training pushed same pairs apart and pulled different pairs together until distances said nothing: the signature of the similar/dissimilar convention flipped between the pair labels and the loss (a loss written for label 1 = dissimilar fed with 1 = same). Labels that are pure noise end the same way.",
                "Check the pair labels against the loss: siam's convention is same = 1.0 for a same-class pair, and the contrastive loss is same·d² + (1 − same)·max(0, m − d)². Fix one of them and retrain.",
            ),
        );
    }
    if v.roc_auc < 0.45 {
        out.push(
            finding(
                Kind::InvertedLabels,
                Severity::Error,
                format!(
                    "same pairs lie farther apart than different pairs (ROC-AUC {:.3} < 0.5)",
                    v.roc_auc
                ),
            )
            .with("roc-auc", v.roc_auc)
            .with("same-mean-distance", m.stats.same_mean)
            .with("different-mean-distance", m.stats.different_mean)
            .explain(
                "The model learned the opposite of what it should: the similar/dissimilar convention was flipped \
                 somewhere (a loss written for label 1 = dissimilar fed with 1 = same, or labels inverted when building \
                 pairs). Reading its distances the other way round would give ROC-AUC 1 − AUC.",
                "Check the pair labels: siam's convention is same = 1.0 for a same-class pair; the contrastive loss is \
                 same·d² + (1 − same)·max(0, m − d)². Fix the labels or the loss and retrain.",
            ),
        );
    }

    // collapse
    let diameter = if c.normalized {
        sphere_diameter(c.distance)
    } else {
        f64::NAN
    };
    let single_point = g.mean_pairwise_distance <= 1e-6 * g.mean_norm.max(1.0)
        || (c.normalized && g.mean_pairwise_distance < 0.02 * diameter);
    let below_margin = c
        .margin
        .is_some_and(|mg| m.stats.different_mean < 0.1 * mg && c.loss.as_deref() != Some("bce"));
    let line = g.dims >= 4 && g.effective_rank < 1.5;
    let stuck = match (collapsed_loss(c), m.history.as_ref()) {
        (Some(cl), Some(h)) => {
            let tail: Vec<f64> = h
                .steps
                .iter()
                .rev()
                .take(5)
                .filter_map(|s| s.loss)
                .collect();
            !tail.is_empty() && tail.iter().all(|l| (l - cl).abs() <= 0.05 * cl)
        }
        _ => false,
    };
    if single_point || below_margin || line || (stuck && g.effective_rank < 4.0) {
        let mut f = finding(
            Kind::Collapse,
            if single_point || below_margin {
                Severity::Error
            } else {
                Severity::Warning
            },
            if single_point {
                format!(
                    "embeddings crowd into one point: mean pairwise distance {:.3e}",
                    g.mean_pairwise_distance
                )
            } else if below_margin {
                format!(
                    "the embedding space collapsed: different pairs lie {:.3} apart on average, {:.1}% of the margin {}",
                    m.stats.different_mean,
                    100.0 * m.stats.different_mean / c.margin.unwrap_or(1.0),
                    c.margin.unwrap_or(1.0)
                )
            } else {
                format!(
                    "embeddings lie along a line: effective rank {:.2} of {} dimensions",
                    g.effective_rank, g.dims
                )
            },
        )
        .with("mean-pairwise-distance", g.mean_pairwise_distance)
        .with("mean-dim-variance", g.mean_dim_variance)
        .with("effective-rank", g.effective_rank)
        .with("dead-dims", g.dead_dims as f64)
        .with("different-mean-distance", m.stats.different_mean);
        if let Some(mg) = c.margin {
            f = f.with("margin", mg);
        }
        if stuck {
            f = f.with("collapsed-loss", collapsed_loss(c).unwrap_or(f64::NAN));
        }
        out.push(f.explain(
            "Every image maps to nearly the same embedding, so distances carry little information and the verdict \
             flips on noise. Causes: a learning rate that drove the ReLUs dead, batch-hard mining from a random start \
             (the loss settles at the margin with all distances ≈ 0), or a margin the network cannot reach.",
            "Lower the learning rate (10x) and add warmup; use semi-hard or batch-all mining, or the contrastive loss \
             with P×K batches, before batch-hard; normalise embeddings (model.normalize = true) with a margin of about \
             1 (contrastive) or 0.2 (triplet).",
        ));
    }

    // eval-mode
    let k = &m.consistency;
    let stale_bn = c.trained && k.batchnorm_layers > 0 && k.batchnorm_at_init == k.batchnorm_layers;
    let shifted = k.train_eval_shift.is_some_and(|s| s > 1.0);
    if k.alone_vs_batch > 1e-3 || k.repeat > 1e-5 || k.asymmetry > 1e-4 || stale_bn || shifted {
        let summary = if k.alone_vs_batch > 1e-3 {
            format!(
                "an image embedded alone differs from the same image inside a batch (by {:.2e} of the norm)",
                k.alone_vs_batch
            )
        } else if k.repeat > 1e-5 {
            format!(
                "embedding the same batch twice gives different results (by {:.2e})",
                k.repeat
            )
        } else if k.asymmetry > 1e-4 {
            format!("d(a, b) ≠ d(b, a) (by {:.2e})", k.asymmetry)
        } else if stale_bn {
            format!(
                "the {} BatchNorm layers hold their initial statistics (mean 0, variance 1): they were never updated",
                k.batchnorm_layers
            )
        } else {
            format!(
                "BatchNorm's stored statistics do not match this data: batch statistics move embeddings by {:.2}× the mean pairwise distance",
                k.train_eval_shift.unwrap_or(0.0)
            )
        };
        let mut f = finding(
            Kind::EvalMode,
            if stale_bn || k.alone_vs_batch > 1e-3 || k.repeat > 1e-5 || k.asymmetry > 1e-4 {
                Severity::Error
            } else {
                Severity::Warning
            },
            summary,
        )
        .with("alone-vs-batch", k.alone_vs_batch)
        .with("repeat", k.repeat)
        .with("asymmetry", k.asymmetry)
        .with("batchnorm-layers", k.batchnorm_layers as f64)
        .with("batchnorm-at-init", k.batchnorm_at_init as f64);
        if let Some(s) = k.train_eval_shift {
            f = f.with("train-eval-shift", s);
        }
        out.push(f.explain(
            "Inference in training mode normalises each image with the statistics of its batch and applies dropout, \
             so the same pair gets a different distance depending on what else is in the batch; BatchNorm statistics \
             that were never updated (or come from other data) shift every embedding the same wrong way.",
            "Embed in eval mode (siam's embed and compare always do); make sure training updates BatchNorm's running \
             statistics (train with batches of at least 16 images), or recompute them on training data before export.",
        ));
    }

    // margin-scale
    if let (Some(mg), Some(loss)) = (c.margin, c.loss.as_deref())
        && loss != "bce"
        && !single_point
        && !below_margin
    {
        let suggested = if c.normalized {
            if loss == "triplet" { 0.2 } else { 1.0 }
        } else {
            round2(m.different_median)
        };
        if c.normalized && mg >= diameter {
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Error,
                    format!(
                        "margin {mg} cannot be reached: normalised embeddings are at most {diameter} apart"
                    ),
                )
                .with("margin", mg)
                .with("largest-possible-distance", diameter)
                .with("different-beyond-margin", m.stats.different_beyond_margin)
                .with("suggested-margin", suggested)
                .explain(
                    "Every different pair stays inside the margin and keeps pushing, so the loss never settles and the \
                     push dominates the pull of same pairs.",
                    format!("Set the margin to about {suggested} (loss.margin = {suggested}, or --margin {suggested})."),
                ),
            );
        } else if loss == "contrastive"
            && (m.stats.different_beyond_margin < 0.02
                || (!c.normalized && m.stats.different_beyond_margin < 0.2))
        {
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Warning,
                    format!(
                        "margin {mg} is far beyond the embedding scale: only {:.1}% of different pairs reach it (median different distance {:.3})",
                        100.0 * m.stats.different_beyond_margin,
                        m.different_median
                    ),
                )
                .with("margin", mg)
                .with("different-beyond-margin", m.stats.different_beyond_margin)
                .with("different-median-distance", m.different_median)
                .with("same-p95-distance", m.same_p95)
                .with("mean-embedding-norm", g.mean_norm)
                .with("suggested-margin", suggested)
                .explain(
                    "Nearly all different pairs still violate the margin, so the loss is dominated by pushing them apart; \
                     the scale of the embeddings keeps growing and same pairs are pulled together weakly.",
                    format!("Set the margin near the different pairs' median distance: about {suggested}; or normalise embeddings with margin 1."),
                ),
            );
        } else if loss == "contrastive"
            && m.stats.different_beyond_margin > 0.995
            && m.stats.same_inside_margin > 0.995
            && !c.normalized
        {
            let sugg = round2(0.5 * (m.same_p95 + m.different_median));
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Info,
                    format!(
                        "margin {mg} is easy for this model: {:.1}% of different pairs are beyond it and {:.1}% of same pairs inside",
                        100.0 * m.stats.different_beyond_margin,
                        100.0 * m.stats.same_inside_margin
                    ),
                )
                .with("margin", mg)
                .with("different-beyond-margin", m.stats.different_beyond_margin)
                .with("same-inside-margin", m.stats.same_inside_margin)
                .with("suggested-margin", sugg)
                .explain(
                    "Different pairs beyond the margin no longer contribute to the loss; further training only pulls same \
                     pairs together.",
                    format!("Nothing to fix if the figures are good; a margin of about {sugg} keeps more pairs teaching."),
                ),
            );
        } else if loss == "contrastive"
            && !c.normalized
            && mg <= 2.0
            && m.different_median > 20.0 * mg
        {
            out.push(
                finding(
                    Kind::MarginScale,
                    Severity::Warning,
                    format!(
                        "margin {mg} looks chosen for the unit sphere but embeddings are not normalised: different pairs are {:.1}× the margin apart",
                        m.different_median / mg
                    ),
                )
                .with("margin", mg)
                .with("different-median-distance", m.different_median)
                .with("suggested-margin", suggested)
                .explain(
                    "A margin of about 1 fits L2-normalised embeddings; on an unnormalised space the scale is free and the \
                     margin only fixes it, which leaves distances far from the margin in either direction.",
                    format!("Normalise embeddings (model.normalize = true) and keep margin 1, or set the margin to about {suggested}."),
                ),
            );
        }
    }

    // weak-features
    if let (Some(px), Some(un)) = (m.pixels_precision_at_1, m.untrained_precision_at_1)
        && !out.iter().any(|f| f.kind == Kind::OverSpecialised)
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

    out.extend(super::inputs::unfamiliar_inputs(m));

    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}
