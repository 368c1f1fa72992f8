//! The input check: is an input like what the model was trained on?
//!
//! A Siamese network answers every pair with a distance, also for inputs it has never seen
//! anything like (noise, a blank frame, a negative, a digit given to a clothes model), and
//! those distances mean nothing. An [`InputProfile`], fitted at the end of training on the
//! validation images and stored in the model file, describes the training distribution in
//! five measurements, each with bounds:
//!
//! - `intensity-mean` and `intensity-spread`: the mean and standard deviation of an image's
//!   pixel intensities in [0, 1] (before normalisation), within the 0.1 % and 99.9 %
//!   quantiles seen in validation (a blank image has spread 0; a negative a high mean);
//! - `texture`: the mean absolute difference between neighbouring pixels (photographs and
//!   drawings are smooth, noise is not), within the same quantiles;
//! - `embedding-norm`: the length of the encoder's output before L2 normalisation (inputs
//!   unlike the training data tend to excite the last layer less), within the same quantiles;
//! - `far-from-training`: the distance from the input's embedding to its nearest reference
//!   embedding (up to 1,000 validation images kept in the file), within the 99th percentile
//!   of the same distance for the *other* validation images (held out from the reference,
//!   so the bound is what a new image of the training distribution gets).
//!
//! Each bound is a quantile of held-out data, so an image of the training distribution is
//! flagged a little over 1 % of the time (all bounds together) ([`InputProfile::false_alarm_rate`] says what the fit
//! measured on its held-out images); clearly foreign inputs are flagged far more often
//! (docs/BENCHMARKS.md measures both).

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::distance::Distance;
use crate::encoder::InputSpec;
use crate::error::{ModelError, Result};

/// The tensor of reference embeddings in a model file.
pub const REFERENCE_TENSOR: &str = "input-profile.reference";
/// Most reference embeddings kept.
pub const MAX_REFERENCE: usize = 1000;
/// Quantile of held-out nearest-reference distances taken as the bound.
pub const NEAREST_QUANTILE: f32 = 0.99;
/// Lower and upper quantiles of the intensity bounds.
pub const INTENSITY_QUANTILES: [f32; 2] = [0.001, 0.999];
/// Fewest images a profile is fitted on.
pub const MIN_IMAGES: usize = 20;

/// What the model saw in training; see the [module](self) docs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InputProfile {
    /// Images it was fitted on.
    pub images: usize,
    /// Bounds of an image's mean intensity in [0, 1].
    pub intensity_mean: [f32; 2],
    /// Bounds of an image's intensity standard deviation.
    pub intensity_spread: [f32; 2],
    /// Bounds of an image's mean absolute neighbour difference.
    pub texture: [f32; 2],
    /// Bounds of the encoder output's length before normalisation.
    pub embedding_norm: [f32; 2],
    /// Bound of the distance to the nearest reference embedding.
    pub nearest_limit: f32,
    /// Held-out images flagged by the three bounds together, at fitting time.
    pub false_alarm_rate: f32,
    /// Number of reference embeddings (rows of [`REFERENCE_TENSOR`]).
    pub reference_count: usize,
    /// Reference embeddings, row-major (stored as a tensor, not in the JSON metadata).
    #[serde(skip)]
    pub reference: Vec<f32>,
}

/// What the input check measures of one image (see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ImageStats {
    /// Mean intensity in [0, 1].
    pub mean: f32,
    /// Standard deviation of the intensities.
    pub spread: f32,
    /// Mean absolute difference between horizontally and vertically neighbouring pixels.
    pub texture: f32,
    /// Length of the encoder output before L2 normalisation.
    pub norm: f32,
}

/// One way an input is unlike the training data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputWarning {
    /// `intensity-mean`, `intensity-spread`, `texture`, `embedding-norm` or
    /// `far-from-training`.
    pub kind: &'static str,
    /// The input's value.
    pub value: f32,
    /// The range the model saw (`[0, limit]` for `far-from-training`).
    pub expected: [f32; 2],
    /// In words, with what it may mean.
    pub detail: String,
}

/// Mean, standard deviation and texture (mean absolute neighbour difference) of each image's
/// intensities in [0, 1], undoing the model's normalisation: (N, C, H, W) → N triples.
pub fn intensity_stats(x: &Tensor, input: &InputSpec) -> Result<Vec<(f32, f32, f32)>> {
    let c = input.channels;
    let per = |v: &[f32], i: usize| if v.len() == 1 { v[0] } else { v[i] };
    let std = Tensor::from_vec(
        (0..c).map(|i| per(&input.std, i)).collect::<Vec<_>>(),
        (1, c, 1, 1),
        x.device(),
    )?;
    let mean = Tensor::from_vec(
        (0..c).map(|i| per(&input.mean, i)).collect::<Vec<_>>(),
        (1, c, 1, 1),
        x.device(),
    )?;
    let raw = x
        .to_dtype(DType::F32)?
        .broadcast_mul(&std)?
        .broadcast_add(&mean)?;
    let (_, _, h, w) = raw.dims4()?;
    let texture = |dim: usize, len: usize| -> Result<Tensor> {
        if len < 2 {
            return Ok(raw.flatten_from(1)?.mean(1)?.zeros_like()?);
        }
        let a = raw.narrow(dim, 1, len - 1)?;
        let b = raw.narrow(dim, 0, len - 1)?;
        Ok((a - b)?.abs()?.flatten_from(1)?.mean(1)?)
    };
    let t = ((texture(3, w)? + texture(2, h)?)? * 0.5)?;
    let flat = raw.flatten_from(1)?;
    let m = flat.mean_keepdim(1)?;
    let s = flat.broadcast_sub(&m)?.sqr()?.mean(1)?.sqrt()?;
    let m: Vec<f32> = m.squeeze(1)?.to_device(&Device::Cpu)?.to_vec1()?;
    let s: Vec<f32> = s.to_device(&Device::Cpu)?.to_vec1()?;
    let t: Vec<f32> = t.to_device(&Device::Cpu)?.to_vec1()?;
    Ok(m.into_iter()
        .zip(s)
        .zip(t)
        .map(|((m, s), t)| (m, s, t))
        .collect())
}

/// [`ImageStats`] of each image from [`intensity_stats`] and the encoder output norms.
pub fn image_stats(x: &Tensor, input: &InputSpec, norms: &[f32]) -> Result<Vec<ImageStats>> {
    Ok(intensity_stats(x, input)?
        .into_iter()
        .zip(norms)
        .map(|((mean, spread, texture), &norm)| ImageStats {
            mean,
            spread,
            texture,
            norm,
        })
        .collect())
}

/// The `q` quantile of `v` (linear interpolation, like numpy's default).
fn quantile(v: &mut [f32], q: f32) -> f32 {
    v.sort_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f32;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f32)
}

/// The distance from each row of `e` (N, D) to its nearest row of `reference` (R, D).
fn nearest(e: &Tensor, reference: &Tensor, distance: Distance) -> Result<Vec<f32>> {
    let d = distance.pairwise(e, reference)?.min(1)?;
    Ok(d.to_device(&Device::Cpu)?.to_vec1()?)
}

impl InputProfile {
    /// Fits a profile to `stats` ([`image_stats`]) and embeddings `e` (N, D, eval mode)
    /// of N validation images: a seeded draw of up to [`MAX_REFERENCE`] (at most half) are
    /// kept as the reference, the others bound the nearest-reference distance. None with
    /// fewer than [`MIN_IMAGES`] images.
    pub fn fit(
        stats: &[ImageStats],
        e: &Tensor,
        distance: Distance,
        seed: u64,
    ) -> Result<Option<Self>> {
        let n = stats.len();
        if n < MIN_IMAGES {
            return Ok(None);
        }
        if e.dim(0)? != n {
            return Err(ModelError::Config(format!(
                "input profile: {n} intensity figures but {} embeddings",
                e.dim(0)?
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let r = MAX_REFERENCE.min(n / 2);
        let (refs, held) = order.split_at(r);
        let idx = |v: &[usize]| {
            Tensor::from_vec(
                v.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                v.len(),
                e.device(),
            )
        };
        let reference = e.index_select(&idx(refs)?, 0)?;
        let mut near = nearest(&e.index_select(&idx(held)?, 0)?, &reference, distance)?;
        let held_near = near.clone();
        let nearest_limit = quantile(&mut near, NEAREST_QUANTILE);
        let bounds = |f: fn(&ImageStats) -> f32| {
            let mut v: Vec<f32> = stats.iter().map(f).collect();
            [
                quantile(&mut v, INTENSITY_QUANTILES[0]),
                quantile(&mut v, INTENSITY_QUANTILES[1]),
            ]
        };
        let mut profile = Self {
            images: n,
            intensity_mean: bounds(|s| s.mean),
            intensity_spread: bounds(|s| s.spread),
            texture: bounds(|s| s.texture),
            embedding_norm: bounds(|s| s.norm),
            nearest_limit,
            false_alarm_rate: 0.0,
            reference_count: r,
            reference: reference
                .to_device(&Device::Cpu)?
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_vec1()?,
        };
        let flagged = held
            .iter()
            .zip(&held_near)
            .filter(|&(&i, &d)| !profile.check(&stats[i], d).is_empty())
            .count();
        profile.false_alarm_rate = flagged as f32 / held.len() as f32;
        Ok(Some(profile))
    }

    /// The reference embeddings as an (R, D) tensor on `device`.
    pub fn reference_tensor(&self, device: &Device) -> Result<Tensor> {
        let r = self.reference_count;
        let d = self.reference.len().checked_div(r).unwrap_or(0);
        Ok(Tensor::from_slice(&self.reference, (r, d), device)?)
    }

    /// The distance from each embedding (N, D) to its nearest reference embedding.
    pub fn nearest(&self, e: &Tensor, distance: Distance) -> Result<Vec<f32>> {
        if self.reference_count == 0 {
            return Ok(vec![0.0; e.dim(0)?]);
        }
        nearest(e, &self.reference_tensor(e.device())?, distance)
    }

    /// The warnings for one input from its intensity figures and nearest-reference distance:
    /// a pure function of the measurements.
    pub fn check(&self, s: &ImageStats, nearest: f32) -> Vec<InputWarning> {
        let (mean, spread) = (s.mean, s.spread);
        let mut out = Vec::new();
        let [lo, hi] = self.intensity_mean;
        if !(lo..=hi).contains(&mean) {
            out.push(InputWarning {
                kind: "intensity-mean",
                value: mean,
                expected: [lo, hi],
                detail: format!(
                    "mean intensity {mean:.3}, the training images' lie in {lo:.3}–{hi:.3}{}",
                    if mean > hi {
                        ": brighter than anything the model saw (an inverted image, a white background?)"
                    } else {
                        ": darker than anything the model saw"
                    }
                ),
            });
        }
        let [lo, hi] = self.intensity_spread;
        if !(lo..=hi).contains(&spread) {
            out.push(InputWarning {
                kind: "intensity-spread",
                value: spread,
                expected: [lo, hi],
                detail: format!(
                    "intensity spread (std) {spread:.3}, the training images' lie in {lo:.3}–{hi:.3}{}",
                    if spread < lo {
                        ": nearly uniform (a blank or washed-out image?)"
                    } else {
                        ": more contrast than anything the model saw (noise?)"
                    }
                ),
            });
        }
        let [lo, hi] = self.texture;
        if !(lo..=hi).contains(&s.texture) {
            out.push(InputWarning {
                kind: "texture",
                value: s.texture,
                expected: [lo, hi],
                detail: format!(
                    "texture (mean neighbour difference) {:.3}, the training images' lie in {lo:.3}–{hi:.3}{}",
                    s.texture,
                    if s.texture > hi {
                        ": grainier than anything the model saw (noise, compression artefacts, a scan?)"
                    } else {
                        ": smoother than anything the model saw (blurred or blank?)"
                    }
                ),
            });
        }
        let [lo, hi] = self.embedding_norm;
        if !(lo..=hi).contains(&s.norm) {
            out.push(InputWarning {
                kind: "embedding-norm",
                value: s.norm,
                expected: [lo, hi],
                detail: format!(
                    "the encoder's output has length {:.3} before normalisation, the training images' {lo:.3}–{hi:.3}: \
                     the features it learned respond {} to this input",
                    s.norm,
                    if s.norm < lo { "weakly" } else { "unusually strongly" }
                ),
            });
        }
        if nearest > self.nearest_limit {
            out.push(InputWarning {
                kind: "far-from-training",
                value: nearest,
                expected: [0.0, self.nearest_limit],
                detail: format!(
                    "its embedding is {nearest:.3} from the nearest validation image, farther than 99 % of new training-like images ({:.3}): \
                     the model has not seen inputs like this, so its distances to it are not to be trusted",
                    self.nearest_limit
                ),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> InputProfile {
        InputProfile {
            images: 100,
            intensity_mean: [0.1, 0.6],
            intensity_spread: [0.05, 0.45],
            texture: [0.02, 0.2],
            embedding_norm: [1.0, 3.0],
            nearest_limit: 0.5,
            false_alarm_rate: 0.01,
            reference_count: 0,
            reference: Vec::new(),
        }
    }

    #[test]
    fn quantiles_match_numpy() {
        // np.quantile(np.arange(10, dtype=np.float32)[::-1], q) for q = 0.25, 0.999, 0.001,
        // 0.99: 2.25, 8.991, 0.009, 8.91 (numpy's default linear interpolation).
        for (q, want) in [(0.25, 2.25), (0.999, 8.991), (0.001, 0.009), (0.99, 8.91)] {
            let mut v: Vec<f32> = (0..10).rev().map(|i| i as f32).collect();
            assert!((quantile(&mut v, q) - want).abs() < 1e-5, "{q}");
        }
    }

    fn st(mean: f32, spread: f32) -> ImageStats {
        ImageStats {
            mean,
            spread,
            texture: 0.1,
            norm: 2.0,
        }
    }

    #[test]
    fn check_names_each_way_an_input_is_unlike_the_training_data() {
        let p = profile();
        assert!(p.check(&st(0.3, 0.2), 0.4).is_empty());
        let w = p.check(&st(0.8, 0.2), 0.4);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].kind, "intensity-mean");
        assert!(w[0].detail.contains("brighter"), "{}", w[0].detail);
        let w = p.check(&st(0.3, 0.0), 0.4);
        assert_eq!(w[0].kind, "intensity-spread");
        assert!(w[0].detail.contains("blank"), "{}", w[0].detail);
        let w = p.check(&st(0.3, 0.2), 0.9);
        assert_eq!(w[0].kind, "far-from-training");
        assert_eq!(w[0].expected, [0.0, 0.5]);
        assert_eq!(p.check(&st(0.0, 0.9), 2.0).len(), 3);
        let noisy = ImageStats {
            texture: 0.4,
            ..st(0.3, 0.2)
        };
        let w = p.check(&noisy, 0.1);
        assert_eq!(w[0].kind, "texture");
        assert!(w[0].detail.contains("grainier"), "{}", w[0].detail);
        let weak = ImageStats {
            norm: 0.5,
            ..st(0.3, 0.2)
        };
        let w = p.check(&weak, 0.1);
        assert_eq!(w[0].kind, "embedding-norm");
        assert!(w[0].detail.contains("weakly"), "{}", w[0].detail);
        // NaN figures are never "within bounds".
        assert_eq!(p.check(&st(f32::NAN, 0.2), 0.1).len(), 1);
    }

    #[test]
    fn fit_bounds_held_out_images_and_keeps_at_most_half_as_reference() {
        let n = 400;
        // Intensities spread evenly; embeddings on a line, so nearest distances are small
        // for images of the set and large for a point far away.
        let stats: Vec<ImageStats> = (0..n)
            .map(|i| ImageStats {
                mean: 0.1 + 0.5 * i as f32 / n as f32,
                spread: 0.2 + 0.1 * (i % 7) as f32 / 7.0,
                texture: 0.05 + 0.01 * (i % 5) as f32,
                norm: 1.0 + (i % 11) as f32 / 11.0,
            })
            .collect();
        let e: Vec<f32> = (0..n).flat_map(|i| [i as f32 / n as f32, 0.0]).collect();
        let e = Tensor::from_vec(e, (n, 2), &Device::Cpu).unwrap();
        let p = InputProfile::fit(&stats, &e, Distance::Euclidean, 3)
            .unwrap()
            .unwrap();
        assert_eq!(p.reference_count, 200);
        assert_eq!(p.reference.len(), 400);
        assert!(p.intensity_mean[0] < 0.101 && p.intensity_mean[1] > 0.59);
        assert!(
            p.nearest_limit > 0.0 && p.nearest_limit < 0.05,
            "{}",
            p.nearest_limit
        );
        assert!(p.false_alarm_rate < 0.05, "{}", p.false_alarm_rate);
        let far = Tensor::new(&[[5f32, 5.0]], &Device::Cpu).unwrap();
        let d = p.nearest(&far, Distance::Euclidean).unwrap();
        assert!(d[0] > 5.0);
        // Seeded: the same draw twice.
        let q = InputProfile::fit(&stats, &e, Distance::Euclidean, 3)
            .unwrap()
            .unwrap();
        assert_eq!(p, q);
        assert!(
            InputProfile::fit(
                &stats[..10],
                &e.narrow(0, 0, 10).unwrap(),
                Distance::Euclidean,
                3
            )
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn intensity_stats_undo_the_normalisation() {
        let input = InputSpec::fashion_mnist();
        // Raw pixels 0 and 1 in alternating columns: mean 0.5, std 0.5; every horizontal
        // neighbour differs by 1 and no vertical one does: texture 0.5.
        let raw: Vec<f32> = (0..784).map(|i| (i % 2) as f32).collect();
        let x: Vec<f32> = raw.iter().map(|p| (p - 0.286) / 0.353).collect();
        let x = Tensor::from_vec(x, (1, 1, 28, 28), &Device::Cpu).unwrap();
        let s = intensity_stats(&x, &input).unwrap();
        assert!(
            (s[0].0 - 0.5).abs() < 1e-5 && (s[0].1 - 0.5).abs() < 1e-5,
            "{s:?}"
        );
        assert!((s[0].2 - 0.5).abs() < 1e-5, "{s:?}");
    }
}
