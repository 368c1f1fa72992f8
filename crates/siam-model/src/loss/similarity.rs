//! Losses on the cosine similarities of a labelled batch (a P×K batch, or two views of each
//! image with the image's index as its label): multi-similarity with its miner (Wang et al.
//! 2019), NT-Xent (Chen et al. 2020) and supervised contrastive, SupCon (Khosla et al. 2020);
//! and the uniformity term of Wang & Isola (2020), which takes no labels.
//!
//! Each follows pytorch-metric-learning 2.9 (`MultiSimilarityLoss` + `MultiSimilarityMiner`,
//! `NTXentLoss`, `SupConLoss`): embeddings are L2-normalised inside the loss, `S = e·eᵀ`, a
//! positive is another image of the same label, a negative one of another label. Every masked
//! log-sum-exp is stabilised by its row maximum, masked-out entries never reach `exp`, so no
//! input gives a NaN loss or gradient.

use candle_core::{D, DType, Device, Result, Tensor};

/// Sent masked-out entries far below anything `exp` can see.
const BIG: f64 = 1e9;

/// Multi-similarity loss settings (pytorch-metric-learning's defaults in [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct MsConfig {
    /// Weight of the positive pairs' exponent (α, default 2).
    #[serde(default = "ms_alpha")]
    pub alpha: f64,
    /// Weight of the negative pairs' exponent (β, default 50).
    #[serde(default = "ms_beta")]
    pub beta: f64,
    /// The similarity the exponents are measured from (λ, default 0.5).
    #[serde(default = "ms_base")]
    pub base: f64,
    /// The miner's ε (default 0.1): a positive counts when its similarity minus ε is below the
    /// anchor's most similar negative, a negative when its similarity plus ε is above the least
    /// similar positive. `None` uses every pair.
    #[serde(default = "ms_epsilon")]
    pub epsilon: Option<f64>,
}

fn ms_alpha() -> f64 {
    2.0
}
fn ms_beta() -> f64 {
    50.0
}
fn ms_base() -> f64 {
    0.5
}
#[allow(clippy::unnecessary_wraps)]
fn ms_epsilon() -> Option<f64> {
    Some(0.1)
}

impl Default for MsConfig {
    fn default() -> Self {
        Self {
            alpha: ms_alpha(),
            beta: ms_beta(),
            base: ms_base(),
            epsilon: ms_epsilon(),
        }
    }
}

/// The batch's cosine similarities (N, N) and its positive and negative masks (row-major).
struct Batch {
    sim: Tensor,
    pos: Vec<f32>,
    neg: Vec<f32>,
    n: usize,
}

impl Batch {
    fn new(embeddings: &Tensor, labels: &[u32]) -> Result<Self> {
        let (n, _) = embeddings.dims2()?;
        if labels.len() != n {
            candle_core::bail!("{} labels for {n} embeddings", labels.len())
        }
        let e = crate::distance::l2_normalize(embeddings)?;
        let sim = e.matmul(&e.t()?)?;
        let (mut pos, mut neg) = (vec![0f32; n * n], vec![0f32; n * n]);
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
        Ok(Self { sim, pos, neg, n })
    }

    fn mask(&self, m: &[f32]) -> Result<Tensor> {
        Tensor::from_vec(m.to_vec(), (self.n, self.n), self.sim.device())?
            .to_dtype(self.sim.dtype())
    }

    /// A zero that keeps the graph connected (so `backward` works) when no pair counts.
    fn zero(&self) -> Result<Tensor> {
        self.sim.sum_all()? * 0.0
    }
}

/// Per row, `log(Σ_j mask·exp(x))` (with `one`, `log(1 + Σ …)`), stabilised: (N,). A row with
/// no entry gives 0 with `one`, a large negative number without (and a zero gradient).
fn masked_logsumexp(x: &Tensor, mask: &Tensor, one: bool) -> Result<Tensor> {
    let xm = ((x * mask)? + ((mask - 1.0)? * BIG)?)?;
    let mut top = xm.max_keepdim(D::Minus1)?.detach();
    if one {
        top = top.relu()?;
    }
    let mut s = ((xm.broadcast_sub(&top)?.exp()? * mask)?).sum_keepdim(D::Minus1)?;
    if one {
        s = (s + top.neg()?.exp()?)?;
    } else {
        s = (s + 1e-30)?;
    }
    (s.log()? + top)?.squeeze(D::Minus1)
}

/// `log(1 + e^z)`, stable for any z.
fn softplus(z: &Tensor) -> Result<Tensor> {
    z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// The multi-similarity miner over similarities `s` (row-major N×N): the positive and negative
/// masks restricted to the informative pairs.
fn ms_mine(s: &[f32], b: &Batch, epsilon: f32) -> (Vec<f32>, Vec<f32>) {
    let n = b.n;
    let (mut pos, mut neg) = (b.pos.clone(), b.neg.clone());
    for i in 0..n {
        let row = i * n..(i + 1) * n;
        let (mut max_neg, mut min_pos) = (f32::NEG_INFINITY, f32::INFINITY);
        for j in row.clone() {
            if b.neg[j] > 0.0 {
                max_neg = max_neg.max(s[j]);
            }
            if b.pos[j] > 0.0 {
                min_pos = min_pos.min(s[j]);
            }
        }
        for j in row {
            if pos[j] > 0.0 && !(s[j] - epsilon < max_neg) {
                pos[j] = 0.0;
            }
            if neg[j] > 0.0 && !(s[j] + epsilon > min_pos) {
                neg[j] = 0.0;
            }
        }
    }
    (pos, neg)
}

/// Multi-similarity loss over `embeddings` (N, D) with class `labels`, averaged over the
/// anchors: `(1/α)·log(1 + Σ_p e^{−α(S_ap − λ)}) + (1/β)·log(1 + Σ_n e^{β(S_an − λ)})` over the
/// positives and negatives its miner keeps.
pub fn multi_similarity(embeddings: &Tensor, labels: &[u32], cfg: &MsConfig) -> Result<Tensor> {
    if !(cfg.alpha > 0.0) || !(cfg.beta > 0.0) {
        candle_core::bail!(
            "multi-similarity needs α > 0 and β > 0, got {} and {}",
            cfg.alpha,
            cfg.beta
        )
    }
    let b = Batch::new(embeddings, labels)?;
    let (pos, neg) = match cfg.epsilon {
        Some(eps) => {
            let s: Vec<f32> = b.sim.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            ms_mine(&s, &b, eps as f32)
        }
        None => (b.pos.clone(), b.neg.clone()),
    };
    let pos_term =
        (masked_logsumexp(&((&b.sim - cfg.base)? * -cfg.alpha)?, &b.mask(&pos)?, true)?
            / cfg.alpha)?;
    let neg_term =
        (masked_logsumexp(&((&b.sim - cfg.base)? * cfg.beta)?, &b.mask(&neg)?, true)? / cfg.beta)?;
    (pos_term + neg_term)?.mean_all()
}

/// NT-Xent (normalised temperature-scaled cross-entropy) over `embeddings` (N, D) with `labels`:
/// per positive pair (a, p), `−log( e^{S_ap/τ} / (e^{S_ap/τ} + Σ_n e^{S_an/τ}) )`, averaged
/// over the positive pairs. With two views of each image labelled by the image's index, this is
/// SimCLR's self-supervised loss.
pub fn nt_xent(embeddings: &Tensor, labels: &[u32], temperature: f64) -> Result<Tensor> {
    if !(temperature > 0.0) {
        candle_core::bail!("NT-Xent needs a positive temperature, got {temperature}")
    }
    let b = Batch::new(embeddings, labels)?;
    let pairs: f32 = b.pos.iter().sum();
    if pairs == 0.0 || !b.neg.iter().any(|&v| v > 0.0) {
        return b.zero();
    }
    let logits = (&b.sim / temperature)?;
    let neg = masked_logsumexp(&logits, &b.mask(&b.neg)?, false)?;
    // −log(e^s / (e^s + e^L)) = softplus(L − s), per (a, p).
    let per_pair = softplus(&neg.unsqueeze(1)?.broadcast_sub(&logits)?)?;
    (per_pair * b.mask(&b.pos)?)?.sum_all()? / f64::from(pairs)
}

/// Supervised contrastive loss (SupCon) over `embeddings` (N, D) with `labels`: per anchor,
/// the mean over its positives p of `−log( e^{S_ap/τ} / Σ_{k≠a} e^{S_ak/τ} )`, averaged over the
/// anchors that have a positive.
pub fn supcon(embeddings: &Tensor, labels: &[u32], temperature: f64) -> Result<Tensor> {
    if !(temperature > 0.0) {
        candle_core::bail!("SupCon needs a positive temperature, got {temperature}")
    }
    let b = Batch::new(embeddings, labels)?;
    if !b.pos.iter().any(|&v| v > 0.0) || !b.neg.iter().any(|&v| v > 0.0) {
        return b.zero();
    }
    let n = b.n;
    let logits = (&b.sim / temperature)?;
    let others: Vec<f32> = b.pos.iter().zip(&b.neg).map(|(p, q)| p + q).collect();
    let denominator = masked_logsumexp(&logits, &b.mask(&others)?, false)?;
    let log_prob = logits.broadcast_sub(&denominator.unsqueeze(1)?)?;
    let counts: Vec<f32> = b.pos.chunks_exact(n).map(|r| r.iter().sum()).collect();
    let anchors = counts.iter().filter(|&&c| c > 0.0).count();
    let inv: Vec<f32> = counts
        .iter()
        .map(|&c| if c > 0.0 { 1.0 / c } else { 0.0 })
        .collect();
    let inv = Tensor::from_vec(inv, n, &Device::Cpu)?
        .to_device(b.sim.device())?
        .to_dtype(b.sim.dtype())?;
    let per_anchor = ((log_prob * b.mask(&b.pos)?)?.sum(D::Minus1)? * inv)?;
    per_anchor.sum_all()? * (-1.0 / anchors as f64)
}

/// The uniformity term of Wang & Isola (2020) over `embeddings` (N, D), L2-normalised inside:
/// `log( mean_{i≠j} e^{−t‖zᵢ − zⱼ‖²} )` — lower when the embeddings spread over the sphere
/// (their reference code: `torch.pdist(z).pow(2).mul(-t).exp().mean().log()`). It takes no
/// labels: added to a supervised loss it keeps a batch from gathering into a few points, so
/// directions the classes do not need survive. On unit vectors `‖zᵢ − zⱼ‖² = 2 − 2·Sᵢⱼ`; the
/// log-mean-exp is stabilised by its maximum, so a large `t` gives no `log(0)`.
pub fn uniformity(embeddings: &Tensor, t: f64) -> Result<Tensor> {
    if !(t > 0.0 && t.is_finite()) {
        candle_core::bail!("uniformity needs a positive t, got {t}")
    }
    let (n, _) = embeddings.dims2()?;
    let b = Batch::new(embeddings, &vec![0; n])?;
    if n < 2 {
        return b.zero();
    }
    // Every pair i ≠ j: the positives of one shared label.
    let x = ((&b.sim - 1.0)? * (2.0 * t))?;
    let rows = masked_logsumexp(&x, &b.mask(&b.pos)?, false)?;
    let top = rows.max_keepdim(0)?.detach();
    let total = (rows.broadcast_sub(&top)?.exp()?.sum_all()?.log()? + top.squeeze(0)?)?;
    total - ((n * (n - 1)) as f64).ln()
}
