//! Distance statistics of same and different pairs: where they lie against the margin and the
//! threshold, and quantiles to store in the model file.

use crate::error::{EvalError, Result};

/// Mean and spread of same and different pair distances, and their place against a margin.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistanceStats {
    /// Mean distance of same-class pairs.
    pub same_mean: f64,
    /// Standard deviation of same-class pair distances.
    pub same_std: f64,
    /// Mean distance of different-class pairs.
    pub different_mean: f64,
    /// Standard deviation of different-class pair distances.
    pub different_std: f64,
    /// The margin the shares refer to.
    pub margin: f64,
    /// Share of different pairs at or beyond the margin (they no longer contribute to the loss).
    pub different_beyond_margin: f64,
    /// Share of same pairs inside the margin.
    pub same_inside_margin: f64,
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n;
    (m, var.sqrt())
}

/// Statistics of pair distances against `margin`.
pub fn distance_stats(distances: &[f32], same: &[f32], margin: f64) -> Result<DistanceStats> {
    let (s, d) = split(distances, same)?;
    let (same_mean, same_std) = mean_std(&s);
    let (different_mean, different_std) = mean_std(&d);
    Ok(DistanceStats {
        same_mean,
        same_std,
        different_mean,
        different_std,
        margin,
        different_beyond_margin: d.iter().filter(|&&x| x >= margin).count() as f64 / d.len() as f64,
        same_inside_margin: s.iter().filter(|&&x| x < margin).count() as f64 / s.len() as f64,
    })
}

fn split(distances: &[f32], same: &[f32]) -> Result<(Vec<f64>, Vec<f64>)> {
    if distances.len() != same.len() {
        return Err(EvalError::Invalid(format!(
            "{} distances for {} same flags",
            distances.len(),
            same.len()
        )));
    }
    let mut s = Vec::new();
    let mut d = Vec::new();
    for (&x, &y) in distances.iter().zip(same) {
        if y == 1.0 {
            s.push(f64::from(x))
        } else {
            d.push(f64::from(x))
        }
    }
    if s.is_empty() || d.is_empty() {
        return Err(EvalError::Invalid(
            "distance statistics need both same and different pairs".into(),
        ));
    }
    Ok((s, d))
}

/// Quantiles 0, 1/(k−1), …, 1 of `v` with linear interpolation (NumPy's default).
pub fn quantiles(v: &[f64], k: usize) -> Vec<f32> {
    if v.is_empty() || k == 0 {
        return Vec::new();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (0..k)
        .map(|i| {
            let q = if k == 1 {
                0.5
            } else {
                i as f64 / (k - 1) as f64
            };
            let pos = q * (s.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            (s[lo] + (pos - lo as f64) * (s[hi] - s[lo])) as f32
        })
        .collect()
}

/// 21 quantiles (every 5 %) of same and different distances, for the model file.
pub fn distance_quantiles(
    distances: &[f32],
    same: &[f32],
) -> Result<siam_model::DistanceQuantiles> {
    let (s, d) = split(distances, same)?;
    Ok(siam_model::DistanceQuantiles {
        same: quantiles(&s, 21),
        different: quantiles(&d, 21),
    })
}

/// Where `d` falls in a sorted quantile table: the share of values below it (0–1, interpolated).
pub fn rank_in(quantiles: &[f32], d: f32) -> f64 {
    let k = quantiles.len();
    if k < 2 {
        return 0.5;
    }
    if d <= quantiles[0] {
        return 0.0;
    }
    for i in 1..k {
        if d <= quantiles[i] {
            let span = quantiles[i] - quantiles[i - 1];
            let a = if span > 0.0 {
                f64::from((d - quantiles[i - 1]) / span)
            } else {
                0.0
            };
            return (i as f64 - 1.0 + a) / (k - 1) as f64;
        }
    }
    1.0
}
