//! Augmentation on f32 CHW images: horizontal flip, rotation, affine (scale, translate) with
//! bilinear interpolation, random crop with padding, random resized crop, Gaussian noise,
//! random erasing, and normalisation.
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
    /// Random resized crop (torchvision's `RandomResizedCrop`): a window of a uniform share of
    /// the area in [`resized-crop-min`, `resized-crop-max`] and an aspect ratio log-uniform in
    /// [3/4, 4/3], resized back to the full size bilinearly (1, 1 = off).
    pub resized_crop_min: f32,
    /// Upper end of the resized crop's area range.
    pub resized_crop_max: f32,
    /// Add Gaussian noise of this standard deviation, in [0, 1] pixel units (0 = off).
    pub noise_std: f32,
    /// Erase one rectangle with this probability (torchvision's `RandomErasing`: 2–33 % of the
    /// area, aspect ratio log-uniform in [0.3, 3.3], filled with 0; 0 = off).
    pub erase_probability: f32,
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
            resized_crop_min: 1.0,
            resized_crop_max: 1.0,
            noise_std: 0.0,
            erase_probability: 0.0,
        }
    }

    /// The strong augmentation of a self-supervised view (SimCLR's recipe for small gray
    /// images): `self`'s transforms plus a resized crop of 35–100 % of the area, noise of
    /// σ = 0.05 and erasing with probability 0.25, where `self` leaves them off.
    pub fn strong_view(&self) -> Self {
        let mut a = self.clone();
        if a.resized_crop_min == 1.0 && a.resized_crop_max == 1.0 {
            a.resized_crop_min = 0.35;
        }
        if a.noise_std == 0.0 {
            a.noise_std = 0.05;
        }
        if a.erase_probability == 0.0 {
            a.erase_probability = 0.25;
        }
        a
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
        if !(self.resized_crop_min > 0.0
            && self.resized_crop_min <= self.resized_crop_max
            && self.resized_crop_max <= 1.0)
        {
            return bad(
                "resized-crop-min",
                format!(
                    "need 0 < resized-crop-min ≤ resized-crop-max ≤ 1, got {} and {}",
                    self.resized_crop_min, self.resized_crop_max
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.noise_std) {
            return bad("noise-std", format!("{} is outside [0, 1]", self.noise_std));
        }
        if !(0.0..=1.0).contains(&self.erase_probability) {
            return bad(
                "erase-probability",
                format!("{} is outside [0, 1]", self.erase_probability),
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
        // Drawn after the older transforms' numbers, so configs without these keep their values.
        let (h, w) = (shape.height, shape.width);
        let crop = window(
            rng,
            h,
            w,
            (self.resized_crop_min, self.resized_crop_max),
            (3.0 / 4.0, 4.0 / 3.0),
        );
        let erase_now = rng.random::<f32>() < self.erase_probability;
        let erased = window(rng, h, w, (0.02, 0.33), (0.3, 3.3));
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
        if self.resized_crop_min < 1.0 {
            resized_crop(img, scratch, shape, crop);
            img.copy_from_slice(scratch);
        }
        if self.noise_std > 0.0 {
            add_noise(img, self.noise_std, rng);
        }
        if erase_now {
            erase(img, shape, erased);
        }
    }
}

/// A window (top, left, height, width) of an `h`×`w` image: a share of the area uniform in
/// `scale`, an aspect ratio (width / height) log-uniform in `ratio`, at a uniform position.
/// Always draws four numbers; a window too wide or tall for the image is clamped to it.
fn window(
    rng: &mut impl Rng,
    h: usize,
    w: usize,
    scale: (f32, f32),
    ratio: (f32, f32),
) -> (usize, usize, usize, usize) {
    let s = scale.0 + rng.random::<f32>() * (scale.1 - scale.0);
    let (l0, l1) = (ratio.0.ln(), ratio.1.ln());
    let r = (l0 + rng.random::<f32>() * (l1 - l0)).exp();
    let (u, v) = (rng.random::<f32>(), rng.random::<f32>());
    let area = s * (h * w) as f32;
    let ww = ((area * r).sqrt().round() as usize).clamp(1, w);
    let hh = ((area / r).sqrt().round() as usize).clamp(1, h);
    let top = ((u * (h - hh + 1) as f32) as usize).min(h - hh);
    let left = ((v * (w - ww + 1) as f32) as usize).min(w - ww);
    (top, left, hh, ww)
}

/// Resizes the window (top, left, height, width) of `src` to the full size into `dst`,
/// bilinearly with half-pixel centres (torchvision's `resize`, no antialiasing).
pub fn resized_crop(
    src: &[f32],
    dst: &mut [f32],
    shape: ImageShape,
    (top, left, ch, cw): (usize, usize, usize, usize),
) {
    let (h, w) = (shape.height, shape.width);
    let (sy, sx) = (ch as f32 / h as f32, cw as f32 / w as f32);
    for (sp, dp) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(h * w)) {
        for y in 0..h {
            let yin =
                (top as f32 + (y as f32 + 0.5) * sy - 0.5).clamp(top as f32, (top + ch - 1) as f32);
            for x in 0..w {
                let xin = (left as f32 + (x as f32 + 0.5) * sx - 0.5)
                    .clamp(left as f32, (left + cw - 1) as f32);
                dp[y * w + x] = bilinear(sp, h, w, yin, xin);
            }
        }
    }
}

/// Adds N(0, σ²) to every value (Box–Muller over our RNG).
fn add_noise(img: &mut [f32], sigma: f32, rng: &mut impl Rng) {
    for pair in img.chunks_mut(2) {
        let u1 = 1.0 - rng.random::<f32>(); // (0, 1]: ln is finite
        let u2 = rng.random::<f32>();
        let rad = (-2.0 * u1.ln()).sqrt() * sigma;
        let (s, c) = (std::f32::consts::TAU * u2).sin_cos();
        pair[0] += rad * c;
        if let Some(b) = pair.get_mut(1) {
            *b += rad * s;
        }
    }
}

/// Sets the window (top, left, height, width) to 0 in every channel.
pub fn erase(
    img: &mut [f32],
    shape: ImageShape,
    (top, left, eh, ew): (usize, usize, usize, usize),
) {
    let (h, w) = (shape.height, shape.width);
    for plane in img.chunks_exact_mut(h * w) {
        for row in plane[top * w..(top + eh) * w].chunks_exact_mut(w) {
            row[left..left + ew].fill(0.0);
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
mod tests;
