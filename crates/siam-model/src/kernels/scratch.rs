//! Reused scratch buffers for the kernels' large temporaries (Winograd's transformed tiles,
//! activations kept for the backward pass). Every step needs the same few buffers of tens of
//! megabytes; allocating them afresh costs a zero-fill (or, for fresh pages, the kernel's) each
//! time. A buffer taken from the pool holds whatever its last user left: [`Buf::scratch`] is for
//! buffers the caller overwrites entirely, [`Buf::zeroed`] clears it.

use std::sync::Mutex;

use rayon::prelude::*;

/// Buffers kept for reuse, each at its full (initialised) length.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Buffers the pool keeps at most; more are freed.
const MAX_POOLED: usize = 48;

/// Values per task when zeroing in parallel.
const ZERO_CHUNK: usize = 1 << 16;

/// `len` zeros, written by rayon's threads (a large buffer's first touch is page faults and
/// zeroing, which one thread would do alone).
fn zeros(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(0f32, len));
    v
}

/// A buffer of `len` values that returns to the pool when dropped.
#[derive(Debug, Default)]
pub(super) struct Buf {
    v: Vec<f32>,
    len: usize,
}

impl Buf {
    /// `len` values of arbitrary (initialised) content, for a caller that writes every one.
    pub(super) fn scratch(len: usize) -> Self {
        let mut v = {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest pooled buffer that is long enough.
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= len)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i)).unwrap_or_default()
        };
        if v.len() < len {
            v = zeros(len);
        }
        Self { v, len }
    }

    /// `len` zeros.
    pub(super) fn zeroed(len: usize) -> Self {
        let mut b = Self::scratch(len);
        b.par_chunks_mut(ZERO_CHUNK).for_each(|c| c.fill(0.0));
        b
    }

    /// The values as a vector (moved out of the pool's reach: for tensors handed to candle).
    pub(super) fn into_vec(mut self) -> Vec<f32> {
        let mut v = std::mem::take(&mut self.v);
        v.truncate(self.len);
        v
    }
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v[..self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        if self.v.is_empty() {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < MAX_POOLED {
            pool.push(std::mem::take(&mut self.v));
        }
    }
}
