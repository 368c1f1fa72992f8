//! Fuzz target: `siam_train::fuzz::idx` (see crates/siam-train/src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| siam_train::fuzz::idx(data));
