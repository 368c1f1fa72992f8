//! The pair-list commands end to end on the committed list
//! `fixtures/fashion-mnist-png-pairs.csv` (120 pairs of the 40 fixture PNGs in 4 folds):
//! the k-fold protocol against scikit-learn, `compare --pairs` against single compares,
//! `calibrate --pairs`, and training from the list alone.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn siam() -> Command {
    let mut c = Command::cargo_bin("siam").unwrap();
    c.env_remove("SIAM_MODEL");
    c
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn list() -> PathBuf {
    root().join("fashion-mnist-png-pairs.csv")
}

fn shipped() -> PathBuf {
    root().join("models/fashion-mnist.safetensors")
}

fn out(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json(c: &mut Command) -> serde_json::Value {
    serde_json::from_str(&out(c)).unwrap()
}

fn fails(c: &mut Command, needle: &str) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        o.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    err
}

/// The k-fold protocol on the committed list with the shipped model, against scikit-learn
/// on the same distances (the ones `siam compare --pairs` prints). Reference, after
/// `siam compare --pairs fixtures/fashion-mnist-png-pairs.csv -m fixtures/models/fashion-mnist.safetensors > d.csv`:
///
/// ```python
/// import csv, numpy as np
/// from sklearn.metrics import roc_curve, accuracy_score, roc_auc_score
/// rows = list(csv.DictReader(open("fixtures/fashion-mnist-png-pairs.csv")))
/// d = np.array([float(r["distance"]) for r in csv.DictReader(open("d.csv"))], dtype=np.float32)
/// same = np.array([int(r["same"]) for r in rows]); folds = np.array([int(r["fold"]) - 1 for r in rows])
/// accs, ths = [], []
/// for f in range(4):
///     tr, te = folds != f, folds == f
///     fpr, tpr, thr = roc_curve(same[tr], -d[tr].astype(np.float64), drop_intermediate=False)
///     b = 0.5 * (tpr + 1 - fpr); k = int(np.argmax(b[1:])) + 1; dk = -thr[k]
///     t = np.float32((dk + -thr[k + 1]) / 2 if k + 1 < len(thr) else dk)  # midpoint, as siam
///     ths.append(float(t)); accs.append(accuracy_score(same[te], (d[te] <= t).astype(int)))
/// print(ths, accs, np.mean(accs), np.std(accs), roc_auc_score(same, -d))
/// # [1.184772253036499, 1.0316373109817505, 1.0751614570617676, 1.0751614570617676]
/// # [0.9333333333333333, 0.9666666666666667, 1.0, 0.9666666666666667] 0.9666666666666667 0.02357022603955158
/// # 0.9997222222222222
/// ```
///
/// Retraining the shipped model changes these figures: rerun the snippet and update them.
#[test]
fn k_fold_on_the_committed_list_matches_scikit_learn() {
    let v = json(
        siam()
            .args(["eval", "--json", "--pairs"])
            .arg(list())
            .arg("-m")
            .arg(shipped()),
    );
    assert_eq!(
        (v["pairs"].as_u64(), v["images"].as_u64()),
        (Some(120), Some(40)),
        "{v}"
    );
    assert!((v["verification"]["roc_auc"].as_f64().unwrap() - 0.999_722_222).abs() < 1e-6);
    let k = &v["kfold"];
    let thresholds = [1.184_772_25, 1.031_637_31, 1.075_161_46, 1.075_161_46];
    let accuracies = [0.933_333_333, 0.966_666_667, 1.0, 0.966_666_667];
    let folds = k["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 4);
    for (i, f) in folds.iter().enumerate() {
        assert_eq!(f["pairs"], 30);
        assert!(
            (f["threshold"].as_f64().unwrap() - thresholds[i]).abs() < 1e-4,
            "{f}"
        );
        assert!(
            (f["accuracy"].as_f64().unwrap() - accuracies[i]).abs() < 1e-6,
            "{f}"
        );
    }
    assert!((k["accuracy_mean"].as_f64().unwrap() - 0.966_666_667).abs() < 1e-6);
    assert!((k["accuracy_std"].as_f64().unwrap() - 0.023_570_226).abs() < 1e-6);
}

#[test]
fn compare_pairs_streams_the_verdicts_single_compares_give() {
    let csv = out(siam()
        .args(["compare", "--pairs"])
        .arg(list())
        .arg("-m")
        .arg(shipped()));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "a,b,distance,threshold,same");
    assert_eq!(lines.len(), 121);
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
    for &i in &[0usize, 37, 119] {
        let r = &rows[i];
        let v = json(
            siam()
                .args(["compare", "--json", r[0], r[1], "-m"])
                .arg(shipped()),
        );
        let d: f64 = r[2].parse().unwrap();
        assert!(
            (d - v["distance"].as_f64().unwrap()).abs() < 1e-5,
            "{r:?} {v}"
        );
        assert_eq!(r[4] == "1", v["same"].as_bool().unwrap(), "{r:?} {v}");
        assert!((r[3].parse::<f64>().unwrap() - v["threshold"].as_f64().unwrap()).abs() < 1e-6);
    }
    // JSON Lines: the same verdicts.
    let jl = out(siam()
        .args(["compare", "--json", "--pairs"])
        .arg(list())
        .arg("-m")
        .arg(shipped()));
    let objs: Vec<serde_json::Value> = jl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 120);
    for (o, r) in objs.iter().zip(&rows) {
        assert_eq!(o["a"], r[0]);
        assert!((o["distance"].as_f64().unwrap() - r[2].parse::<f64>().unwrap()).abs() < 1e-6);
        assert_eq!(o["same"].as_bool().unwrap(), r[4] == "1");
    }
    // A list without verdicts (pairs to decide) under another images folder: same distances.
    let dir = tempfile::tempdir().unwrap();
    let todo = dir.path().join("todo.csv");
    let text = std::fs::read_to_string(list()).unwrap();
    let plain: Vec<String> = text
        .lines()
        .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
        .collect();
    std::fs::write(&todo, plain.join("\n")).unwrap();
    let csv2 = out(siam()
        .args(["compare", "--pairs"])
        .arg(&todo)
        .arg("--images")
        .arg(root())
        .arg("-m")
        .arg(shipped()));
    assert_eq!(csv2, csv);
    // Refusals: a missing image names the list and writes nothing; csv and --json; --format
    // without a list; two images and a list.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,b\nnope.png,other.png\n").unwrap();
    fails(
        siam()
            .args(["compare", "--pairs"])
            .arg(&bad)
            .arg("-m")
            .arg(shipped()),
        "bad.csv: 2 listed image(s) not found",
    );
    fails(
        siam()
            .args(["compare", "--format", "csv", "--json", "--pairs"])
            .arg(list())
            .arg("-m")
            .arg(shipped()),
        "exclude each other",
    );
    fails(
        siam().args(["compare", "--format", "csv", "a.png", "b.png"]),
        "--images and --format need a pair list",
    );
    let o = siam()
        .args(["compare", "a.png", "b.png", "--pairs"])
        .arg(list())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn calibrate_on_a_pair_list() {
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("cal.safetensors");
    let v = json(
        siam()
            .args(["calibrate", "--json", "--method", "eer", "--pairs"])
            .arg(list())
            .arg("-m")
            .arg(shipped())
            .arg("--out")
            .arg(&cal),
    );
    assert_eq!(v["calibration_pairs"], 120, "{v}");
    assert!(
        (v["previous_threshold"].as_f64().unwrap() - 1.2920).abs() < 1e-3,
        "{v}"
    );
    let t = v["threshold"].as_f64().unwrap();
    // The calibrated model's stored threshold is what `eval --pairs` now uses; at the EER
    // threshold the false-accept and false-reject rates on these pairs are about equal.
    let e = json(
        siam()
            .args(["eval", "--json", "--pairs"])
            .arg(list())
            .arg("-m")
            .arg(&cal),
    );
    assert_eq!(e["threshold_source"], "model");
    assert!(
        (e["verification"]["threshold"].as_f64().unwrap() - t).abs() < 1e-6,
        "{e}"
    );
    assert!(
        (t - 1.2920).abs() > 1e-3,
        "a threshold from these pairs, not the old one: {t}"
    );
    let info = json(siam().args(["info", "--json"]).arg(&cal));
    assert!(
        (info["threshold"].as_f64().unwrap() - t).abs() < 1e-6,
        "{info}"
    );
    // Refusals, nothing written.
    let never = dir.path().join("never.safetensors");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "a,b,same\nnope.png,other.png,1\n").unwrap();
    for (args, needle) in [
        (
            vec!["--pairs".into(), bad.display().to_string()],
            "bad.csv: 2 listed image(s) not found",
        ),
        (
            vec![
                "--pairs".into(),
                list().display().to_string(),
                "--data".into(),
                "fixtures".into(),
            ],
            "exclude each other",
        ),
        (vec!["--pairs".into(), "100".into()], "--data is needed"),
        (
            vec![
                "--data".into(),
                "fixtures".into(),
                "--images".into(),
                "x".into(),
            ],
            "--images needs a pair list",
        ),
    ] {
        fails(
            siam()
                .arg("calibrate")
                .args(&args)
                .arg("-m")
                .arg(shipped())
                .arg("--out")
                .arg(&never),
            needle,
        );
        assert!(!never.exists());
    }
}

#[test]
fn train_from_the_pair_list_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let s = json(
        siam()
            .args(["train", "--preset", "quick", "--data"])
            .arg(list())
            .args([
                "--set",
                "sampler.kind=\"pair-list\"",
                "--set",
                "validation.metric=\"roc-auc\"",
                "--set",
                "data.val-fraction=0.25",
                "--set",
                "data.test-fraction=0.25",
                "--set",
                "batch-size=16",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "6",
                "--json",
                "--out",
            ])
            .arg(&run),
    );
    assert!(
        s["data"].as_str().unwrap().contains("split by image"),
        "{s}"
    );
    assert!(
        s["test"]["verification"]["pairs"].as_u64().unwrap() > 0,
        "{s}"
    );
    // The model it wrote decides pairs.
    let csv = out(siam()
        .args(["compare", "--pairs"])
        .arg(list())
        .arg("-m")
        .arg(run.join("model.safetensors")));
    assert_eq!(csv.lines().count(), 121);
    // Without the sampler the list is refused naming the key.
    let o = siam()
        .args(["train", "--preset", "quick", "--data"])
        .arg(list())
        .arg("--out")
        .arg(dir.path().join("no"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sampler.kind") && err.contains("pair-list"),
        "{err}"
    );
    assert!(!dir.path().join("no").exists());
}
