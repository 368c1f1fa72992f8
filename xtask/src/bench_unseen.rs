//! `cargo xtask bench-unseen`: the unseen-class protocol end to end. For each seed (a draw
//! of held-out classes) it trains the recipe with its `data.class-split`, then puts three
//! embeddings on the same test pairs and the same leave-one-out retrieval over the test
//! classes' test images, which the run never sees: the trained model, the same network
//! untrained (the run's own initial weights, from the seed) and raw pixels. Prints a table and
//! writes `target/bench/unseen.json`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use siam_data::rng::{derive_seed, stream};
use siam_model::{Distance, SiameseModel};
use siam_train::config::{ConfigSource, resolve};
use siam_train::evaluate::{EvalSpec, eval_pairs, eval_transform, evaluate};
use siam_train::{Event, TrainOptions};

use crate::project_root;

/// Options of `cargo xtask bench-unseen`.
#[derive(clap::Args)]
pub struct Args {
    /// The recipe: a config file with a `data.class-split`.
    #[arg(long, default_value = "docs/recipes/default-split.toml")]
    config: PathBuf,
    /// The draws: one run per seed, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Overrides, as `siam train --set key=value`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Also keep a checkpoint per epoch and print every epoch's figures on the test classes
    /// after the run (a diagnostic of what selection could have chosen: never used for it).
    #[arg(long)]
    trace: bool,
    /// Where the runs go (`seed-N/` each) and `unseen.json`.
    #[arg(long, default_value = "target/bench/unseen")]
    out: PathBuf,
}

/// P@1 and ROC-AUC of one embedding on the test classes.
#[derive(serde::Serialize)]
struct Figures {
    precision_at_1: f64,
    roc_auc: f64,
}

#[derive(serde::Serialize)]
struct Draw {
    seed: u64,
    test_classes: Vec<String>,
    wall_s: f64,
    trained: Figures,
    untrained: Figures,
    pixels: Figures,
}

pub fn run(a: &Args) -> Result<()> {
    let root = project_root();
    let file = root.join(&a.config);
    let (base, _) = resolve(&ConfigSource {
        preset: None,
        file: Some(&file),
        sets: &a.sets,
    })?;
    if base.data.class_split.is_none() {
        bail!(
            "{}: no data.class-split: the protocol needs held-out classes",
            file.display()
        );
    }
    let mut draws = Vec::new();
    for &seed in &a.seeds {
        let mut cfg = base.clone();
        cfg.seed = seed;
        if a.trace {
            cfg.checkpoint.every_steps = cfg.steps_per_epoch;
            cfg.checkpoint.keep_last = cfg.epochs.max(1);
        }
        let dir = root.join(&a.out).join(format!("seed-{seed}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        }
        eprintln!(
            "draw {seed}: training {} into {}",
            a.config.display(),
            dir.display()
        );
        let summary = siam_train::train(&cfg, &dir, &TrainOptions::default(), &mut |e| {
            if let Event::Validation(v) = e {
                eprintln!(
                    "  epoch {}: validation classes P@1 {:.4}, ROC-AUC {:.4}",
                    v.epoch, v.report.retrieval.precision_at_1, v.report.verification.roc_auc
                );
            }
        })?;
        // The run's own test set and test pairs: the test classes' test images.
        let ds = siam_train::data::load(&cfg.data, cfg.seed)?;
        let pairs = eval_pairs(&ds.test, cfg.validation.test_pairs, cfg.seed ^ 0x7e57)?;
        let trained = SiameseModel::load(&summary.model, &Device::Cpu)?;
        let untrained = SiameseModel::new(
            trained.config(),
            derive_seed(cfg.seed, &[stream::INIT]),
            &Device::Cpu,
        )?;
        let transform = eval_transform(&trained.config().input);
        let spec = EvalSpec {
            loss: None,
            calibration: Default::default(),
            threshold: None,
        };
        let figures = |m: &SiameseModel| -> Result<Figures> {
            let r = evaluate(m, &ds.test, &pairs, &transform, &spec)?;
            Ok(Figures {
                precision_at_1: r.retrieval.precision_at_1,
                roc_auc: r.verification.roc_auc,
            })
        };
        let (t, u) = (figures(&trained)?, figures(&untrained)?);
        if a.trace {
            let m = SiameseModel::new(trained.config(), 0, &Device::Cpu)?;
            for ck in siam_train::trainer::checkpoints(&dir) {
                siam_train::trainer::load_checkpoint_weights(&ck, &m)?;
                let f = figures(&m)?;
                eprintln!(
                    "  {}: test classes P@1 {:.4}, ROC-AUC {:.4}",
                    ck.file_name().unwrap_or_default().to_string_lossy(),
                    f.precision_at_1,
                    f.roc_auc
                );
            }
            eprintln!(
                "  chosen: P@1 {:.4}, ROC-AUC {:.4}; untrained P@1 {:.4}, ROC-AUC {:.4}",
                t.precision_at_1, t.roc_auc, u.precision_at_1, u.roc_auc
            );
        }
        // Raw pixels in [0, 1], Euclidean.
        let idx: Vec<usize> = (0..ds.test.len()).collect();
        let px = ds.test.to_tensor(&idx, &Device::Cpu)?.flatten_from(1)?;
        let pick = |v: &[usize]| -> Result<Tensor> {
            let i: Vec<u32> = v.iter().map(|&i| i as u32).collect();
            Ok(px.index_select(&Tensor::new(i.as_slice(), &Device::Cpu)?, 0)?)
        };
        let d: Vec<f32> = Distance::Euclidean
            .rowwise(&pick(&pairs.a)?, &pick(&pairs.b)?)?
            .to_vec1()?;
        let pv = siam_eval::verification(&d, &pairs.same, None)?;
        let pr = siam_eval::retrieval(&px, &ds.test.labels(), None, Distance::Euclidean, 256)?;
        let p = Figures {
            precision_at_1: pr.precision_at_1,
            roc_auc: pv.roc_auc,
        };
        draws.push(Draw {
            seed,
            test_classes: summary.classes.map(|c| c.test).unwrap_or_default(),
            wall_s: summary.wall_s,
            trained: t,
            untrained: u,
            pixels: p,
        });
    }
    println!(
        "unseen classes: {} ({} test pairs per draw), trained · untrained · pixels",
        a.config.display(),
        base.validation.test_pairs
    );
    println!(
        "{:>5}  {:<34} {:>7}  {:^23}  {:^23}",
        "seed", "test classes", "wall s", "P@1", "ROC-AUC"
    );
    for d in &draws {
        println!(
            "{:>5}  {:<34} {:>7.0}  {:.3} · {:.3} · {:.3}  {:.3} · {:.3} · {:.3}",
            d.seed,
            d.test_classes.join(", "),
            d.wall_s,
            d.trained.precision_at_1,
            d.untrained.precision_at_1,
            d.pixels.precision_at_1,
            d.trained.roc_auc,
            d.untrained.roc_auc,
            d.pixels.roc_auc
        );
    }
    let beats = draws.iter().all(|d| {
        d.trained.precision_at_1 > d.untrained.precision_at_1
            && d.trained.roc_auc > d.untrained.roc_auc
    });
    println!(
        "trained beats untrained on both figures on every draw: {}",
        if beats { "yes" } else { "no" }
    );
    let out = root.join(&a.out).join("unseen.json");
    std::fs::create_dir_all(out.parent().expect("a parent"))?;
    siam_data::write_atomic(&out, serde_json::to_string_pretty(&draws)?.as_bytes())
        .with_context(|| format!("{}: cannot write", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}
