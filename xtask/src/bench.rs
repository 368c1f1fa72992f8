//! `cargo xtask bench`: training pairs/s, inference images/s, loader images/s and `compare`
//! latency of the seed CNN (or, with `--encoder convnet`, the `convnet` preset's encoder; `--pooling
//! global-average` for its other head) at 28×28, or of torchvision's ResNet-18 layout with siam's
//! head on RGB images (`--encoder resnet18 --size 64|112|224`: training and inference only);
//! writes `target/bench/latest.json` and prints a table.
//! With `--device cuda` (or metal) it re-runs itself built with that feature.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use siam_data::{AugmentConfig, Loader, LoaderConfig, Normalize, SamplerConfig, Transform};
use siam_model::{Distance, EncoderConfig, InputSpec, ModelConfig, SiameseModel, loss};
use siam_train::config::OptimizerConfig;
use siam_train::optim::Optimizer;

use crate::project_root;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Pairs per training step (default 128; 16 for resnet18).
    #[arg(long)]
    pairs: Option<usize>,
    /// Images per inference batch (default 1024; 64 for resnet18).
    #[arg(long)]
    infer_batch: Option<usize>,
    /// The side of resnet18's RGB input (default 64); the other encoders take 28×28.
    #[arg(long)]
    size: Option<usize>,
    /// Timed repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print the JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also run the identical network in PyTorch (xtask/bench/pytorch_reference.py),
    /// alternating windows, and print the ratios siam / PyTorch.
    #[arg(long)]
    vs_pytorch: bool,
    /// Alternating windows for --vs-pytorch (medians are reported).
    #[arg(long, default_value_t = 5)]
    windows: usize,
    /// The encoder: the seed CNN or the deeper convnet (channels 32-64-128, BatchNorm, hidden
    /// 256).
    #[arg(long, value_enum, default_value = "seed-cnn")]
    encoder: Encoder,
    /// The convnet's pooling: as the `convnet` preset configures it (flatten, the default) or
    /// global average.
    #[arg(long, value_enum, default_value = "flatten")]
    pooling: PoolingArg,
    /// Measure only this part (for profiling, e.g. under `perf record`); the others are
    /// reported as null.
    #[arg(long, value_enum)]
    only: Option<Part>,
}

/// The encoders `cargo xtask bench` measures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encoder {
    /// The seed CNN (the default).
    SeedCnn,
    /// The `convnet` preset's encoder.
    Convnet,
    /// torchvision's ResNet-18 layout (widths 64-512, ImageNet stem) with siam's linear head
    /// to 128, on RGB input of `--size`.
    Resnet18,
}

impl Encoder {
    fn name(self) -> &'static str {
        match self {
            Self::SeedCnn => "seed-cnn",
            Self::Convnet => "convnet",
            Self::Resnet18 => "resnet18",
        }
    }
}

impl Args {
    fn pairs(&self) -> usize {
        self.pairs.unwrap_or(if self.encoder == Encoder::Resnet18 {
            16
        } else {
            128
        })
    }
    fn infer_batch(&self) -> usize {
        self.infer_batch
            .unwrap_or(if self.encoder == Encoder::Resnet18 {
                64
            } else {
                1024
            })
    }
    /// Channels and side of the input.
    fn input(&self) -> (usize, usize) {
        match self.encoder {
            Encoder::Resnet18 => (3, self.size.unwrap_or(64)),
            _ => (1, 28),
        }
    }
}

/// How the benchmarked convnet's last feature map reaches its head.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PoolingArg {
    /// Every position of the last map (the `convnet` preset).
    Flatten,
    /// The mean over positions.
    GlobalAverage,
}

impl PoolingArg {
    fn name(self) -> &'static str {
        match self {
            Self::Flatten => "flatten",
            Self::GlobalAverage => "global-average",
        }
    }
}

/// The parts of `cargo xtask bench`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Training steps.
    Training,
    /// Inference batches.
    Inference,
    /// The data loader.
    Loader,
    /// `compare` on two PNG files.
    Compare,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<F: FnMut() -> Result<()>>(reps: usize, mut f: F) -> Result<Vec<f64>> {
    f()?; // warm-up
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

fn sync(t: &Tensor) -> Result<()> {
    t.device().synchronize()?;
    Ok(())
}

pub fn run(a: &Args) -> Result<()> {
    let wants = a.device.split(':').next().unwrap_or("cpu");
    let built = match wants {
        "cuda" => cfg!(feature = "cuda"),
        "metal" => cfg!(feature = "metal"),
        "cpu" => true,
        other => bail!("--device {other}: expected cpu, cuda or metal"),
    };
    if !built {
        // Rebuild xtask with the matching candle feature and run the same command.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(project_root())
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "xtask",
                "--features",
                wants,
                "--",
            ])
            .args(&args)
            .status()
            .context("cannot run cargo")?;
        if !status.success() {
            bail!("the {wants} benchmark failed ({status})");
        }
        return Ok(());
    }
    let device = siam_model::parse_device(&a.device)?;
    if a.size.is_some() && a.encoder != Encoder::Resnet18 {
        bail!(
            "--size sets resnet18's input; the {} takes 28x28",
            a.encoder.name()
        );
    }
    let (channels, side) = a.input();
    let cfg = ModelConfig {
        encoder: match a.encoder {
            Encoder::SeedCnn => EncoderConfig::SeedCnn { embedding_dim: 128 },
            Encoder::Convnet => EncoderConfig::Convnet {
                channels: vec![32, 64, 128],
                hidden: 256,
                dropout: 0.0,
                embedding_dim: 128,
                pooling: match a.pooling {
                    PoolingArg::Flatten => siam_model::Pooling::Flatten,
                    PoolingArg::GlobalAverage => siam_model::Pooling::GlobalAverage,
                },
            },
            Encoder::Resnet18 => EncoderConfig::Resnet18(siam_model::ResnetConfig::default()),
        },
        input: if a.encoder == Encoder::Resnet18 {
            InputSpec {
                channels: 3,
                height: side,
                width: side,
                mean: vec![0.485, 0.456, 0.406],
                std: vec![0.229, 0.224, 0.225],
            }
        } else {
            InputSpec::fashion_mnist()
        },
        normalize: false,
        distance: Distance::Euclidean,
        pair_head: false,
        test_time_flip: false,
    };
    let model = SiameseModel::new(&cfg, 1, &device)?;
    let n = a.pairs();
    let numel = channels * side * side;
    let imgs = |k: usize, seed: u64| -> Result<Tensor> {
        let v: Vec<f32> = (0..k * numel)
            .map(|i| (((i as u64 * 2654435761 + seed) % 997) as f32) / 997.0)
            .collect();
        Ok(Tensor::from_vec(v, (k, channels, side, side), &device)?)
    };
    let (xa, xb) = (imgs(n, 1)?, imgs(n, 2)?);
    let same = Tensor::from_vec(
        (0..n).map(|i| (i % 2) as f32).collect::<Vec<_>>(),
        n,
        &device,
    )?;
    let vars: Vec<(String, candle_core::Var)> = {
        let d = model.varmap().data().lock().expect("var map");
        d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut opt = Optimizer::new(
        OptimizerConfig::Adamw {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        vars,
    );
    let steps = 5;
    let xi = imgs(a.infer_batch(), 3)?;
    // The loader and compare parts read the 28×28 gray fixtures: not for resnet18.
    let resnet = a.encoder == Encoder::Resnet18;
    let wants = |p: Part| {
        a.only.is_none_or(|o| o == p) && !(resnet && matches!(p, Part::Loader | Part::Compare))
    };
    let mut measure_siam = || -> Result<(f64, f64)> {
        let mut train_pairs_per_s = f64::NAN;
        if wants(Part::Training) {
            let train = time(a.reps, || {
                // On a pool worker, as the trainer runs its steps (`kernels::on_pool`).
                siam_model::kernels::on_pool(|| -> Result<()> {
                    for _ in 0..steps {
                        let e = model.forward_t(&Tensor::cat(&[&xa, &xb], 0)?, true)?;
                        let d = model.distance(&e.narrow(0, 0, n)?, &e.narrow(0, n, n)?)?;
                        let l = loss::contrastive(&d, &same, 2.0)?;
                        let g = l.backward()?;
                        opt.step(&g, 1e-3)?;
                    }
                    Ok(())
                })?;
                sync(&xa)
            })?;
            train_pairs_per_s = (steps * n) as f64 / median(train);
        }
        let mut infer_images_per_s = f64::NAN;
        if wants(Part::Inference) {
            let infer = time(a.reps, || sync(&model.embed(&xi)?))?;
            infer_images_per_s = a.infer_batch() as f64 / median(infer);
        }
        Ok((train_pairs_per_s, infer_images_per_s))
    };
    if a.vs_pytorch {
        return versus_pytorch(a, &mut measure_siam);
    }
    let (train_pairs_per_s, infer_images_per_s) = measure_siam()?;

    let set = siam_train::data::fixtures()?.0;
    let loader_batches = 20u64;
    let mut loader_images_per_s = f64::NAN;
    if wants(Part::Loader) {
        let loader = time(a.reps, || {
            let sampler = SamplerConfig::default().build(&set, n, 3)?;
            let t = Transform {
                augment: AugmentConfig {
                    hflip: true,
                    rotate_degrees: 10.0,
                    crop_padding: 2,
                    ..AugmentConfig::none()
                },
                normalize: Some(Normalize {
                    mean: vec![0.286],
                    std: vec![0.353],
                }),
                seed: 1,
                second_view: None,
                second_view_fraction: 1.0,
            };
            let cfg = LoaderConfig {
                batches_per_epoch: loader_batches,
                epochs: Some(1),
                threads: None,
                ..Default::default()
            };
            for b in Loader::spawn(set.clone(), sampler, t, cfg)? {
                b?;
            }
            Ok(())
        })?;
        loader_images_per_s = (loader_batches as usize * 2 * n) as f64 / median(loader);
    }

    let mut compare_ms = f64::NAN;
    if wants(Part::Compare) {
        let png = project_root().join("fixtures/fashion-mnist-png");
        let (pa, pb) = (png.join("bag/00.png"), png.join("trouser/00.png"));
        let compare = time(a.reps * 4, || {
            model.compare_paths(&pa, &pb)?;
            Ok(())
        })?;
        compare_ms = 1000.0 * median(compare);
    }

    let out = serde_json::json!({
        "device": a.device,
        "device_detail": format!("{device:?}"),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "network": network(a),
        "train_batch_pairs": n,
        "infer_batch_images": a.infer_batch(),
        "loader_batch_pairs": n,
        "train_pairs_per_s": train_pairs_per_s,
        "infer_images_per_s": infer_images_per_s,
        "loader_images_per_s": loader_images_per_s,
        "compare_ms": compare_ms,
        "reps": a.reps,
    });
    let dir = project_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("latest.json");
    siam_model::model::write_atomic(&path, serde_json::to_string_pretty(&out)?.as_bytes())?;
    if a.json {
        println!("{out}");
    } else {
        println!(
            "siam benchmark on {} ({} threads), medians of {} runs",
            a.device, out["threads"], a.reps
        );
        let line = |v: f64, text: String| {
            if v.is_finite() {
                println!("{text}");
            }
        };
        line(
            train_pairs_per_s,
            format!(
                "  training       {train_pairs_per_s:>10.0} pairs/s    ({}, {n} pairs per step, contrastive, AdamW)",
                a.encoder.name()
            ),
        );
        line(
            infer_images_per_s,
            format!(
                "  inference      {infer_images_per_s:>10.0} images/s   (batch {})",
                a.infer_batch()
            ),
        );
        line(
            loader_images_per_s,
            format!(
                "  loader         {loader_images_per_s:>10.0} images/s   (pairs, flip + rotation + crop)"
            ),
        );
        line(
            compare_ms,
            format!(
                "  compare        {compare_ms:>10.2} ms         (two PNG files, decode to verdict)"
            ),
        );
        println!("written to {}", show(&path));
    }
    Ok(())
}

/// What is measured, in words: the encoder (with its pooling) and its input.
fn network(a: &Args) -> String {
    match a.encoder {
        Encoder::Resnet18 => {
            let (_, s) = a.input();
            format!("resnet18 (torchvision layout, linear head) RGB {s}x{s}, embedding 128")
        }
        Encoder::SeedCnn => "seed-cnn 28x28, embedding 128".into(),
        Encoder::Convnet => format!(
            "convnet ({} pooling) 28x28, embedding 128",
            a.pooling.name()
        ),
    }
}

fn show(p: &Path) -> String {
    p.strip_prefix(project_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Alternates siam and PyTorch windows on the same network and batch; prints medians and the
/// ratios siam / PyTorch. Skipped, with the reason, where torch is not installed.
fn versus_pytorch(a: &Args, siam: &mut dyn FnMut() -> Result<(f64, f64)>) -> Result<()> {
    if a.device != "cpu" {
        bail!("--vs-pytorch compares CPU speed; use --device cpu");
    }
    if a.only.is_some() {
        bail!("--vs-pytorch compares training and inference; drop --only");
    }
    let (python, has_torch) = crate::python_with("torch");
    if !has_torch {
        println!(
            "skipped: the PyTorch reference needs `{python}` with torch (pip install torch); siam alone: `cargo xtask bench`"
        );
        return Ok(());
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let script = project_root().join("xtask/bench/pytorch_reference.py");
    let (mut st, mut si, mut pt, mut pi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for w in 0..a.windows.max(1) {
        let (t, i) = siam()?;
        let o = Command::new(&python)
            .arg(&script)
            .args(["--pairs", &a.pairs().to_string()])
            .args(["--infer-batch", &a.infer_batch().to_string()])
            .args(["--size", &a.input().1.to_string()])
            .args(["--reps", &a.reps.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--encoder", a.encoder.name()])
            .args(["--pooling", a.pooling.name()])
            .output()
            .context("running the PyTorch reference")?;
        if !o.status.success() {
            bail!(
                "the PyTorch reference failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        let (tt, ti) = (
            v["train_pairs_per_s"].as_f64().unwrap_or(f64::NAN),
            v["infer_images_per_s"].as_f64().unwrap_or(f64::NAN),
        );
        eprintln!(
            "window {}: siam {t:.0} pairs/s, {i:.0} images/s; PyTorch {tt:.0} pairs/s, {ti:.0} images/s",
            w + 1
        );
        st.push(t);
        si.push(i);
        pt.push(tt);
        pi.push(ti);
    }
    let (st, si, pt, pi) = (median(st), median(si), median(pt), median(pi));
    let out = serde_json::json!({
        "threads": threads,
        "network": network(a),
        "windows": a.windows,
        "siam_train_pairs_per_s": st,
        "pytorch_train_pairs_per_s": pt,
        "train_ratio": st / pt,
        "siam_infer_images_per_s": si,
        "pytorch_infer_images_per_s": pi,
        "infer_ratio": si / pi,
    });
    let dir = project_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    siam_model::model::write_atomic(
        &dir.join("vs-pytorch.json"),
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )?;
    if a.json {
        println!("{out}");
    } else {
        println!(
            "siam vs PyTorch, {}, {threads} threads each, medians of {} alternating windows",
            network(a),
            a.windows
        );
        println!("                   siam      PyTorch   ratio siam/PyTorch");
        println!(
            "  training   {st:>10.0} {pt:>10.0}   {:.2}   pairs/s",
            st / pt
        );
        println!(
            "  inference  {si:>10.0} {pi:>10.0}   {:.2}   images/s",
            si / pi
        );
        println!("written to target/bench/vs-pytorch.json");
    }
    Ok(())
}
