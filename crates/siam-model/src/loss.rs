//! Metric-learning losses as free functions that check shapes up front.
//!
//! Pair labels are always called `same`: 1.0 for a same-class pair, 0.0 otherwise.
//! The contrastive loss is Hadsell et al. 2006 without a ½ factor, averaged over pairs:
//! `mean( same·d² + (1−same)·max(0, m−d)² )`.

use candle_core::{D, DType, Result, Tensor};

use crate::distance::Distance;

fn check_vec(name: &str, t: &Tensor) -> Result<usize> {
    match t.dims() {
        [n] => Ok(*n),
        other => candle_core::bail!("{name} must have shape (N,), got {other:?}"),
    }
}

/// Checks that `same` holds only 0.0 and 1.0 (a flipped or soft label is a silent bug).
fn check_same(same: &Tensor, n: usize) -> Result<()> {
    let m = check_vec("same", same)?;
    if m != n {
        candle_core::bail!("same has {m} entries for {n} distances")
    }
    let v: Vec<f32> = same.to_dtype(DType::F32)?.to_vec1()?;
    if let Some(x) = v.iter().find(|x| **x != 0.0 && **x != 1.0) {
        candle_core::bail!("same must be 1.0 (same class) or 0.0 (different class), found {x}")
    }
    Ok(())
}

/// Contrastive loss `mean( same·d² + (1−same)·max(0, margin−d)² )`.
///
/// `distances` (N,) are pair distances (Euclidean for the usual form), `same` (N,) is 1.0 for
/// a same-class pair and 0.0 otherwise.
pub fn contrastive(distances: &Tensor, same: &Tensor, margin: f64) -> Result<Tensor> {
    contrastive_with(distances, same, margin, 0.0)
}

/// Contrastive loss with a positive margin: same pairs are only pulled in beyond `pos_margin`:
/// `mean( same·max(0, d−pos_margin)² + (1−same)·max(0, margin−d)² )`.
pub fn contrastive_with(
    distances: &Tensor,
    same: &Tensor,
    margin: f64,
    pos_margin: f64,
) -> Result<Tensor> {
    let n = check_vec("distances", distances)?;
    check_same(same, n)?;
    if !(margin > 0.0) || pos_margin < 0.0 || pos_margin >= margin {
        candle_core::bail!(
            "contrastive loss needs 0 ≤ pos-margin < margin, got {pos_margin} and {margin}"
        )
    }
    let same = same.to_dtype(distances.dtype())?;
    let pos = if pos_margin > 0.0 {
        (distances - pos_margin)?.relu()?.sqr()?
    } else {
        distances.sqr()?
    };
    let neg = (margin - distances)?.relu()?.sqr()?;
    let diff = (1.0 - &same)?;
    ((same * pos)? + (diff * neg)?)?.mean_all()
}

/// Triplet margin loss `mean( max(0, d(a,p) − d(a,n) + margin) )` from precomputed distances.
pub fn triplet(d_ap: &Tensor, d_an: &Tensor, margin: f64) -> Result<Tensor> {
    let n = check_vec("d_ap", d_ap)?;
    let m = check_vec("d_an", d_an)?;
    if n != m {
        candle_core::bail!("triplet loss: {n} anchor-positive and {m} anchor-negative distances")
    }
    ((d_ap - d_an)? + margin)?.relu()?.mean_all()
}

/// Binary cross-entropy with logits, `mean( max(x,0) − x·same + log(1 + e^−|x|) )`: the logit is
/// for "same class".
pub fn bce_with_logits(logits: &Tensor, same: &Tensor) -> Result<Tensor> {
    let n = check_vec("logits", logits)?;
    check_same(same, n)?;
    let same = same.to_dtype(logits.dtype())?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * same)?)? + softplus)?.mean_all()
}

/// Online triplet mining over a batch of embeddings with class labels (a P×K batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Every valid triplet; the loss averages over active (non-zero) ones.
    #[default]
    BatchAll,
    /// Per anchor, the farthest positive and the nearest negative.
    BatchHard,
    /// Triplets with d(a,p) < d(a,n) < d(a,p) + margin, averaged.
    SemiHard,
}

/// A mined loss and what the miner saw.
#[derive(Debug, Clone)]
pub struct MinedLoss {
    /// The scalar loss.
    pub loss: Tensor,
    /// Triplets that contributed.
    pub triplets: usize,
    /// Share of valid triplets with a non-zero loss (batch-all), or of anchors / candidates
    /// that contributed (batch-hard, semi-hard).
    pub active_fraction: f32,
}

/// Masks over a batch: `pos[i][j]` same class and i ≠ j, `neg[i][j]` different class.
fn masks(labels: &[u32], device: &candle_core::Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let n = labels.len();
    let mut pos = vec![0f32; n * n];
    let mut neg = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if labels[i] == labels[j] {
                if i != j {
                    pos[i * n + j] = 1.0;
                }
            } else {
                neg[i * n + j] = 1.0;
            }
        }
    }
    Ok((
        Tensor::from_vec(pos, (n, n), device)?.to_dtype(dtype)?,
        Tensor::from_vec(neg, (n, n), device)?.to_dtype(dtype)?,
    ))
}

/// Triplet loss with online mining over `embeddings` (N, D) and their class `labels`.
pub fn mined_triplet(
    embeddings: &Tensor,
    labels: &[u32],
    margin: f64,
    distance: Distance,
    mining: Mining,
) -> Result<MinedLoss> {
    let (n, _) = embeddings.dims2()?;
    if labels.len() != n {
        candle_core::bail!("{} labels for {n} embeddings", labels.len())
    }
    if !(margin > 0.0) {
        candle_core::bail!("triplet margin must be positive, got {margin}")
    }
    let dev = embeddings.device();
    let dt = embeddings.dtype();
    let dist = distance.pairwise(embeddings, embeddings)?;
    let (pos, neg) = masks(labels, dev, dt)?;
    const BIG: f64 = 1e9;
    match mining {
        Mining::BatchAll => {
            // l[a,p,n] = d[a,p] − d[a,n] + m over valid (a,p,n).
            let dap = dist.unsqueeze(2)?;
            let dan = dist.unsqueeze(1)?;
            let valid = pos.unsqueeze(2)?.broadcast_mul(&neg.unsqueeze(1)?)?;
            let l = (dap.broadcast_sub(&dan)? + margin)?.relu()?.mul(&valid)?;
            let total: f32 = valid.sum_all()?.to_dtype(DType::F32)?.to_scalar()?;
            let active_mask = l.gt(1e-16)?.to_dtype(dt)?;
            let active: f32 = active_mask.sum_all()?.to_dtype(DType::F32)?.to_scalar()?;
            let loss = (l.sum_all()? / f64::from(active.max(1.0)))?;
            Ok(MinedLoss {
                loss,
                triplets: active as usize,
                active_fraction: if total > 0.0 { active / total } else { 0.0 },
            })
        }
        Mining::BatchHard => {
            let hardest_pos = (dist.mul(&pos)? + ((&pos - 1.0)? * BIG)?)?.max(D::Minus1)?;
            let hardest_neg = (&dist + ((1.0 - &neg)? * BIG)?)?.min(D::Minus1)?;
            let has = pos.max(D::Minus1)?.mul(&neg.max(D::Minus1)?)?;
            let anchors: f32 = has.sum_all()?.to_dtype(DType::F32)?.to_scalar()?;
            let l = ((hardest_pos - hardest_neg)? + margin)?.relu()?.mul(&has)?;
            let active: f32 = l.gt(0.0)?.to_dtype(DType::F32)?.sum_all()?.to_scalar()?;
            Ok(MinedLoss {
                loss: (l.sum_all()? / f64::from(anchors.max(1.0)))?,
                triplets: anchors as usize,
                active_fraction: if anchors > 0.0 { active / anchors } else { 0.0 },
            })
        }
        Mining::SemiHard => {
            let dap = dist.unsqueeze(2)?;
            let dan = dist.unsqueeze(1)?;
            let valid = pos.unsqueeze(2)?.broadcast_mul(&neg.unsqueeze(1)?)?;
            let gap = dan.broadcast_sub(&dap)?; // d(a,n) − d(a,p)
            let semi = gap
                .gt(0.0)?
                .mul(&gap.lt(margin)?)?
                .to_dtype(dt)?
                .mul(&valid)?;
            let count: f32 = semi.sum_all()?.to_dtype(DType::F32)?.to_scalar()?;
            let total: f32 = valid.sum_all()?.to_dtype(DType::F32)?.to_scalar()?;
            let l = ((gap.neg()? + margin)?.mul(&semi))?;
            Ok(MinedLoss {
                loss: (l.sum_all()? / f64::from(count.max(1.0)))?,
                triplets: count as usize,
                active_fraction: if total > 0.0 { count / total } else { 0.0 },
            })
        }
    }
}
