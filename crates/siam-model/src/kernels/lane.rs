//! `F8`, eight f32 lanes whose element-wise operations the compiler turns into single vector
//! instructions (within [`simd`](super::simd), AVX), and the [`Lane`] trait the tile transforms
//! are written against, so one definition serves eight channels at a time and the scalar tail.

use std::ops::{Add, Mul, Sub};

/// What a tile transform computes with: f32, or eight of them.
pub(super) trait Lane:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self>
{
}

impl Lane for f32 {}

/// Eight f32 lanes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct F8(pub(super) [f32; 8]);

impl F8 {
    /// The first eight values of `s`.
    #[inline(always)]
    pub(super) fn load(s: &[f32]) -> Self {
        let mut v = [0f32; 8];
        v.copy_from_slice(&s[..8]);
        Self(v)
    }
    /// Writes the lanes to the first eight values of `s`.
    #[inline(always)]
    pub(super) fn store(self, s: &mut [f32]) {
        s[..8].copy_from_slice(&self.0);
    }
    /// Adds the lanes to the first eight values of `s`.
    #[inline(always)]
    pub(super) fn add_to(self, s: &mut [f32]) {
        let d = &mut s[..8];
        for (d, v) in d.iter_mut().zip(self.0) {
            *d += v;
        }
    }
}

impl Add for F8 {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r += o;
        }
        Self(r)
    }
}

impl Sub for F8 {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r -= o;
        }
        Self(r)
    }
}

impl Mul<f32> for F8 {
    type Output = Self;
    #[inline(always)]
    fn mul(self, k: f32) -> Self {
        let mut r = self.0;
        for r in &mut r {
            *r *= k;
        }
        Self(r)
    }
}

impl Lane for F8 {}
