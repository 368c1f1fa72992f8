//! Retrieval metrics from embeddings and class labels, with pytorch-metric-learning's
//! conventions: precision@1, R-precision and MAP@R, where R is the number of gallery items of
//! the query's class. Leave-one-out within a query set (the query itself is excluded), or
//! query versus gallery. Exact nearest neighbours in chunks of queries, so memory stays at
//! `chunk × gallery` distances.

use candle_core::Tensor;
use rayon::prelude::*;
use siam_model::Distance;

use crate::error::{EvalError, Result};

/// Retrieval figures, averaged over queries that have at least one relevant gallery item.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RetrievalReport {
    /// Queries counted.
    pub queries: usize,
    /// Share of queries whose nearest neighbour has their class.
    pub precision_at_1: f64,
    /// Mean share of the query's class among its R nearest neighbours.
    pub r_precision: f64,
    /// Mean average precision at R.
    pub map_at_r: f64,
}

/// Per-query (P@1, R-precision, AP@R) from neighbours sorted by distance.
fn score(neighbours: &[(f32, u32)], labels: &[u32], label: u32, r: usize) -> (f64, f64, f64) {
    let mut hits = 0usize;
    let mut ap = 0.0;
    for (i, &(_, j)) in neighbours.iter().take(r).enumerate() {
        if labels[j as usize] == label {
            hits += 1;
            ap += hits as f64 / (i + 1) as f64;
        }
    }
    let p1 = f64::from(u8::from(labels[neighbours[0].1 as usize] == label));
    (p1, hits as f64 / r as f64, ap / r as f64)
}

/// Retrieval metrics of `query` (N, D) with `query_labels`; against `gallery` when given, else
/// leave-one-out within the queries. Distances are `distance`; `chunk` queries at a time.
pub fn retrieval(
    query: &Tensor,
    query_labels: &[u32],
    gallery: Option<(&Tensor, &[u32])>,
    distance: Distance,
    chunk: usize,
) -> Result<RetrievalReport> {
    let leave_one_out = gallery.is_none();
    let (g, g_labels) = gallery.unwrap_or((query, query_labels));
    let n = query.dim(0)?;
    if n != query_labels.len() || g.dim(0)? != g_labels.len() {
        return Err(EvalError::Invalid("every embedding needs one label".into()));
    }
    let max_label = g_labels
        .iter()
        .chain(query_labels)
        .copied()
        .max()
        .unwrap_or(0) as usize;
    let mut counts = vec![0usize; max_label + 1];
    for &l in g_labels {
        counts[l as usize] += 1;
    }
    let (mut sum_p1, mut sum_rp, mut sum_ap, mut counted) = (0.0, 0.0, 0.0, 0usize);
    let mut start = 0;
    while start < n {
        let k = chunk.max(1).min(n - start);
        let d: Vec<Vec<f32>> = distance
            .pairwise(&query.narrow(0, start, k)?, g)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?;
        let scores: Vec<Option<(f64, f64, f64)>> = d
            .into_par_iter()
            .enumerate()
            .map(|(row, dists)| {
                let q = start + row;
                let label = query_labels[q];
                let r = counts[label as usize] - usize::from(leave_one_out);
                if r == 0 {
                    return None;
                }
                let mut cand: Vec<(f32, u32)> = dists
                    .into_iter()
                    .enumerate()
                    .filter(|&(j, _)| !(leave_one_out && j == q))
                    .map(|(j, v)| (v, j as u32))
                    .collect();
                let cmp = |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
                if r < cand.len() {
                    cand.select_nth_unstable_by(r, cmp);
                    cand.truncate(r);
                }
                cand.sort_unstable_by(cmp);
                Some(score(&cand, g_labels, label, r))
            })
            .collect();
        for (p1, rp, ap) in scores.into_iter().flatten() {
            sum_p1 += p1;
            sum_rp += rp;
            sum_ap += ap;
            counted += 1;
        }
        start += k;
    }
    if counted == 0 {
        return Err(EvalError::Invalid(
            "no query has a relevant gallery item (every class needs two images)".into(),
        ));
    }
    let c = counted as f64;
    Ok(RetrievalReport {
        queries: counted,
        precision_at_1: sum_p1 / c,
        r_precision: sum_rp / c,
        map_at_r: sum_ap / c,
    })
}
