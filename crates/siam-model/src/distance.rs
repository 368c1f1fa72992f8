//! Distances between embeddings, row-wise for pairs and pairwise (N×M) for mining and
//! retrieval. Euclidean is `sqrt(Σ(a−b)² + ε)`: finite gradients even for identical inputs.

use candle_core::{D, Result, Tensor};

/// ε under the square root of every Euclidean distance (and in cosine norms).
pub const EPS: f64 = 1e-12;

/// Which distance a model compares embeddings with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distance {
    /// `sqrt(Σ(a−b)² + ε)`.
    #[default]
    Euclidean,
    /// `Σ(a−b)²`.
    SquaredEuclidean,
    /// `1 − a·b / (|a|·|b|)`, in [0, 2].
    Cosine,
}

impl Distance {
    /// Row-wise distance of (N, D) and (N, D): shape (N,).
    pub fn rowwise(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self {
            Self::Euclidean => euclidean(a, b),
            Self::SquaredEuclidean => squared_euclidean(a, b),
            Self::Cosine => cosine(a, b),
        }
    }

    /// All distances between the rows of (N, D) and (M, D): shape (N, M).
    pub fn pairwise(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        pairwise(a, b, self)
    }

    /// The name used in configs and the model file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Euclidean => "euclidean",
            Self::SquaredEuclidean => "squared-euclidean",
            Self::Cosine => "cosine",
        }
    }
}

fn check_rows(a: &Tensor, b: &Tensor) -> Result<()> {
    let (n, d) = a.dims2()?;
    let (m, e) = b.dims2()?;
    if n != m || d != e {
        candle_core::bail!(
            "row-wise distance needs two (N, D) tensors of one shape, got {:?} and {:?}",
            a.dims(),
            b.dims()
        )
    }
    Ok(())
}

/// Row-wise squared Euclidean distance: (N, D), (N, D) → (N,).
pub fn squared_euclidean(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_rows(a, b)?;
    (a - b)?.sqr()?.sum(D::Minus1)
}

/// Row-wise Euclidean distance `sqrt(Σ(a−b)² + ε)`: (N, D), (N, D) → (N,).
pub fn euclidean(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    (squared_euclidean(a, b)? + EPS)?.sqrt()
}

/// Row-wise cosine distance `1 − a·b / (|a|·|b|)`: (N, D), (N, D) → (N,).
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_rows(a, b)?;
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = (a.sqr()?.sum(D::Minus1)? + EPS)?.sqrt()?;
    let nb = (b.sqr()?.sum(D::Minus1)? + EPS)?.sqrt()?;
    1.0 - (dot / (na * nb)?)?
}

/// L2-normalises each row: `x / sqrt(Σx² + ε)`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)? + EPS)?.sqrt()?;
    x.broadcast_div(&n)
}

/// All distances between rows of `a` (N, D) and `b` (M, D): (N, M).
pub fn pairwise(a: &Tensor, b: &Tensor, kind: Distance) -> Result<Tensor> {
    let (_, d) = a.dims2()?;
    let (_, e) = b.dims2()?;
    if d != e {
        candle_core::bail!(
            "pairwise distance needs (N, D) and (M, D), got {:?} and {:?}",
            a.dims(),
            b.dims()
        )
    }
    match kind {
        Distance::Cosine => {
            let an = l2_normalize(a)?;
            let bn = l2_normalize(b)?;
            1.0 - an.matmul(&bn.t()?)?
        }
        Distance::SquaredEuclidean | Distance::Euclidean => {
            // |a|² + |b|² − 2a·b, clamped at 0 against rounding.
            let aa = a.sqr()?.sum_keepdim(1)?;
            let bb = b.sqr()?.sum_keepdim(1)?.t()?;
            let ab = a.matmul(&b.t()?)?;
            let sq = aa.broadcast_add(&bb)?.broadcast_sub(&(ab * 2.0)?)?.relu()?;
            if kind == Distance::Euclidean {
                (sq + EPS)?.sqrt()
            } else {
                Ok(sq)
            }
        }
    }
}
