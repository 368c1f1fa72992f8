//! Triplet loss with online mining over a batch of embeddings with class labels.

use candle_core::{D, DType, Result, Tensor};

use crate::distance::Distance;

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
