//! `cargo xtask train`: the main job. Trains the default recipe on the full Fashion-MNIST when
//! it is on this machine, else on the embedded fixtures, through the `siam` CLI.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::project_root;

/// Options of `cargo xtask train`; anything after `--` goes to `siam train`.
#[derive(clap::Args)]
pub struct Args {
    /// The recipe: default (the convnet with CosFace and a contrastive term, about 7 minutes on
    /// the full Fashion-MNIST), unseen (the default with a two-view term, for classes never seen
    /// in training), fast (the seed CNN, about 1.5 minutes), seed, quick, convnet or resnet
    /// (docs/BENCHMARKS.md).
    #[arg(long, default_value = "default")]
    pub preset: String,
    /// Extra `siam train` flags, e.g. `-- --epochs 2 --out runs/mine`.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// `cargo run --release -q -p siam-cli -- train` from the project root, flags still to add.
pub fn siam_train() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(project_root()).args([
        "run",
        "--release",
        "-q",
        "-p",
        "siam-cli",
        "--",
        "train",
    ]);
    cmd
}

pub fn run(a: &Args) -> Result<()> {
    let mut cmd = siam_train();
    // A config file or preset given after `--` wins.
    if !a.extra.iter().any(|x| x == "--config" || x == "--preset") {
        cmd.args(["--preset", &a.preset]);
    }
    let recipe = format!("the {} recipe", a.preset);
    let user_data = a.extra.iter().any(|x| x == "--data");
    if !user_data {
        match siam_train::data::find_known("fashion-mnist") {
            Some(dir) => {
                eprintln!(
                    "xtask: training {recipe} on the full Fashion-MNIST in {}",
                    dir.display()
                );
                cmd.args(["--data", "fashion-mnist"]);
            }
            None => {
                eprintln!(
                    "xtask: Fashion-MNIST is not downloaded (`cargo xtask download fashion-mnist`); \
                     training {recipe} on the embedded fixture subset, 100 steps per epoch"
                );
                cmd.args(["--data", "fixtures"]);
                if !a.extra.iter().any(|x| x == "--steps-per-epoch") {
                    cmd.args(["--steps-per-epoch", "100"]);
                }
            }
        }
    }
    cmd.args(&a.extra);
    let status = cmd.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("siam train failed ({status})");
    }
    Ok(())
}
