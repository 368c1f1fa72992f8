//! Small dense linear algebra for diagnosis and pictures: covariance, a symmetric eigen
//! solver (cyclic Jacobi), effective rank, and 2-D projections of embeddings (PCA; exact
//! t-SNE for a few thousand points).
//!
//! Embeddings come in as row-major `n × d` `f32` slices.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// The `d × d` covariance (divided by `n`) of `n` rows of `x`, and the column means.
pub fn covariance(x: &[f32], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(
        x.len(),
        n * d,
        "covariance: {} values for {n} × {d}",
        x.len()
    );
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    let nf = n.max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= nf);
    let mut cov = vec![0f64; d * d];
    let mut c = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for (ci, (&v, &m)) in c.iter_mut().zip(row.iter().zip(&mean)) {
            *ci = f64::from(v) - m;
        }
        for i in 0..d {
            let ci = c[i];
            if ci == 0.0 {
                continue;
            }
            let r = &mut cov[i * d..(i + 1) * d];
            for j in i..d {
                r[j] += ci * c[j];
            }
        }
    }
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / nf;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (cov, mean)
}

/// Eigenvalues (descending) and eigenvectors (column `k` of the returned row-major `n × n`
/// matrix belongs to value `k`) of the symmetric matrix `a` by cyclic Jacobi rotations.
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-14 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let sign = if theta >= 0.0 { 1.0 } else { -1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (k, &i) in order.iter().enumerate() {
        for r in 0..n {
            vecs[r * n + k] = v[r * n + i];
        }
    }
    (vals, vecs)
}

/// Effective rank (Roy and Vetterli, 2007): `exp(entropy(λ / Σλ))` over the non-negative
/// eigenvalues; 1 for points on a line, `d` for an isotropic cloud, 0 for a single point.
pub fn effective_rank(eigenvalues: &[f64]) -> f64 {
    let pos: Vec<f64> = eigenvalues.iter().map(|&l| l.max(0.0)).collect();
    let total: f64 = pos.iter().sum();
    if !(total > 0.0) || !total.is_finite() {
        return 0.0;
    }
    let h: f64 = pos
        .iter()
        .filter(|&&l| l > 0.0)
        .map(|&l| {
            let p = l / total;
            -p * p.ln()
        })
        .sum();
    h.exp()
}

/// Projects rows onto the first two principal components.
pub fn pca_2d(x: &[f32], n: usize, d: usize) -> Vec<[f32; 2]> {
    let (cov, mean) = covariance(x, n, d);
    let (_, vecs) = sym_eigen(&cov, d);
    x.chunks_exact(d)
        .map(|row| {
            let mut out = [0f32; 2];
            for (k, o) in out.iter_mut().enumerate().take(d.min(2)) {
                *o = row
                    .iter()
                    .zip(&mean)
                    .enumerate()
                    .map(|(i, (&v, &m))| (f64::from(v) - m) * vecs[i * d + k])
                    .sum::<f64>() as f32;
            }
            out
        })
        .collect()
}

/// Exact t-SNE (van der Maaten and Hinton, 2008) to 2-D: perplexity-calibrated Gaussian
/// affinities, Student-t similarities, early exaggeration 12 for the first 250 iterations,
/// momentum 0.5 then 0.8, gains, learning rate max(n / 12, 50); O(n²) per iteration, so for a
/// few thousand points. Seeded: the same input and seed give the same map.
pub fn tsne_2d(
    x: &[f32],
    n: usize,
    d: usize,
    perplexity: f64,
    iterations: usize,
    seed: u64,
) -> Vec<[f32; 2]> {
    if n < 3 {
        return vec![[0.0; 2]; n];
    }
    let perplexity = perplexity.clamp(2.0, (n - 1) as f64 / 3.0);
    // Squared distances.
    let d2: Vec<f64> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let a = &x[i * d..(i + 1) * d];
            (0..n).map(move |j| {
                let b = &x[j * d..(j + 1) * d];
                a.iter()
                    .zip(b)
                    .map(|(&u, &v)| {
                        let t = f64::from(u) - f64::from(v);
                        t * t
                    })
                    .sum::<f64>()
            })
        })
        .collect();
    // Conditional affinities by binary search on the precision.
    let target = perplexity.ln();
    let p_cond: Vec<f64> = (0..n)
        .into_par_iter()
        .flat_map_iter(|i| {
            let row = &d2[i * n..(i + 1) * n];
            let (mut lo, mut hi, mut beta) = (0.0f64, f64::INFINITY, 1.0f64);
            let mut p = vec![0f64; n];
            for _ in 0..64 {
                let mut sum = 0.0;
                let min = row
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, &v)| v)
                    .fold(f64::INFINITY, f64::min);
                for (j, (pj, &dj)) in p.iter_mut().zip(row).enumerate() {
                    *pj = if j == i {
                        0.0
                    } else {
                        (-(dj - min) * beta).exp()
                    };
                    sum += *pj;
                }
                let mut h = 0.0;
                for pj in p.iter_mut() {
                    *pj /= sum;
                    if *pj > 1e-300 {
                        h -= *pj * pj.ln();
                    }
                }
                if (h - target).abs() < 1e-5 {
                    break;
                }
                if h > target {
                    lo = beta;
                    beta = if hi.is_finite() {
                        (beta + hi) / 2.0
                    } else {
                        beta * 2.0
                    };
                } else {
                    hi = beta;
                    beta = (beta + lo) / 2.0;
                }
            }
            p
        })
        .collect();
    let mut p = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            p[i * n + j] = ((p_cond[i * n + j] + p_cond[j * n + i]) / (2.0 * n as f64)).max(1e-12);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut y: Vec<[f64; 2]> = (0..n)
        .map(|_| {
            [
                rng.random::<f64>() * 1e-4 - 0.5e-4,
                rng.random::<f64>() * 1e-4 - 0.5e-4,
            ]
        })
        .collect();
    let mut vel = vec![[0f64; 2]; n];
    let mut gains = vec![[1f64; 2]; n];
    let eta = (n as f64 / 12.0).max(50.0);
    for it in 0..iterations {
        let exaggeration = if it < 250 { 12.0 } else { 1.0 };
        let momentum = if it < 250 { 0.5 } else { 0.8 };
        let q_num: Vec<f64> = (0..n)
            .into_par_iter()
            .flat_map_iter(|i| {
                let yi = y[i];
                let y = &y;
                (0..n).map(move |j| {
                    if i == j {
                        0.0
                    } else {
                        let (a, b) = (yi[0] - y[j][0], yi[1] - y[j][1]);
                        1.0 / (1.0 + a * a + b * b)
                    }
                })
            })
            .collect();
        let z: f64 = q_num.iter().sum::<f64>().max(1e-300);
        let grad: Vec<[f64; 2]> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut g = [0f64; 2];
                for j in 0..n {
                    let w = q_num[i * n + j];
                    let f = (exaggeration * p[i * n + j] - w / z) * w;
                    g[0] += 4.0 * f * (y[i][0] - y[j][0]);
                    g[1] += 4.0 * f * (y[i][1] - y[j][1]);
                }
                g
            })
            .collect();
        for i in 0..n {
            for k in 0..2 {
                let same_sign = (grad[i][k] > 0.0) == (vel[i][k] > 0.0);
                gains[i][k] = if same_sign {
                    (gains[i][k] * 0.8).max(0.01)
                } else {
                    gains[i][k] + 0.2
                };
                vel[i][k] = momentum * vel[i][k] - eta * gains[i][k] * grad[i][k];
                y[i][k] += vel[i][k];
            }
        }
        let mean = [
            y.iter().map(|v| v[0]).sum::<f64>() / n as f64,
            y.iter().map(|v| v[1]).sum::<f64>() / n as f64,
        ];
        y.iter_mut().for_each(|v| {
            v[0] -= mean[0];
            v[1] -= mean[1];
        });
    }
    y.iter().map(|v| [v[0] as f32, v[1] as f32]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_matches_a_known_decomposition() {
        // [[2, 1], [1, 2]] has eigenvalues 3 and 1, vectors (1, 1)/√2 and (1, −1)/√2.
        let (vals, vecs) = sym_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12);
        assert!((vecs[0].abs() - 0.5f64.sqrt()).abs() < 1e-12);
        assert!(
            (vecs[0] * vecs[2] - 0.5).abs() < 1e-12,
            "first column ∝ (1, 1)"
        );
    }

    #[test]
    fn jacobi_reconstructs_a_random_symmetric_matrix() {
        let n = 7;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in i..n {
                let v: f64 = rng.random::<f64>() - 0.5;
                a[i * n + j] = v;
                a[j * n + i] = v;
            }
        }
        let (vals, v) = sym_eigen(&a, n);
        for i in 0..n {
            for j in 0..n {
                let r: f64 = (0..n).map(|k| v[i * n + k] * vals[k] * v[j * n + k]).sum();
                assert!(
                    (r - a[i * n + j]).abs() < 1e-10,
                    "({i}, {j}): {r} vs {}",
                    a[i * n + j]
                );
            }
        }
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn effective_rank_of_simple_spectra() {
        assert!((effective_rank(&[1.0, 1.0, 1.0, 1.0]) - 4.0).abs() < 1e-12);
        assert!((effective_rank(&[5.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
        assert_eq!(effective_rank(&[0.0, 0.0]), 0.0);
    }

    #[test]
    fn pca_finds_the_long_axis() {
        // Points along (1, 1, 0) with a little noise on z: PC1 spans them.
        let x: Vec<f32> = (0..20)
            .flat_map(|i| {
                let t = i as f32 - 10.0;
                [t, t, if i % 2 == 0 { 0.1 } else { -0.1 }]
            })
            .collect();
        let p = pca_2d(&x, 20, 3);
        let spread0 = p.iter().map(|v| v[0].abs()).fold(0f32, f32::max);
        let spread1 = p.iter().map(|v| v[1].abs()).fold(0f32, f32::max);
        // t runs from −10 to 9, mean −0.5: the farthest point is 9.5·√2 from the centre.
        assert!((spread0 - 9.5 * 2f32.sqrt()).abs() < 1e-3, "{spread0}");
        assert!(spread1 < 0.15, "{spread1}"); // the ±0.1 z-noise (slightly correlated with t)
    }

    #[test]
    fn tsne_separates_two_clusters_and_is_seeded() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 60;
        let x: Vec<f32> = (0..n)
            .flat_map(|i| {
                let c = if i < n / 2 { 0.0 } else { 10.0 };
                (0..5).map(|_| c + rng.random::<f32>()).collect::<Vec<_>>()
            })
            .collect();
        let a = tsne_2d(&x, n, 5, 10.0, 400, 7);
        assert_eq!(a, tsne_2d(&x, n, 5, 10.0, 400, 7));
        let centroid = |r: std::ops::Range<usize>| {
            let k = r.len() as f32;
            let s = r.fold([0f32; 2], |s, i| [s[0] + a[i][0], s[1] + a[i][1]]);
            [s[0] / k, s[1] / k]
        };
        let (c0, c1) = (centroid(0..n / 2), centroid(n / 2..n));
        let between = ((c0[0] - c1[0]).powi(2) + (c0[1] - c1[1]).powi(2)).sqrt();
        let within = (0..n / 2)
            .map(|i| ((a[i][0] - c0[0]).powi(2) + (a[i][1] - c0[1]).powi(2)).sqrt())
            .sum::<f32>()
            / (n / 2) as f32;
        assert!(between > 3.0 * within, "between {between}, within {within}");
    }
}
