//! Flushing denormal floats to zero while training on the CPU.
//!
//! As a run goes on, some values (gradients and AdamW's second moments, typically) fall below
//! f32's smallest normal number (about 1.2e-38). x86 CPUs compute with such denormals through a
//! microcode assist that costs tens to hundreds of cycles per instruction: on the default recipe
//! the steps slowed by a tenth within three epochs (docs/BENCHMARKS.md). Setting the MXCSR bits FTZ (results
//! that would be denormal become zero) and DAZ (denormal inputs read as zero) keeps the speed
//! flat; it changes only values below 1.2e-38, which no loss, metric or weight here depends on.
//! TensorFlow sets the same bits on its CPU threads; PyTorch offers
//! `torch.set_flush_denormal(True)`.
//!
//! The bits belong to each thread, so [`flush_denormals`] sets them on the calling thread and on
//! every thread of the current rayon pool (where siam's kernels and gemm run); threads those
//! threads start afterwards inherit them. The returned guard puts the calling thread's bits
//! back; the pool's threads keep flushing (putting them back while another run in the same
//! process still trains would change that run). Elsewhere than x86-64 it does nothing.

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = 0x8040;

/// This thread's FTZ and DAZ bits, before setting them to `on`.
#[cfg(target_arch = "x86_64")]
fn swap_bits(on: u32) -> u32 {
    #[allow(deprecated, unsafe_code)]
    // SAFETY: reading and writing MXCSR only changes this thread's floating-point modes;
    // FTZ and DAZ do not unmask any exception.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        let csr = _mm_getcsr();
        _mm_setcsr((csr & !FTZ_DAZ) | (on & FTZ_DAZ));
        csr & FTZ_DAZ
    }
}

/// Whether this thread flushes denormals (both FTZ and DAZ set); `false` off x86-64.
pub fn flushing() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let before = swap_bits(0);
        swap_bits(before);
        before == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Puts the calling thread's modes back as they were, when dropped.
#[must_use = "the calling thread flushes denormals only while the guard lives"]
#[derive(Debug)]
pub struct FlushDenormals {
    /// The calling thread's bits before.
    #[cfg(target_arch = "x86_64")]
    caller: u32,
}

/// Flushes denormals to zero on this thread until the guard drops, and on every thread of the
/// current rayon pool from now on (see the module documentation).
pub fn flush_denormals() -> FlushDenormals {
    flush_on(None)
}

/// [`flush_denormals`] with `pool` in place of the current pool.
fn flush_on(pool: Option<&rayon::ThreadPool>) -> FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    {
        let caller = swap_bits(FTZ_DAZ);
        match pool {
            Some(p) => p.broadcast(|_| swap_bits(FTZ_DAZ)),
            None => rayon::broadcast(|_| swap_bits(FTZ_DAZ)),
        };
        FlushDenormals { caller }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = pool;
        FlushDenormals {}
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        swap_bits(self.caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A product that underflows into the denormal range: kept without the guard, zero with
    /// it on the calling thread and on the pool's threads; the calling thread keeps denormals
    /// again once the guard drops. (A pool of its own, so that no other test's pool changes.)
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_guard_flushes_on_the_caller_and_every_pool_thread() {
        let product = || std::hint::black_box(1.0e-30f32) * std::hint::black_box(1.0e-10f32);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        std::thread::spawn(move || {
            let on_pool = || pool.broadcast(|_| product());
            assert!(!flushing());
            assert!(product() > 0.0 && product() < f32::MIN_POSITIVE);
            assert!(on_pool().iter().all(|&p| p > 0.0));
            {
                let _g = flush_on(Some(&pool));
                assert!(flushing());
                assert_eq!(product(), 0.0);
                assert_eq!(on_pool(), vec![0.0; 3]);
                // A denormal input reads as zero too (DAZ).
                let denormal = std::hint::black_box(f32::from_bits(1));
                assert_eq!(std::hint::black_box(denormal * 2.0), 0.0);
            }
            assert!(!flushing());
            assert!(product() > 0.0);
            assert_eq!(on_pool(), vec![0.0; 3]);
        })
        .join()
        .unwrap();
    }
}
