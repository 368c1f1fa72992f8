//! The `siam` binary end to end: every command, its JSON, and its errors (exit 1 with a message
//! naming the file, exit 2 for usage errors, never a panic).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;

fn siam() -> Command {
    let mut c = Command::cargo_bin("siam").unwrap();
    c.env_remove("SIAM_MODEL");
    c
}

fn png(class: &str, i: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../fixtures/fashion-mnist-png/{class}/{i:02}.png"
    ))
}

fn png_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/fashion-mnist-png")
}

/// One small model, trained once through the CLI for every test in this binary.
fn model() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, p) = RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let o = siam()
            .args([
                "train",
                "--preset",
                "quick",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "15",
                "--json",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            s["test"]["verification"]["roc_auc"].as_f64().unwrap() > 0.7,
            "{s}"
        );
        for f in [
            "config.toml",
            "metrics.jsonl",
            "model.safetensors",
            "summary.json",
        ] {
            assert!(out.join(f).is_file(), "{f}");
        }
        (dir, out.join("model.safetensors"))
    });
    p
}

fn json(c: &mut Command) -> serde_json::Value {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn fails(c: &mut Command, code: i32, needle: &str) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn train_refuses_an_existing_run_folder_and_bad_flags() {
    let m = model();
    let run = m.parent().unwrap();
    fails(
        siam()
            .args(["train", "--preset", "quick", "--out"])
            .arg(run),
        1,
        "exists",
    );
    fails(
        siam().args(["train", "--preset", "nope"]),
        1,
        "unknown preset 'nope'",
    );
    fails(
        siam()
            .args(["train", "--preset", "quick", "--margin=-1", "--out"])
            .arg(run.join("x")),
        1,
        "loss.margin",
    );
    fails(
        siam()
            .args(["train", "--data", "/no/such/place", "--out"])
            .arg(run.join("y")),
        1,
        "/no/such/place",
    );
    fails(
        siam().args(["train", "--epochs", "zero"]),
        2,
        "invalid value",
    );
    assert!(
        !run.join("x").exists() && !run.join("y").exists(),
        "no run folder for a failed start"
    );
}

#[test]
fn compare_gives_distance_threshold_and_verdict() {
    let m = model();
    let v = json(
        siam()
            .arg("compare")
            .arg(png("bag", 0))
            .arg(png("bag", 0))
            .arg("--model")
            .arg(m)
            .arg("--json"),
    );
    assert!(v["distance"].as_f64().unwrap() < 1e-3);
    assert_eq!(v["same"], true);
    assert!(v["threshold"].as_f64().unwrap() > 0.0);
    assert_eq!(v["model"].as_str().unwrap(), m.to_str().unwrap());
    let v = json(
        siam()
            .arg("compare")
            .arg(png("bag", 0))
            .arg(png("trouser", 1))
            .arg("--json")
            .env("SIAM_MODEL", m),
    );
    assert_eq!(v["model_source"], "$SIAM_MODEL");
    assert!(v["distance"].as_f64().unwrap() > 0.0);
    assert!(v["different_pairs_closer"].as_f64().is_some());
    let o = siam()
        .arg("compare")
        .arg(png("bag", 0))
        .arg(png("bag", 1))
        .arg("-m")
        .arg(m)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("threshold") && (text.contains("same") || text.contains("different")),
        "{text}"
    );
}

#[test]
fn compare_errors_name_the_file() {
    let m = model();
    fails(
        siam()
            .arg("compare")
            .arg(png("bag", 0))
            .arg("missing.png")
            .arg("-m")
            .arg(m),
        1,
        "missing.png",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.safetensors");
    std::fs::write(&bad, "not a model").unwrap();
    fails(
        siam()
            .arg("compare")
            .arg(png("bag", 0))
            .arg(png("bag", 1))
            .arg("-m")
            .arg(&bad),
        1,
        "not a safetensors file",
    );
    let txt = dir.path().join("x.png");
    std::fs::write(&txt, "text").unwrap();
    fails(
        siam()
            .arg("compare")
            .arg(&txt)
            .arg(png("bag", 1))
            .arg("-m")
            .arg(m),
        1,
        "x.png",
    );
    fails(siam().arg("compare").arg("only-one.png"), 2, "Usage");
}

#[test]
fn eval_prints_stable_json() {
    let m = model();
    let v = json(
        siam()
            .args([
                "eval", "--data", "fixtures", "--pairs", "500", "--json", "--model",
            ])
            .arg(m),
    );
    for k in [
        "roc_auc",
        "eer",
        "balanced_accuracy",
        "threshold",
        "precision_at_1",
        "r_precision",
        "map_at_r",
        "pairs",
        "images",
    ] {
        assert!(!v[k].is_null(), "missing {k}: {v}");
    }
    assert_eq!(v["pairs"], 500);
    assert_eq!(v["images"], 1000);
    assert_eq!(v["threshold_source"], "model");
    let v = json(
        siam()
            .args(["eval", "--json", "--pairs", "100", "--data"])
            .arg(png_root())
            .arg("--model")
            .arg(m),
    );
    assert!(v["images"].as_u64().unwrap() <= 40);
    fails(
        siam()
            .args(["eval", "--data", "/nowhere/data", "--model"])
            .arg(m),
        1,
        "/nowhere/data",
    );
}

#[test]
fn embed_search_and_info() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("e.safetensors");
    siam()
        .arg("embed")
        .arg(png_root())
        .arg("--out")
        .arg(&st)
        .arg("-m")
        .arg(m)
        .assert()
        .success();
    let t = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t["embeddings"].dims(), &[40, 128]);
    let csv = dir.path().join("e.csv");
    siam()
        .arg("embed")
        .arg(png("bag", 0))
        .arg(png("coat", 0))
        .arg("--out")
        .arg(&csv)
        .arg("-m")
        .arg(m)
        .assert()
        .success();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(text.starts_with("file,e0,"));
    fails(
        siam()
            .arg("embed")
            .arg(png("bag", 0))
            .arg("--out")
            .arg(dir.path().join("e.txt"))
            .arg("-m")
            .arg(m),
        1,
        "e.txt",
    );

    let v = json(
        siam()
            .arg("search")
            .arg(png("bag", 0))
            .arg("--gallery")
            .arg(png_root())
            .arg("-k")
            .arg("3")
            .arg("--json")
            .arg("-m")
            .arg(m),
    );
    let r = v["results"].as_array().unwrap();
    assert_eq!(r.len(), 3);
    assert!(
        r[0]["file"].as_str().unwrap().ends_with("bag/00.png"),
        "the query itself is nearest: {v}"
    );

    let v = json(siam().arg("info").arg(m).arg("--json"));
    assert_eq!(v["format-version"], 1);
    assert!(v["threshold"].as_f64().is_some());
    let o = siam().arg("info").arg(m).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("seed-cnn"));
    fails(
        siam().arg("info").arg("nope.safetensors"),
        1,
        "nope.safetensors",
    );
}

#[test]
fn the_shipped_model_is_the_default_and_separates_the_fixture_pairs() {
    // In a folder without runs/ and without $SIAM_MODEL, compare falls back to the shipped model.
    let cwd = tempfile::tempdir().unwrap();
    let v = json(
        siam()
            .current_dir(cwd.path())
            .arg("compare")
            .arg(png("bag", 0))
            .arg(png("bag", 1))
            .arg("--json"),
    );
    assert_eq!(v["model_source"], "the shipped Fashion-MNIST model");
    assert!(
        v["model"]
            .as_str()
            .unwrap()
            .ends_with("fixtures/models/fashion-mnist.safetensors")
    );
    assert_eq!(v["same"], true, "{v}");
    let v = json(
        siam()
            .current_dir(cwd.path())
            .arg("compare")
            .arg(png("bag", 0))
            .arg(png("trouser", 0))
            .arg("--json"),
    );
    assert_eq!(v["same"], false, "{v}");
    // On the 40 held-out PNGs (in neither split of the training data's subset).
    let v = json(
        siam()
            .current_dir(cwd.path())
            .args(["eval", "--json", "--pairs", "400", "--data"])
            .arg(png_root()),
    );
    assert!(v["roc_auc"].as_f64().unwrap() > 0.95, "{v}");
    assert!(v["balanced_accuracy"].as_f64().unwrap() > 0.85, "{v}");
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_resume_finishes_the_run() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let bin = assert_cmd::cargo::cargo_bin("siam");
    let mut child = std::process::Command::new(&bin)
        .args([
            "train",
            "--preset",
            "quick",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "60",
            "--out",
        ])
        .arg(&out)
        .env_remove("SIAM_MODEL")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // Wait for the first logged step, then interrupt.
    loop {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if line.starts_with("step") {
            break;
        }
    }
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{seen}{rest}");
    assert!(
        rest.contains("stopped at step") && rest.contains("checkpoints/step-"),
        "{rest}"
    );
    let checkpoints = std::fs::read_dir(out.join("checkpoints")).unwrap().count();
    assert_eq!(checkpoints, 1);
    // Resuming finishes the 60 steps and writes the summary.
    let v = json(siam().arg("train").arg("--resume").arg(&out).arg("--json"));
    assert_eq!(v["steps"], 60);
    assert!(out.join("summary.json").is_file());
}
