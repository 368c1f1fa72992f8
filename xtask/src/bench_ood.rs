//! `cargo xtask bench-ood`: how well a model's input check (`siam_model::ood`) tells its
//! training distribution from foreign inputs. False alarms on the test split of the data it
//! was trained on; detection on uniform noise, blank (constant) images, the test images
//! inverted, and folders of images of another kind (`--folder NAME=DIR`, for instance those
//! `xtask/bench/ood_sets.py` writes: handwritten digits and glyphs of the embedded font).
//! Prints a table and writes `target/bench/ood.json`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use siam_data::ImageSet;
use siam_data::image_set::ImageShape;
use siam_model::SiameseModel;
use siam_train::evaluate::{eval_transform, input_check};

use crate::project_root;

/// Options of `cargo xtask bench-ood`.
#[derive(clap::Args)]
pub struct Args {
    /// The model (with an input check: trained by this siam, or `siam calibrate`d).
    #[arg(long, default_value = "fixtures/models/fashion-mnist.safetensors")]
    model: PathBuf,
    /// The data it was trained on: its test split gives the false alarms.
    #[arg(long, default_value = "fashion-mnist")]
    data: String,
    /// Images in each synthetic foreign set.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// More foreign sets: NAME=DIR, a folder of images (searched recursively).
    #[arg(long, value_name = "NAME=DIR")]
    folder: Vec<String>,
}

/// A one-class set of gray or RGB images from raw pixels.
fn set(pixels: Vec<u8>, shape: ImageShape) -> Result<ImageSet> {
    let n = pixels.len() / shape.numel();
    Ok(ImageSet::new(
        pixels,
        vec![0; n],
        shape,
        vec!["foreign".into()],
    )?)
}

pub fn run(a: &Args) -> Result<()> {
    let root = project_root();
    let model_path = root.join(&a.model);
    let model = SiameseModel::load(&model_path, &candle_core::Device::Cpu)?;
    let Some(profile) = model.meta().input_profile.clone() else {
        bail!(
            "{}: no input check in this model file; fit one with `siam calibrate`",
            model_path.display()
        );
    };
    let input = model.config().input.clone();
    let transform = eval_transform(&input);
    let dcfg = siam_train::data::data_config_for(&a.data, &input);
    let (_, _, test) = siam_train::data::load_source(&dcfg)?;
    let test = test.with_context(|| format!("{}: no test split", a.data))?;
    let shape = test.shape();
    let numel = shape.numel();
    let mut sets: Vec<(String, ImageSet, bool)> =
        vec![("test split (in distribution)".into(), test.clone(), false)];

    // Uniform noise from a seeded LCG.
    let mut s: u64 = 0x5eed;
    let noise: Vec<u8> = (0..a.n * numel)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    sets.push(("uniform noise".into(), set(noise, shape)?, true));
    // Constant images from black to white.
    let blank: Vec<u8> = (0..a.n)
        .flat_map(|i| std::iter::repeat_n((i * 255 / a.n.max(2).saturating_sub(1)) as u8, numel))
        .collect();
    sets.push(("blank (constant 0–255)".into(), set(blank, shape)?, true));
    // The first n test images, inverted.
    let inverted: Vec<u8> = (0..a.n.min(test.len()))
        .flat_map(|i| test.image(i).iter().map(|p| 255 - p).collect::<Vec<_>>())
        .collect();
    sets.push(("test images inverted".into(), set(inverted, shape)?, true));
    for f in &a.folder {
        let (name, dir) = f
            .split_once('=')
            .with_context(|| format!("--folder {f}: expected NAME=DIR"))?;
        let files = siam_data::folder::list_images(&[PathBuf::from(dir)])?;
        let color = if shape.channels == 3 {
            siam_data::ColorMode::Rgb
        } else {
            siam_data::ColorMode::Gray
        };
        let mut pixels = Vec::with_capacity(files.len() * numel);
        for p in &files {
            let (px, _, _) =
                siam_data::folder::decode_file(p, color, Some((shape.height, shape.width)))?;
            pixels.extend(px);
        }
        sets.push((name.to_string(), set(pixels, shape)?, true));
    }

    println!(
        "model {} — input check fitted on {} images: mean intensity {:.3}–{:.3}, spread {:.3}–{:.3}, texture {:.3}–{:.3}, norm {:.3}–{:.3}, nearest ≤ {:.3}; {:.1}% of its held-out images flagged",
        a.model.display(),
        profile.images,
        profile.intensity_mean[0],
        profile.intensity_mean[1],
        profile.intensity_spread[0],
        profile.intensity_spread[1],
        profile.texture[0],
        profile.texture[1],
        profile.embedding_norm[0],
        profile.embedding_norm[1],
        profile.nearest_limit,
        100.0 * profile.false_alarm_rate
    );
    println!(
        "{:<30} {:>6} {:>8}  {:>7} {:>7} {:>7} {:>7} {:>7}",
        "set", "images", "flagged", "mean", "spread", "texture", "norm", "far"
    );
    let mut rows = Vec::new();
    for (name, s, foreign) in &sets {
        let c = input_check(&model, s, &transform)?.expect("the model has a profile");
        let pct = |k: &str| 100.0 * *c.by_kind.get(k).unwrap_or(&0) as f64 / c.images as f64;
        println!(
            "{:<30} {:>6} {:>7.1}%  {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}% {:>6.1}%",
            name,
            c.images,
            100.0 * c.rate,
            pct("intensity-mean"),
            pct("intensity-spread"),
            pct("texture"),
            pct("embedding-norm"),
            pct("far-from-training")
        );
        rows.push(serde_json::json!({"set": name, "foreign": foreign, "check": c}));
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("ood.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(
            &serde_json::json!({"model": a.model, "profile": profile, "sets": rows}),
        )?,
    )?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
