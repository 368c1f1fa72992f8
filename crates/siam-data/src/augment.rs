//! Augmentation on f32 CHW images: horizontal flip, rotation, affine (scale, translate) with
//! bilinear interpolation, random crop with padding, and normalisation.
//!
//! Geometric transforms fill with 0 (black) outside the source, before normalisation. Each
//! sample's randomness comes from an RNG derived from (seed, epoch, sample slot).

use rand::Rng;

use crate::error::{DataError, Result};
use crate::image_set::ImageShape;

/// Random augmentation settings; every transform can be switched off.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Flip left-right with probability 0.5 (leave off for digits and text).
    pub hflip: bool,
    /// Rotate by a uniform angle in ±`rotate-degrees` (0 = off).
    pub rotate_degrees: f32,
    /// Scale by a uniform factor in [`scale-min`, `scale-max`] (1, 1 = off).
    pub scale_min: f32,
    /// Upper end of the scale range.
    pub scale_max: f32,
    /// Translate by a uniform shift of up to this fraction of the width / height (0 = off).
    pub translate: f32,
    /// Pad by this many zero pixels on each side, then crop back at a random offset (0 = off).
    pub crop_padding: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::none()
    }
}

impl AugmentConfig {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            hflip: false,
            rotate_degrees: 0.0,
            scale_min: 1.0,
            scale_max: 1.0,
            translate: 0.0,
            crop_padding: 0,
        }
    }

    /// Checks ranges; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: String| Err(DataError::Invalid(format!("augment.{k}: {why}")));
        if !(0.0..=180.0).contains(&self.rotate_degrees) {
            return bad(
                "rotate-degrees",
                format!("{} is outside [0, 180]", self.rotate_degrees),
            );
        }
        if !(self.scale_min > 0.0 && self.scale_min <= self.scale_max && self.scale_max.is_finite())
        {
            return bad(
                "scale-min",
                format!(
                    "need 0 < scale-min ≤ scale-max, got {} and {}",
                    self.scale_min, self.scale_max
                ),
            );
        }
        if !(0.0..=0.5).contains(&self.translate) {
            return bad(
                "translate",
                format!("{} is outside [0, 0.5]", self.translate),
            );
        }
        Ok(())
    }

    /// True when no transform is on.
    pub fn is_identity(&self) -> bool {
        *self == Self::none()
    }

    fn has_affine(&self) -> bool {
        self.rotate_degrees > 0.0
            || self.scale_min != 1.0
            || self.scale_max != 1.0
            || self.translate > 0.0
    }

    /// Augments one image in place, drawing from `rng`; `scratch` must be as long as `img`.
    pub fn apply(
        &self,
        img: &mut [f32],
        scratch: &mut [f32],
        shape: ImageShape,
        rng: &mut impl Rng,
    ) {
        // Draw every random number in a fixed order, whichever transforms are on.
        let flip = rng.random::<f32>() < 0.5;
        let angle = rng.random_range(-1.0f32..=1.0) * self.rotate_degrees;
        let scale = self.scale_min + rng.random::<f32>() * (self.scale_max - self.scale_min);
        let tx = rng.random_range(-1.0f32..=1.0) * self.translate * shape.width as f32;
        let ty = rng.random_range(-1.0f32..=1.0) * self.translate * shape.height as f32;
        let p = self.crop_padding;
        let dy = rng.random_range(0..=2 * p);
        let dx = rng.random_range(0..=2 * p);
        if self.hflip && flip {
            hflip(img, shape);
        }
        if self.has_affine() {
            affine(img, scratch, shape, angle, scale, tx, ty);
            img.copy_from_slice(scratch);
        }
        if p > 0 {
            crop_with_padding(img, scratch, shape, p, dy, dx);
            img.copy_from_slice(scratch);
        }
    }
}

/// Per-channel normalisation `(x − mean) / std`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Normalize {
    /// Mean per channel (one value broadcasts).
    pub mean: Vec<f32>,
    /// Standard deviation per channel (one value broadcasts).
    pub std: Vec<f32>,
}

impl Normalize {
    /// Checks the lengths against `channels` and that every std is positive.
    pub fn validate(&self, channels: usize) -> Result<()> {
        for (k, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != 1 && v.len() != channels {
                return Err(DataError::Invalid(format!(
                    "normalize.{k} has {} values for {channels} channels",
                    v.len()
                )));
            }
        }
        if let Some(s) = self.std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
            return Err(DataError::Invalid(format!(
                "normalize.std {s} must be positive"
            )));
        }
        Ok(())
    }

    /// Normalises `img` (CHW) in place.
    pub fn apply(&self, img: &mut [f32], shape: ImageShape) {
        let plane = shape.height * shape.width;
        for (c, ch) in img.chunks_exact_mut(plane).enumerate() {
            let m = self.mean[if self.mean.len() == 1 { 0 } else { c }];
            let inv = 1.0 / self.std[if self.std.len() == 1 { 0 } else { c }];
            for v in ch {
                *v = (*v - m) * inv;
            }
        }
    }
}

/// Flips every channel left-right in place.
pub fn hflip(img: &mut [f32], shape: ImageShape) {
    for row in img.chunks_exact_mut(shape.width) {
        row.reverse();
    }
}

/// Samples `src` at (y, x) bilinearly; pixels outside the image count as 0.
#[inline]
fn bilinear(plane: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let at = |yy: isize, xx: isize| -> f32 {
        if yy >= 0 && xx >= 0 && (yy as usize) < h && (xx as usize) < w {
            plane[yy as usize * w + xx as usize]
        } else {
            0.0
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Rotates by `angle_deg` (counter-clockwise as displayed) and scales by `scale` about the
/// image centre ((H−1)/2, (W−1)/2), then shifts by (`tx`, `ty`) pixels; bilinear, zero fill.
///
/// Output pixel (y, x) samples the source at `c + M·(q − c − t)` with
/// `M = (1/scale)·[[cos θ, sin θ], [−sin θ, cos θ]]` in (row, col) order.
#[allow(clippy::too_many_arguments)]
pub fn affine(
    src: &[f32],
    dst: &mut [f32],
    shape: ImageShape,
    angle_deg: f32,
    scale: f32,
    tx: f32,
    ty: f32,
) {
    let (h, w) = (shape.height, shape.width);
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    let (s, c) = angle_deg.to_radians().sin_cos();
    let inv = 1.0 / scale;
    for (sp, dp) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
        for y in 0..h {
            let v = y as f32 - cy - ty;
            for x in 0..w {
                let u = x as f32 - cx - tx;
                let yin = inv * (c * v + s * u) + cy;
                let xin = inv * (-s * v + c * u) + cx;
                dp[y * w + x] = bilinear(sp, h, w, yin, xin);
            }
        }
    }
}

/// Rotation alone: [`affine`] with scale 1 and no shift.
pub fn rotate(src: &[f32], dst: &mut [f32], shape: ImageShape, angle_deg: f32) {
    affine(src, dst, shape, angle_deg, 1.0, 0.0, 0.0);
}

/// Pads by `pad` zeros on each side and crops an H×W window at (`dy`, `dx`) of the padded image.
pub fn crop_with_padding(
    src: &[f32],
    dst: &mut [f32],
    shape: ImageShape,
    pad: usize,
    dy: usize,
    dx: usize,
) {
    let (h, w) = (shape.height, shape.width);
    for (sp, dp) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
        for y in 0..h {
            let sy = (y + dy) as isize - pad as isize;
            for x in 0..w {
                let sx = (x + dx) as isize - pad as isize;
                dp[y * w + x] = if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                    sp[sy as usize * w + sx as usize]
                } else {
                    0.0
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_for;

    const S: ImageShape = ImageShape {
        channels: 2,
        height: 5,
        width: 4,
    };

    fn img() -> Vec<f32> {
        (0..S.numel()).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    #[test]
    fn two_flips_are_identity() {
        let mut a = img();
        hflip(&mut a, S);
        assert_ne!(a, img());
        hflip(&mut a, S);
        assert_eq!(a, img());
    }

    #[test]
    fn zero_rotation_and_unit_scale_are_identity() {
        let src = img();
        let mut dst = vec![0.0; src.len()];
        rotate(&src, &mut dst, S, 0.0);
        for (a, b) in src.iter().zip(&dst) {
            assert!((a - b).abs() < 1e-6);
        }
        crop_with_padding(&src, &mut dst, S, 2, 2, 2);
        assert_eq!(src, dst);
    }

    #[test]
    fn crop_shifts_content() {
        let src = img();
        let mut dst = vec![9.0; src.len()];
        crop_with_padding(&src, &mut dst, S, 1, 0, 0);
        // Offset (0, 0) in the padded image moves content down-right by one pixel.
        assert_eq!(dst[0], 0.0);
        assert_eq!(dst[S.width + 1], src[0]);
    }

    #[test]
    fn identity_config_changes_nothing() {
        let mut a = img();
        let mut scratch = vec![0.0; a.len()];
        AugmentConfig::none().apply(&mut a, &mut scratch, S, &mut rng_for(1, &[2]));
        assert_eq!(a, img());
    }

    #[test]
    fn validate_names_the_key() {
        let c = AugmentConfig {
            rotate_degrees: 400.0,
            ..AugmentConfig::none()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("rotate-degrees")
        );
        let n = Normalize {
            mean: vec![0.5; 2],
            std: vec![0.0],
        };
        assert!(n.validate(2).unwrap_err().to_string().contains("std"));
        assert!(n.validate(3).is_err());
    }
}
