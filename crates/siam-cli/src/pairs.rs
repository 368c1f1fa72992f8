//! The pair-list commands: `siam eval --pairs LIST`, `siam calibrate --pairs LIST|N` (and
//! `--data`), `siam compare --pairs LIST`. Parsing and rendering only: the work is in
//! `siam_train::pairs` and `siam_train::calibrate`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use siam_data::pair_list::PairList;
use siam_model::SiameseModel;

use crate::cli::{CalibrateArgs, CompareArgs, EvalArgs, PairsFormat};
use crate::commands::load;

/// Reads the list given to --pairs, under --images when given.
fn read_list(list: &Path, images: Option<&Path>) -> Result<PairList> {
    Ok(match images {
        Some(root) => siam_data::pair_list::read_pair_list_with_root(list, root)?,
        None => siam_data::pair_list::read_pair_list(list)?,
    })
}

fn parse_calibration(s: &str) -> Result<siam_eval::Calibration> {
    use siam_eval::Calibration;
    Ok(match s {
        "balanced-accuracy" => Calibration::BalancedAccuracy,
        "eer" => Calibration::Eer,
        other => match other.strip_prefix("far=") {
            Some(r) => {
                let far: f64 = r
                    .parse()
                    .with_context(|| format!("--method {other}: '{r}' is not a number"))?;
                if !(0.0..=1.0).contains(&far) {
                    bail!("--method {other}: the false-accept rate must be in [0, 1]");
                }
                Calibration::TargetFar { far }
            }
            None => bail!(
                "--method {other}: expected balanced-accuracy, eer, or far=RATE (for example far=0.001)"
            ),
        },
    })
}

/// `siam eval --pairs LIST [--folds K]`: the listed pairs, and the k-fold protocol.
pub(crate) fn eval_list(
    a: &EvalArgs,
    model: &SiameseModel,
    path: &std::path::Path,
    source: &str,
) -> Result<()> {
    let list_path = PathBuf::from(a.pairs.as_deref().unwrap_or_default());
    if a.data.is_some() {
        bail!("--data and a pair list exclude each other: the list names its images");
    }
    let list = match &a.images {
        Some(root) => siam_data::pair_list::read_pair_list_with_root(&list_path, root)?,
        None => siam_data::pair_list::read_pair_list(&list_path)?,
    };
    let r = siam_train::pairs::eval_pair_list(model, &list, a.folds, Default::default())?;
    if a.json {
        let mut v = serde_json::to_value(&r)?;
        v["model"] = path.display().to_string().into();
        println!("{v}");
        return Ok(());
    }
    let v = &r.verification;
    println!("model: {} ({source})", path.display());
    println!(
        "pairs: {} from {} ({} images, {})",
        r.pairs,
        list_path.display(),
        r.images,
        list.format
    );
    println!(
        "  ROC-AUC {:.4}  EER {:.4}  TAR@FAR1e-2 {:.4}  accuracy {:.4}  balanced accuracy {:.4} at threshold {:.4} ({})",
        v.roc_auc,
        v.eer,
        v.tar_at_far_1e2,
        v.accuracy,
        v.balanced_accuracy,
        v.threshold,
        r.threshold_source
    );
    if let Some(k) = &r.kfold {
        println!(
            "  {}-fold accuracy {:.4} ± {:.4} (threshold calibrated on the other folds)",
            k.folds.len(),
            k.accuracy_mean,
            k.accuracy_std
        );
        for f in &k.folds {
            println!(
                "    fold {:>2}: {:>5} pairs  threshold {:.4}  accuracy {:.4}",
                f.fold + 1,
                f.pairs,
                f.threshold,
                f.accuracy
            );
        }
    }
    Ok(())
}

/// `siam calibrate`: a new threshold (and quantiles, input check) from --data's validation
/// split or image folder, or from a pair list given to --pairs.
pub(crate) fn calibrate(a: CalibrateArgs) -> Result<()> {
    let method = parse_calibration(&a.method)?;
    let (mut model, path, _) = load(&a.model)?;
    let same_file = std::fs::canonicalize(&a.out)
        .ok()
        .is_some_and(|o| std::fs::canonicalize(&path).ok() == Some(o));
    if same_file {
        bail!(
            "{}: --out is the input model; write the calibrated model to a new file",
            a.out.display()
        );
    }
    if a.out.exists() {
        bail!(
            "{}: already exists; choose another --out or remove it first",
            a.out.display()
        );
    }
    let count = match a.pairs.as_deref().map(str::parse::<usize>) {
        None => Some(10000),
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => None,
    };
    let c = match (count, &a.data) {
        (Some(n), Some(data)) => {
            if a.images.is_some() {
                bail!("--images needs a pair list: --pairs LIST");
            }
            siam_train::calibrate::on_data(&model, data, n, a.seed, method)?
        }
        (Some(_), None) => bail!("--data is needed without a pair list (--pairs LIST)"),
        (None, Some(_)) => {
            bail!("--data and a pair list exclude each other: the list names its images")
        }
        (None, None) => {
            let list = read_list(
                Path::new(a.pairs.as_deref().unwrap_or_default()),
                a.images.as_deref(),
            )?;
            siam_train::calibrate::on_pair_list(&model, &list, a.seed, method)?
        }
    };
    c.apply(&mut model);
    model.save(&a.out)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": a.out.display().to_string(),
                "threshold": c.threshold,
                "previous_threshold": c.previous,
                "method": a.method,
                "calibration_pairs": c.pairs,
                "validation_pairs": c.pairs,
                "source": c.description,
                "balanced_accuracy": c.balanced_accuracy,
                "roc_auc": c.roc_auc,
            })
        );
    } else {
        println!(
            "threshold {:.4} (was {}) by {} on {} pairs from {}: balanced accuracy {:.4}",
            c.threshold,
            c.previous.map_or("none".into(), |t| format!("{t:.4}")),
            a.method,
            c.pairs,
            c.description,
            c.balanced_accuracy
        );
        println!("wrote {}", a.out.display());
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `siam compare --pairs LIST`: a verdict per pair on stdout as CSV or JSON Lines, streamed;
/// a progress bar on stderr when it is a terminal.
pub(crate) fn compare_list(a: &CompareArgs, model: &SiameseModel, path: &Path) -> Result<()> {
    let list_path: PathBuf = a.pairs.clone().context("two images or --pairs LIST")?;
    let list = siam_data::pair_list::read_pairs_to_compare(&list_path, a.images.as_deref())?;
    let format = match (a.format, a.json) {
        (Some(PairsFormat::Csv), true) => bail!("--format csv and --json exclude each other"),
        (Some(f), _) => f,
        (None, true) => PairsFormat::Jsonl,
        (None, false) => PairsFormat::Csv,
    };
    if model.meta().threshold.is_none() {
        eprintln!(
            "warning: {}: the model has no calibrated threshold: distances only, no verdicts (siam calibrate)",
            path.display()
        );
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(list.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} pairs  [{elapsed_precise} < {eta_precise}]",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if format == PairsFormat::Csv {
        writeln!(out, "a,b,distance,threshold,same")?;
    }
    let mut write = |vs: &[siam_train::pairs::PairVerdict], done: usize| -> bool {
        let mut text = String::new();
        for v in vs {
            let p = &list.pairs[v.index];
            let (pa, pb) = (p.a.display().to_string(), p.b.display().to_string());
            match format {
                PairsFormat::Csv => {
                    text += &format!(
                        "{},{},{},{},{}\n",
                        csv_field(&pa),
                        csv_field(&pb),
                        v.distance,
                        v.threshold.map_or(String::new(), |t| t.to_string()),
                        v.same.map_or(String::new(), |s| u8::from(s).to_string()),
                    );
                }
                PairsFormat::Jsonl => {
                    text += &serde_json::json!({
                        "a": pa, "b": pb, "distance": v.distance,
                        "threshold": v.threshold, "same": v.same,
                    })
                    .to_string();
                    text.push('\n');
                }
            }
        }
        // A closed pipe (`| head`) ends the run quietly.
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return false;
        }
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
        true
    };
    siam_train::pairs::compare_list(model, &list, 256, &mut write)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Ok(())
}
