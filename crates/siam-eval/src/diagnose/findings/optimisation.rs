//! How the run optimised: a learning rate too high or too low (from the run's logged weight
//! norms, update sizes, gradient norms and losses, with the config's rate), and dead ReLU
//! units (measured on the data).

use super::*;

/// What the run's history says about its learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrEvidence {
    /// The weights' norm at the last logged step over their norm before training (else at the
    /// first logged step).
    pub weight_growth: f64,
    /// Median `‖Δθ‖ / ‖θ‖` over the steps logged at half the peak rate or more.
    pub update_ratio: f64,
    /// Median gradient norm over the second half of the run over the first window's.
    pub grad_decay: Option<f64>,
    /// Largest gradient norm over the median window's mean (spikes).
    pub grad_spike: Option<f64>,
    /// Share of the first window's loss the run took off by its best window.
    pub loss_drop: Option<f64>,
    /// Relative fall of the loss over the last third of the logged steps (mean of the last
    /// third's second half against its first half); positive: still falling.
    pub final_fall: Option<f64>,
    /// Whether the best validation was the last one.
    pub best_is_last: bool,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// The learning-rate evidence of a history, when it logged weight norms and update sizes
/// (runs of siam before it logged them give `None`) over at least four records.
pub fn lr_evidence(h: &History) -> Option<LrEvidence> {
    let s: Vec<&HistoryStep> = h
        .steps
        .iter()
        .filter(|s| s.weight_norm.is_some() && s.update_ratio.is_some())
        .collect();
    if s.len() < 4 {
        return None;
    }
    let first_w = h.initial_weight_norm.or(s[0].weight_norm)?;
    let last_w = s[s.len() - 1].weight_norm?;
    if !(first_w > 0.0) {
        return None;
    }
    let peak = s.iter().filter_map(|x| x.lr).fold(0.0, f64::max);
    let update_ratio = median(
        s.iter()
            .filter(|x| x.lr.is_none_or(|lr| lr >= 0.5 * peak))
            .filter_map(|x| x.update_ratio)
            .collect(),
    )?;
    let grads: Vec<f64> = s.iter().filter_map(|x| x.grad_norm).collect();
    let grad_decay = match (grads.first(), median(grads[grads.len() / 2..].to_vec())) {
        (Some(&g0), Some(late)) if g0 > 0.0 => Some(late / g0),
        _ => None,
    };
    let grad_spike = match (
        s.iter().filter_map(|x| x.grad_norm_max).reduce(f64::max),
        median(grads.clone()),
    ) {
        (Some(mx), Some(med)) if med > 0.0 => Some(mx / med),
        _ => None,
    };
    let losses: Vec<f64> = h.steps.iter().filter_map(|x| x.loss).collect();
    let loss_drop = match (losses.first(), losses.iter().copied().reduce(f64::min)) {
        (Some(&l0), Some(best)) if l0 > 0.0 => Some((l0 - best) / l0),
        _ => None,
    };
    let tail = &losses[losses.len() - losses.len() / 3..];
    let final_fall = match (mean(&tail[..tail.len() / 2]), mean(&tail[tail.len() / 2..])) {
        (Some(a), Some(b)) if tail.len() >= 4 && a > 0.0 => Some((a - b) / a),
        _ => None,
    };
    let sign = if h.higher_is_better { 1.0 } else { -1.0 };
    let best_is_last = h.validations.len() >= 2
        && h.validations
            .iter()
            .enumerate()
            .max_by(|a, b| (sign * a.1.metric).total_cmp(&(sign * b.1.metric)))
            .is_some_and(|(i, _)| i + 1 == h.validations.len());
    Some(LrEvidence {
        weight_growth: last_w / first_w,
        update_ratio,
        grad_decay,
        grad_spike,
        loss_drop,
        final_fall,
        best_is_last,
    })
}

/// A learning rate as a config value: two significant digits.
fn lr_value(x: f64) -> String {
    format!("{:.1e}", round2(x))
}

/// The largest share of dead units in one layer, with the layer.
fn worst_layer(m: &Measurements) -> Option<(&siam_model::ReluActivity, f64)> {
    m.relu_activity
        .iter()
        .filter(|l| l.units >= 8)
        .map(|l| (l, l.dead as f64 / l.units as f64))
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

pub(super) fn optimisation(m: &Measurements, out: &mut Vec<Finding>) {
    let worse_than_untrained = m
        .untrained_precision_at_1
        .is_some_and(|u| m.retrieval.precision_at_1 < u - 0.005);
    let dead = worst_layer(m);
    let lr = m.context.lr;
    if let Some(e) = m.history.as_ref().and_then(lr_evidence)
        && !out.iter().any(|f| f.kind == Kind::NonFinite)
    {
        // lr-too-high: the weights ran away (a ReLU network's weights grow when each step
        // overshoots), or the updates are a large share of the weights.
        if e.weight_growth >= 3.0 || e.update_ratio >= 0.03 {
            let mut f = finding(
                Kind::LrTooHigh,
                if worse_than_untrained {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                format!(
                    "the learning rate{} is too high: the weights grew {:.1}x during training, updates of {:.1e} of the weights per step{}",
                    lr.map_or(String::new(), |x| format!(" ({x:.3e})")),
                    e.weight_growth,
                    e.update_ratio,
                    if worse_than_untrained {
                        ", and the model retrieves worse than it did untrained"
                    } else {
                        ""
                    }
                ),
            )
            .with("weight-growth", e.weight_growth)
            .with("update-ratio", e.update_ratio);
            if let Some(lr) = lr {
                f = f.with("lr", lr);
            }
            if let Some(g) = e.grad_decay {
                f = f.with("late-gradient-over-first", g);
            }
            if let Some(g) = e.grad_spike {
                f = f.with("largest-gradient-over-median", g);
            }
            if let Some(d) = e.loss_drop {
                f = f.with("loss-drop", d);
            }
            if let Some((l, share)) = dead {
                f = f.with(&format!("dead-units-{}", l.layer), share);
            }
            if let Some(u) = m.untrained_precision_at_1 {
                f = f
                    .with("precision-at-1", m.retrieval.precision_at_1)
                    .with("untrained-precision-at-1", u);
            }
            let to = lr.map_or("10x lower".to_string(), |x| {
                format!("lr = {} (10x lower)", lr_value(x / 10.0))
            });
            out.push(f.explain(
                "Each step overshoots: the weights grow instead of settling (a healthy run changes their norm by a few \
                 per cent), ReLU units are pushed where they never fire again, the gradient fades and the loss stalls \
                 above where a gentler rate takes it. The embedding ends up less informative than the untrained one.",
                format!(
                    "Retrain with {to} and a warmup (schedule.warmup-steps = 100 or more); `siam lr-find --config \
                     RUN/config.toml` measures the range that works on this data."
                ),
            ));
        } else if e.update_ratio < 1e-3
            && (e.best_is_last || e.final_fall.is_some_and(|x| x > 0.01))
        {
            // lr-too-low: tiny updates, and the run was still improving when it ended.
            let mut f = finding(
                Kind::LrTooLow,
                Severity::Warning,
                format!(
                    "the learning rate{} is too low: updates of {:.1e} of the weights per step, and the run was still improving when it ended",
                    lr.map_or(String::new(), |x| format!(" ({x:.3e})")),
                    e.update_ratio
                ),
            )
            .with("update-ratio", e.update_ratio)
            .with("weight-growth", e.weight_growth)
            .with("best-validation-is-last", f64::from(u8::from(e.best_is_last)));
            if let Some(lr) = lr {
                f = f.with("lr", lr);
            }
            if let Some(x) = e.final_fall {
                f = f.with("loss-fall-last-third", x);
            }
            let to = lr.map_or("3-10x higher".to_string(), |x| {
                format!("lr = {} (10x higher)", lr_value(x * 10.0))
            });
            out.push(f.explain(
                "Each step moves the weights by a tiny fraction (about 1e-3 of their norm is typical of a healthy \
                 Adam run at its peak rate), so the run ends long before the loss stops falling: the model is \
                 undertrained, not weak.",
                format!(
                    "Retrain with {to}, or find the rate with `siam lr-find --config RUN/config.toml`; training longer \
                     at this rate works too, but costs more."
                ),
            ));
        }
    }
    // dead-units: a quarter of a layer's units dead (a healthy run has a few per cent).
    if let Some((layer, share)) = dead {
        let (units, dead_total) = m
            .relu_activity
            .iter()
            .fold((0usize, 0usize), |(u, d), l| (u + l.units, d + l.dead));
        let overall = dead_total as f64 / units.max(1) as f64;
        if share >= 0.25 {
            let mut f = finding(
                Kind::DeadUnits,
                Severity::Warning,
                format!(
                    "{dead_total} of {units} ReLU units never fire on this data ({:.0} %); in {} {} of {} ({:.0} %)",
                    100.0 * overall,
                    layer.layer,
                    layer.dead,
                    layer.units,
                    100.0 * share
                ),
            )
            .with("dead-share", overall);
            for l in &m.relu_activity {
                f = f.with(
                    &format!("dead-{}", l.layer),
                    l.dead as f64 / l.units.max(1) as f64,
                );
            }
            let cause = if out.iter().any(|f| f.kind == Kind::LrTooHigh) {
                "a learning rate too high (see lr-too-high)"
            } else {
                "a learning rate too high, a large negative bias after a bad step, or inputs far from the \
                 normalisation the model expects"
            };
            out.push(f.explain(
                format!(
                    "A unit whose input is negative for every image outputs zero and passes no gradient: it can never \
                     learn again, and the network is that much smaller than it looks. The usual cause is {cause}."
                ),
                "Retrain with a lower learning rate and a warmup; check that the data's intensity range matches the \
                 model's input normalisation (siam info shows it).",
            ));
        }
    }
}
