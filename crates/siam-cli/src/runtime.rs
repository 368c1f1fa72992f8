//! Process-wide settings for the binaries (`siam`, and `xtask` through `#[path]`), measured to
//! pay on CPU in docs/BENCHMARKS.md. `configure` must run first thing in `main`, while the
//! process has one thread. A variable the user set always wins.

/// mimalloc's `purge_delay` option (number 15 in its `mi_option_t`, v2 and v3).
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets `RAYON_NUM_THREADS` to the core count (candle otherwise asks the OS for it on every
/// matrix product); keeps candle's element-wise operations on the calling thread
/// (`CANDLE_NUM_THREADS=1`: candle 0.11 otherwise runs them on a second pool of its own whose
/// threads spin-wait between operations, competing for the cores with rayon's pool, where siam's
/// kernels and the matrix products run); and stops mimalloc from returning freed memory to the
/// OS between training steps (every step reallocates the same large buffers, which the kernel
/// would zero again).
pub fn configure() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: as below, first thing in main, before any other thread exists.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", "1")
        };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: called first in main, before any other thread exists, so nothing reads or
        // writes the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string())
        };
    }
    #[cfg(feature = "mimalloc")]
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores the value of a known option; -1 means "never purge".
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
        };
    }
}
