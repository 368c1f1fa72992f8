//! `Fx<N>`, N f32 lanes (16 and 8 in the tile transforms), whose element-wise operations the compiler turns into
//! vector instructions (within a `simd_kernel`: AVX2 or AVX-512), and the [`Lane`] trait the
//! tile transforms are written against, so one definition serves 16 or 8 channels at a time
//! and the scalar tail.

use std::ops::{Add, Mul, Sub};

/// What a tile transform computes with: f32, or eight of them.
pub(super) trait Lane:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<f32, Output = Self>
{
}

impl Lane for f32 {}

/// `N` f32 lanes (8: one AVX register, 16: one AVX-512 register or two AVX ones).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Fx<const N: usize>(pub(super) [f32; N]);

impl<const N: usize> Fx<N> {
    /// All lanes zero.
    pub(super) const ZERO: Self = Self([0.0; N]);
    /// The first `N` values of `s`.
    #[inline(always)]
    pub(super) fn load(s: &[f32]) -> Self {
        let mut v = [0f32; N];
        v.copy_from_slice(&s[..N]);
        Self(v)
    }
    /// Writes the lanes to the first `N` values of `s`.
    #[inline(always)]
    pub(super) fn store(self, s: &mut [f32]) {
        s[..N].copy_from_slice(&self.0);
    }
    /// Adds the lanes to the first `N` values of `s`.
    #[inline(always)]
    pub(super) fn add_to(self, s: &mut [f32]) {
        let d = &mut s[..N];
        for (d, v) in d.iter_mut().zip(self.0) {
            *d += v;
        }
    }
}

impl<const N: usize> Add for Fx<N> {
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

impl<const N: usize> Sub for Fx<N> {
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

impl<const N: usize> Mul<f32> for Fx<N> {
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

impl<const N: usize> Lane for Fx<N> {}
