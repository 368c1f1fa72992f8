//! The rules: [`findings`] turns [`Measurements`] into [`Finding`]s, one block per kind, in
//! three groups: `signal.rs` (non-finite, over-specialised, inverted labels), `geometry.rs`
//! (collapse, eval-mode, margin-scale), `optimisation.rs` (learning rate too high or too low,
//! dead units), `fit.rs` (weak features, overfitting, stale threshold, pair and class
//! imbalance), `data.rs` (label noise, duplicates, degenerate images); `inputs.rs` one level
//! up adds unfamiliar inputs.

use super::*;

mod data;
mod fit;
mod geometry;
mod optimisation;
mod signal;

pub use data::data_findings;
pub use optimisation::{LrEvidence, lr_evidence};

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
    signal::signal(m, &mut out);
    geometry::geometry(m, &mut out);
    optimisation::optimisation(m, &mut out);
    fit::fit(m, &mut out);
    out.extend(super::inputs::unfamiliar_inputs(m));
    out.extend(data::data_findings(m));

    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}
