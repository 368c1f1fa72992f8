//! `cargo xtask bench-unseen`: the unseen-class protocol end to end. For each seed (a draw
//! of held-out classes) it trains the recipe with its `data.class-split`, then puts three
//! embeddings on the same test pairs and the same leave-one-out retrieval over the test
//! classes' test images, which the run never sees: the trained model, the same network
//! untrained (the run's own initial weights, from the seed) and raw pixels. With
//! `--vs-pytorch`, also PyTorch + pytorch-metric-learning's CosFace on the same convnet after
//! one epoch on the draw's training classes (`xtask/bench/pml_recipe_split.py`), tested on the
//! same classes. Prints a table and writes `target/bench/unseen.json`.

use std::path::PathBuf;
use std::process::Command;

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
    /// Also train PyTorch + pytorch-metric-learning's CosFace on the same convnet for one
    /// epoch on each draw's training classes (no validation classes, no test classes) and
    /// test it on the draw's test classes with siam's protocol: needs `python3` (or $PYTHON)
    /// with torch, pytorch-metric-learning and scikit-learn, and Fashion-MNIST's IDX folder as
    /// `data.source`.
    #[arg(long)]
    vs_pytorch: bool,
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
    /// PyTorch + PML's one-epoch CosFace on the same training classes (`--vs-pytorch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pytorch: Option<Figures>,
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
    if a.vs_pytorch {
        // Before the first run, not after it: the reference needs these.
        let (python, ok) = crate::python_with("torch, pytorch_metric_learning, sklearn");
        if !ok {
            bail!(
                "--vs-pytorch needs `{python}` with torch, pytorch-metric-learning and scikit-learn (pip install torch pytorch-metric-learning scikit-learn)"
            );
        }
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
        let classes = summary.classes.context("the run reports no class split")?;
        let pytorch = if a.vs_pytorch {
            Some(pytorch_cosface(
                &cfg.data.source,
                &classes.train,
                &classes.test,
            )?)
        } else {
            None
        };
        draws.push(Draw {
            seed,
            test_classes: classes.test,
            wall_s: summary.wall_s,
            trained: t,
            untrained: u,
            pixels: p,
            pytorch,
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
        let pml = d.pytorch.as_ref().map_or(String::new(), |p| {
            format!(
                "  PyTorch + PML CosFace, 1 epoch: {:.3} / {:.3}",
                p.precision_at_1, p.roc_auc
            )
        });
        println!(
            "{:>5}  {:<34} {:>7.0}  {:.3} · {:.3} · {:.3}  {:.3} · {:.3} · {:.3}{pml}",
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
    let yes = |b: bool| if b { "yes" } else { "no" };
    let beats = draws
        .iter()
        .all(|d| at_least(&d.trained, &d.untrained, false));
    println!(
        "trained beats untrained on both figures on every draw: {}",
        yes(beats)
    );
    if a.vs_pytorch {
        let matches = draws.iter().all(|d| {
            d.pytorch
                .as_ref()
                .is_some_and(|p| at_least(&d.trained, p, true))
        });
        println!(
            "trained matches or beats PyTorch + PML on both figures on every draw: {}",
            yes(matches)
        );
    }
    let out = root.join(&a.out).join("unseen.json");
    std::fs::create_dir_all(out.parent().expect("a parent"))?;
    siam_data::write_atomic(&out, serde_json::to_string_pretty(&draws)?.as_bytes())
        .with_context(|| format!("{}: cannot write", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}

/// `a` above `b` on P@1 and ROC-AUC (or equal to it, with `or_equal`).
fn at_least(a: &Figures, b: &Figures, or_equal: bool) -> bool {
    let ge = |x: f64, y: f64| if or_equal { x >= y } else { x > y };
    ge(a.precision_at_1, b.precision_at_1) && ge(a.roc_auc, b.roc_auc)
}

/// PyTorch + pytorch-metric-learning's CosFace (`xtask/bench/pml_recipe_split.py`) on the same
/// convnet, one epoch on `train` (8 images a class per batch), tested on `test` with siam's
/// protocol: its last line of output.
fn pytorch_cosface(source: &str, train: &[String], test: &[String]) -> Result<Figures> {
    let idx = |names: &[String]| -> Result<String> {
        let n: Vec<u32> = names
            .iter()
            .map(|c| c.parse::<u32>().ok().filter(|&i| i < 10))
            .collect::<Option<_>>()
            .with_context(|| {
                format!(
                    "--vs-pytorch runs on Fashion-MNIST's IDX folder (classes 0-9); {source} has classes {}",
                    names.join(", ")
                )
            })?;
        Ok(n.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
    };
    let (train_idx, test_idx) = (idx(train)?, idx(test)?);
    let python = crate::python();
    let script = project_root().join("xtask/bench/pml_recipe_split.py");
    eprintln!("  PyTorch + PML CosFace, one epoch on classes {train_idx}…");
    let o = Command::new(&python)
        .arg(&script)
        .args(["cosface", "1", &(8 * train.len()).to_string()])
        .args([&test_idx, &train_idx])
        .env("FASHION_MNIST_DIR", source)
        .output()
        .with_context(|| format!("running {python} {}", script.display()))?;
    if !o.status.success() {
        bail!(
            "the PyTorch reference failed (it needs torch, pytorch-metric-learning and scikit-learn): {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let out = String::from_utf8_lossy(&o.stdout);
    let last = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the PyTorch reference printed no figures")?;
    let v: serde_json::Value = serde_json::from_str(last)?;
    match (v["p_at_1"].as_f64(), v["roc_auc"].as_f64()) {
        (Some(p), Some(r)) => Ok(Figures {
            precision_at_1: p,
            roc_auc: r,
        }),
        _ => bail!("the PyTorch reference printed {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: f64, r: f64) -> Figures {
        Figures {
            precision_at_1: p,
            roc_auc: r,
        }
    }

    #[test]
    fn beating_needs_both_figures_and_matching_allows_ties() {
        assert!(at_least(&f(0.91, 0.70), &f(0.90, 0.69), false));
        assert!(!at_least(&f(0.91, 0.68), &f(0.90, 0.69), false));
        assert!(!at_least(&f(0.89, 0.70), &f(0.90, 0.69), false));
        assert!(!at_least(&f(0.90, 0.70), &f(0.90, 0.69), false));
        assert!(at_least(&f(0.90, 0.69), &f(0.90, 0.69), true));
        assert!(!at_least(&f(0.90, 0.68), &f(0.90, 0.69), true));
    }

    #[test]
    fn the_pytorch_reference_refuses_classes_that_are_not_fashion_mnist_labels() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for train in [names(&["shoe", "bag"]), names(&["3", "12"])] {
            let e = pytorch_cosface("photos", &train, &names(&["1"]))
                .err()
                .expect("refused")
                .to_string();
            assert!(e.contains("photos") && e.contains("--vs-pytorch"), "{e}");
        }
    }
}
