//! Normalised-softmax losses against learned class proxies: CosFace (Wang et al. 2018, large
//! margin cosine loss) and ArcFace (Deng et al. 2019, additive angular margin). The proxies
//! (C, D) are trained with the encoder and live with the training state (checkpoints), not in
//! the model file: inference compares embeddings, never classes.
//!
//! Both follow pytorch-metric-learning 2.9 (`CosFaceLoss`, `ArcFaceLoss`): embeddings and
//! proxies are L2-normalised, the cosine to each proxy is a logit, the target class's logit gets
//! its margin, all are scaled, and the loss is the cross-entropy averaged over the batch. PML
//! holds its proxies as (D, C); here they are (C, D), one row per class.

use candle_core::{D, Device, Result, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Proxies (classes, dim) drawn from N(0, 1) (PML's initialisation) with our seeded RNG, by
/// Box–Muller.
pub fn init_proxies(classes: usize, dim: usize, seed: u64, device: &Device) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..classes * dim)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, (classes, dim), device)
}

/// Cosines (N, C) of embeddings to proxies, and the one-hot target mask (N, C).
fn cosines(embeddings: &Tensor, labels: &[u32], proxies: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, d) = embeddings.dims2()?;
    let (c, dp) = proxies.dims2()?;
    if labels.len() != n {
        candle_core::bail!("{} labels for {n} embeddings", labels.len())
    }
    if d != dp {
        candle_core::bail!("proxies of dimension {dp} for embeddings of dimension {d}")
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= c) {
        candle_core::bail!("label {bad} has no proxy: {c} classes")
    }
    let e = crate::distance::l2_normalize(embeddings)?;
    let w = crate::distance::l2_normalize(proxies)?;
    let cos = e.matmul(&w.t()?)?;
    let mut onehot = vec![0f32; n * c];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * c + l as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, c), &Device::Cpu)?
        .to_device(embeddings.device())?
        .to_dtype(cos.dtype())?;
    Ok((cos, onehot))
}

/// Cross-entropy of `scale · logits` against the one-hot targets, averaged over the batch.
fn scaled_cross_entropy(logits: &Tensor, onehot: &Tensor, scale: f64) -> Result<Tensor> {
    let z = (logits * scale)?;
    let log_p = candle_nn::ops::log_softmax(&z, D::Minus1)?;
    (log_p * onehot)?.sum(D::Minus1)?.mean_all()?.neg()
}

fn check(name: &str, margin: f64, scale: f64) -> Result<()> {
    if !(scale > 0.0) || !margin.is_finite() || margin < 0.0 {
        candle_core::bail!(
            "{name} needs a margin ≥ 0 and a positive scale, got {margin} and {scale}"
        )
    }
    Ok(())
}

/// CosFace: the target class's cosine is lowered by `margin` before scaling:
/// `CE( s·(cos θ_j − m·[j = y]) )`. PML's defaults are m = 0.35, s = 64.
pub fn cosface(
    embeddings: &Tensor,
    labels: &[u32],
    proxies: &Tensor,
    margin: f64,
    scale: f64,
) -> Result<Tensor> {
    check("CosFace", margin, scale)?;
    let (cos, onehot) = cosines(embeddings, labels, proxies)?;
    scaled_cross_entropy(&(cos - (&onehot * margin)?)?, &onehot, scale)
}

/// ArcFace: the target class's angle is widened by `margin` (radians) before scaling:
/// `CE( s·cos(θ_y + m) )` for the target, `s·cos θ_j` for the others; past θ = π − m the target
/// logit continues as `cos θ − m·sin m` (monotone, as PML does). `cos(θ + m)` is computed as
/// `cos θ·cos m − sin θ·sin m` with `sin θ = √max(1 − cos²θ, 1e-12)`: no NaN gradient at θ = 0.
/// PML's defaults are m = 0.4997 rad (28.6°), s = 64.
pub fn arcface(
    embeddings: &Tensor,
    labels: &[u32],
    proxies: &Tensor,
    margin: f64,
    scale: f64,
) -> Result<Tensor> {
    check("ArcFace", margin, scale)?;
    if margin >= std::f64::consts::PI {
        candle_core::bail!("ArcFace's margin is an angle in radians below π, got {margin}")
    }
    let (cos, onehot) = cosines(embeddings, labels, proxies)?;
    let c = (&cos * &onehot)?.sum_keepdim(D::Minus1)?; // the target cosine, (N, 1)
    let sin = (c.sqr()?.neg()? + 1.0)?.maximum(1e-12)?.sqrt()?;
    let widened = ((&c * margin.cos())? - (sin * margin.sin())?)?;
    let past = (&c - margin * margin.sin())?;
    // θ ≤ π − m  ⟺  cos θ ≥ −cos m.
    let inside = c.ge(-margin.cos())?.to_dtype(cos.dtype())?;
    let target = ((&widened * &inside)? + (past * (1.0 - &inside)?)?)?;
    let logits = (&cos + onehot.broadcast_mul(&(target - c)?)?)?;
    scaled_cross_entropy(&logits, &onehot, scale)
}
