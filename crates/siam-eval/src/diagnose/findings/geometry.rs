//! The embedding space: collapse, inconsistent eval-mode outputs (BatchNorm), a margin that
//! does not fit the scale.

use super::*;

pub(super) fn geometry(m: &Measurements, out: &mut Vec<Finding>) {
    let c = &m.context;
    let g = &m.geometry;
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
}
