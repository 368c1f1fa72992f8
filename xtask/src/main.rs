//! `cargo xtask`: project automation for siam. Run `cargo xtask --help` for the commands.

mod bench;
mod bench_gallery;
mod bench_ood;
mod bench_unseen;
mod cuda;
mod download;
mod fixtures;
mod fuzz;
mod photo_crops;
#[path = "../../crates/siam-cli/src/runtime.rs"]
mod runtime;
mod train;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "siam project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a recipe (--preset, default `default`): full Fashion-MNIST when present, else the embedded fixtures.
    Train(train::Args),
    /// Download and verify a dataset (fashion-mnist, mnist).
    Download(download::Args),
    /// Measure training, inference, loader and compare speed; writes target/bench/latest.json.
    Bench(bench::Args),
    /// Exact gallery search at 100k and 1M embeddings: load time, queries/s, peak memory.
    BenchGallery(bench_gallery::Args),
    /// The input check's false alarms (test split) and detection of foreign inputs.
    BenchOod(bench_ood::Args),
    /// The unseen-class protocol: train with held-out classes per seed; trained vs untrained
    /// vs pixels on the test classes.
    BenchUnseen(bench_unseen::Args),
    /// Regenerate fixtures/ (data subset, PNGs, shipped model) from the full Fashion-MNIST.
    Fixtures(fixtures::Args),
    /// Compile the workspace with the CUDA feature (no GPU needed; installs nvcc from PyPI).
    CheckCuda(cuda::Args),
    /// Fuzz a parser (idx, model-file, config) with cargo-fuzz on a nightly toolchain.
    Fuzz(fuzz::Args),
    /// An instance-matching colour folder: random crops of each photograph as its class.
    PhotoCrops(photo_crops::Args),
}

/// The Python the PyTorch references run with: `$PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// [`python`], and whether it can import `modules` (comma-separated, as in `import torch, sklearn`).
pub fn python_with(modules: &str) -> (String, bool) {
    let python = python();
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    (python, ok)
}

/// The workspace root, found from this crate's manifest directory.
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    runtime::configure();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Train(a) => train::run(&a),
        Cmd::Download(a) => download::run(&a),
        Cmd::Bench(a) => bench::run(&a),
        Cmd::BenchGallery(a) => bench_gallery::run(&a),
        Cmd::BenchOod(a) => bench_ood::run(&a),
        Cmd::BenchUnseen(a) => bench_unseen::run(&a),
        Cmd::Fixtures(a) => fixtures::run(&a),
        Cmd::CheckCuda(a) => cuda::run(&a),
        Cmd::Fuzz(a) => fuzz::run(&a),
        Cmd::PhotoCrops(a) => photo_crops::run(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
