//! Whether the model carries a signal at all: non-finite values, over-specialisation to the
//! training classes, inverted labels.

use super::*;

pub(super) fn signal(m: &Measurements, out: &mut Vec<Finding>) {
    let c = &m.context;
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
                 more varied, classes. With the default recipe, train with --preset unseen (a self-supervised term \
                 over two views of each image, the supervised loss over both: on Fashion-MNIST it kept three draws of \
                 held-out classes above the untrained encoder where the default fell below it, for about a point of \
                 P@1 on the trained classes); measure it on held-out classes.",
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
}
