//! `cargo xtask fixtures`: the committed data subset, the image-folder fixture and the shipped
//! model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use siam_data::idx::{self, FASHION_MNIST_CLASSES, IdxSplit};

use crate::project_root;

/// Where Debian's `dataset-fashion-mnist` puts the IDX files.
pub const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Options of `cargo xtask fixtures`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory holding the full Fashion-MNIST IDX files.
    #[arg(long, default_value = SYSTEM_FASHION_MNIST)]
    source: PathBuf,
    /// Training images per class in the subset.
    #[arg(long, default_value_t = 500)]
    train_per_class: usize,
    /// Test images per class in the subset.
    #[arg(long, default_value_t = 100)]
    test_per_class: usize,
    /// PNG images per class in the image-folder fixture.
    #[arg(long, default_value_t = 4)]
    png_per_class: usize,
    /// Keep the shipped model as it is (training it, the `default` recipe on the full data, takes
    /// 10–12 minutes on 2 cores).
    #[arg(long)]
    skip_model: bool,
    /// The run folder of the shipped model's training.
    #[arg(long, default_value = "target/fixtures-model")]
    model_run: PathBuf,
}

/// Folder-safe class name: lower case, '/' and spaces to '-'.
pub fn folder_name(class: &str) -> String {
    class.to_lowercase().replace(['/', ' '], "-")
}

pub fn run(a: &Args) -> Result<()> {
    let names: Vec<String> = FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let src = &a.source;
    let train = idx::load_dir(src, IdxSplit::Train, Some(names.clone())).with_context(|| {
        format!(
            "reading Fashion-MNIST from {} (install it with `apt-get install dataset-fashion-mnist` or pass --source)",
            src.display()
        )
    })?;
    let test = idx::load_dir(src, IdxSplit::Test, Some(names.clone()))?;
    let out = project_root().join("fixtures/fashion-mnist-subset");
    let train_sub = train.take_per_class(a.train_per_class)?;
    let test_sub = test.take_per_class(a.test_per_class)?;
    idx::write_dir(&out, IdxSplit::Train, &train_sub)?;
    idx::write_dir(&out, IdxSplit::Test, &test_sub)?;
    siam_data::write_atomic(
        &out.join("classes.txt"),
        (names.join("\n") + "\n").as_bytes(),
    )?;
    println!(
        "wrote {} train and {} test images to {}",
        train_sub.len(),
        test_sub.len(),
        out.display()
    );

    // The image-folder fixture: test images that follow the IDX subset, so they are not in it.
    let png_root = project_root().join("fixtures/fashion-mnist-png");
    let by_class = test.indices_by_class();
    for (c, idx) in by_class.iter().enumerate() {
        let dir = png_root.join(folder_name(&names[c]));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (k, &i) in idx
            .iter()
            .skip(a.test_per_class)
            .take(a.png_per_class)
            .enumerate()
        {
            siam_data::folder::save_png(&test, i, dir.join(format!("{k:02}.png")))?;
        }
    }
    println!(
        "wrote {} PNGs per class to {}",
        a.png_per_class,
        png_root.display()
    );
    if !a.skip_model {
        ship_model(src, &project_root().join(&a.model_run))?;
    }
    Ok(())
}

/// Trains the `default` recipe on the full data in `run` through the `siam` CLI (seed 42, the
/// preset's) and copies its best model to `fixtures/models/fashion-mnist.safetensors`.
fn ship_model(src: &std::path::Path, run: &std::path::Path) -> Result<()> {
    // The run folder is this command's own (under target/ by default): a previous run there
    // goes, anything else is left alone.
    if run.exists() {
        if !run.join("config.toml").is_file() {
            anyhow::bail!(
                "{} exists and is not a siam run folder; pass another --model-run",
                run.display()
            );
        }
        std::fs::remove_dir_all(run).with_context(|| format!("removing {}", run.display()))?;
    }
    let status = crate::train::siam_train()
        .args(["--preset", "default"])
        .arg("--data")
        .arg(src)
        .arg("--out")
        .arg(run)
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        anyhow::bail!("training the shipped model failed ({status})");
    }
    let model = run.join("model.safetensors");
    let bytes = std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
    let shipped = project_root().join("fixtures/models/fashion-mnist.safetensors");
    siam_data::write_atomic(&shipped, &bytes)?;
    println!("wrote {} (from {})", shipped.display(), run.display());
    Ok(())
}
