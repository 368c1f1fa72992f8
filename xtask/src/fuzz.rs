//! `cargo xtask fuzz TARGET --seconds N`: runs a cargo-fuzz target (`xtask/fuzz`) on a nightly
//! toolchain, seeded with valid inputs, and copies every crashing input into
//! `xtask/fuzz/regressions/TARGET/`, where `cargo test` (stable) replays them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::project_root;

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct Args {
    /// idx, model-file or config.
    pub target: String,
    /// How long to fuzz.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Parallel fuzzing processes (libFuzzer -fork).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

fn fuzz_dir() -> PathBuf {
    project_root().join("xtask/fuzz")
}

/// The cargo-fuzz binary name of a target.
fn bin(target: &str) -> String {
    target.replace('-', "_")
}

fn works(args: &[&str]) -> bool {
    Command::new("cargo")
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Valid inputs to start from (siam_train::fuzz::seeds), written into the corpus folder.
fn write_seeds(target: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    for (name, bytes) in siam_train::fuzz::seeds(target) {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}

pub fn run(a: &Args) -> Result<()> {
    if siam_train::fuzz::harness(&a.target).is_none() {
        bail!(
            "unknown fuzz target '{}' (known: {})",
            a.target,
            siam_train::fuzz::TARGETS.join(", ")
        );
    }
    if !works(&["+nightly", "--version"]) {
        bail!("fuzzing needs a nightly toolchain: rustup toolchain install nightly");
    }
    if !works(&["+nightly", "fuzz", "--version"]) {
        bail!("fuzzing needs cargo-fuzz: cargo install cargo-fuzz");
    }
    let corpus = fuzz_dir().join("corpus").join(&a.target);
    let regressions = fuzz_dir().join("regressions").join(&a.target);
    write_seeds(&a.target, &corpus)?;
    std::fs::create_dir_all(&regressions)?;
    let artifacts = fuzz_dir().join("artifacts").join(bin(&a.target));
    let before: Vec<PathBuf> = list(&artifacts);
    eprintln!(
        "xtask: fuzzing {} for {} s (corpus {}, regressions {})",
        a.target,
        a.seconds,
        corpus.display(),
        regressions.display()
    );
    let mut cmd = Command::new("cargo");
    cmd.current_dir(project_root())
        .args(["+nightly", "fuzz", "run", "--fuzz-dir"])
        .arg(fuzz_dir())
        .arg(bin(&a.target))
        .arg(&corpus)
        .arg(&regressions)
        .arg("--")
        .arg(format!("-max_total_time={}", a.seconds))
        .arg("-max_len=65536")
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=20")
        .arg("-print_final_stats=1");
    if a.jobs > 1 {
        cmd.arg(format!("-fork={}", a.jobs))
            .arg("-ignore_crashes=1");
    }
    let status = cmd.status().context("running cargo +nightly fuzz")?;
    let found: Vec<PathBuf> = list(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    for f in &found {
        let name = f.file_name().map(|n| n.to_owned()).unwrap_or_default();
        std::fs::copy(f, regressions.join(&name))
            .with_context(|| format!("saving {}", f.display()))?;
    }
    if !found.is_empty() {
        bail!(
            "{} failing input(s) saved to {}; fix them, then `cargo test -p siam-train` replays them",
            found.len(),
            regressions.display()
        );
    }
    if !status.success() {
        bail!("cargo fuzz exited with {status}");
    }
    eprintln!("xtask: no failure in {} s of {}", a.seconds, a.target);
    Ok(())
}

fn list(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}
