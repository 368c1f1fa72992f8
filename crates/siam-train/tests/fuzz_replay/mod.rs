//! Fuzz regressions under the normal test command: every input `cargo xtask fuzz` saved in
//! `xtask/fuzz/regressions/TARGET/` replayed through the same harness, plus a short seeded
//! mutation run (bit flips, cuts, splices) of valid inputs, so the stable toolchain exercises
//! the parsers too. A panic here is a bug; errors are the expected answer.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use siam_train::fuzz::{TARGETS, harness};

const REGRESSIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../xtask/fuzz/regressions");

fn replay(target: &str, name: &str, data: &[u8]) {
    let h = harness(target).unwrap();
    let r = std::panic::catch_unwind(|| h(data));
    assert!(r.is_ok(), "{target}: input {name} panics");
}

#[test]
fn saved_fuzz_inputs_do_not_panic() {
    let mut n = 0;
    for t in TARGETS {
        let dir = Path::new(REGRESSIONS).join(t);
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().is_file() {
                let data = std::fs::read(e.path()).unwrap();
                replay(t, &e.file_name().to_string_lossy(), &data);
                n += 1;
            }
        }
    }
    eprintln!("replayed {n} saved fuzz inputs");
}

fn mutate(rng: &mut ChaCha8Rng, v: &[u8]) -> Vec<u8> {
    let mut m = v.to_vec();
    for _ in 0..rng.random_range(1..4) {
        if m.is_empty() {
            m.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..m.len());
        match rng.random_range(0..5) {
            0 => m[i] ^= 1 << rng.random_range(0..8),
            1 => m[i] = [0, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
            2 => m.truncate(i),
            3 => {
                let n = rng.random_range(1..16);
                let b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                m.splice(i..i, b);
            }
            _ => {
                let j = rng.random_range(i..m.len());
                m.drain(i..j);
            }
        }
    }
    m
}

#[test]
fn seeded_mutations_of_valid_inputs_do_not_panic() {
    for t in TARGETS {
        let base: Vec<Vec<u8>> = siam_train::fuzz::seeds(t)
            .into_iter()
            .map(|s| s.1)
            .collect();
        assert!(!base.is_empty(), "{t} has seeds");
        let mut rng = ChaCha8Rng::seed_from_u64(0xf022);
        let runs = if t == "model-file" { 300 } else { 2000 };
        for i in 0..runs {
            let s = &base[i % base.len()];
            let m = mutate(&mut rng, s);
            replay(t, &format!("mutation {i}"), &m);
        }
    }
}
