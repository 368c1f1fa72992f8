//! `cargo xtask check-cuda`: compiles the workspace with the `cuda` feature on a machine without
//! a GPU or CUDA toolkit. It installs nvcc 13.0 from PyPI into a virtual environment and points
//! candle's build at it (compute capability 90 unless `CUDA_COMPUTE_CAP` is set). About four
//! minutes cold on two cores.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::project_root;

/// Options of `cargo xtask check-cuda`.
#[derive(clap::Args)]
pub struct Args {
    /// Where to keep the nvcc virtual environment (default $SIAM_CUDA_VENV, else target/cuda-venv).
    #[arg(long)]
    venv: Option<PathBuf>,
}

const WHEELS: [&str; 5] = [
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-nvvm==13.0.*",
];

fn ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn run(a: &Args) -> Result<()> {
    let venv = a
        .venv
        .clone()
        .or_else(|| std::env::var_os("SIAM_CUDA_VENV").map(PathBuf::from))
        .unwrap_or_else(|| project_root().join("target/cuda-venv"));
    let marker = venv.join("bin/nvcc-ok");
    if !marker.is_file() {
        eprintln!(
            "check-cuda: installing nvcc 13.0 from PyPI into {}",
            venv.display()
        );
        ok(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
        ok(
            Command::new(venv.join("bin/pip"))
                .args(["install", "-q"])
                .args(WHEELS),
            "pip install nvidia-cuda-nvcc",
        )?;
        std::fs::write(&marker, b"")?;
    }
    let cu = ok(
        Command::new(venv.join("bin/python")).args([
            "-c",
            "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cu13'))",
        ]),
        "locating the CUDA toolkit",
    )?;
    let cu = PathBuf::from(cu);
    let path = format!(
        "{}:{}",
        cu.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(project_root())
        .args([
            "check",
            "-p",
            "siam-cli",
            "-p",
            "siam-model",
            "-p",
            "siam-train",
            "--features",
            "siam-cli/cuda,siam-model/cuda",
        ])
        .arg("--target-dir")
        .arg(project_root().join("target/cuda"))
        .env("PATH", path)
        .env("NVCC", cu.join("bin/nvcc"))
        .env("CUDA_HOME", &cu)
        .env("CUDA_PATH", &cu)
        .env("CUDARC_CUDA_VERSION", "13000")
        .env("CUDAFORGE_THREADS", threads.to_string());
    if std::env::var_os("CUDA_COMPUTE_CAP").is_none() {
        cmd.env("CUDA_COMPUTE_CAP", "90");
    }
    eprintln!(
        "check-cuda: cargo check with --features cuda (nvcc {})",
        cu.display()
    );
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("the CUDA build does not compile ({status})");
    }
    eprintln!("check-cuda: the CUDA build compiles");
    Ok(())
}
