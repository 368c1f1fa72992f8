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
    // --pretrained needs a ResNet; into a ResNet, a file that does not fit is named.
    fails(
        siam()
            .args([
                "train",
                "--preset",
                "quick",
                "--pretrained",
                "r.safetensors",
                "--out",
            ])
            .arg(run.join("z")),
        1,
        "--pretrained loads a resnet18 or resnet34 backbone; model.encoder.kind is seed-cnn",
    );
    let tv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models/resnet/resnet34.safetensors");
    fails(
        siam()
            .args([
                "train",
                "--preset",
                "quick",
                "--set",
                "model.encoder={kind = \"resnet18\", widths = [4, 8, 16, 32]}",
                "--set",
                "data.source=\"fixtures\"",
                "--pretrained",
            ])
            .arg(&tv)
            .arg("--out")
            .arg(run.join("z")),
        1,
        "resnet34.safetensors: not a resnet18 backbone",
    );
    assert!(
        !run.join("x").exists() && !run.join("y").exists() && !run.join("z").exists(),
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

/// An input unlike the model's input spec is adjusted with a warning (text) and a field (JSON)
/// saying what was done; a fixture image of the training distribution gets none.
#[test]
fn compare_warns_on_inputs_unlike_the_training_data() {
    let m = model();
    // Training fitted an input check on the validation split and measured it on the test
    // split, whose images are of the training distribution: few false alarms.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.parent().unwrap().join("summary.json")).unwrap())
            .unwrap();
    let check = &summary["input_check"];
    assert!(check["images"].as_u64().unwrap() >= 20, "{check}");
    assert!(check["rate"].as_f64().unwrap() <= 0.1, "{check}");
    let info = stdout(siam().arg("info").arg(m));
    assert!(info.contains("input check:   mean intensity"), "{info}");

    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([0]))
        .save(&blank)
        .unwrap();
    let mut inverted = image::open(png("bag", 0)).unwrap().to_luma8();
    image::imageops::invert(&mut inverted);
    let inverted_path = dir.path().join("inverted.png");
    inverted.save(&inverted_path).unwrap();
    let warnings = |a: &Path, b: &Path| -> (Vec<String>, Vec<String>) {
        let v = json(
            siam()
                .arg("compare")
                .arg(a)
                .arg(b)
                .arg("-m")
                .arg(m)
                .arg("--json"),
        );
        assert_eq!(v["input_check"], true, "{v}");
        let kinds = |i: usize| {
            v["inputs"][i]["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["kind"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        (kinds(0), kinds(1))
    };
    let (a, b) = warnings(&blank, &inverted_path);
    assert!(a.contains(&"intensity-spread".to_string()), "{a:?}");
    assert!(b.contains(&"intensity-mean".to_string()), "{b:?}");
    // Fixture images of the training distribution get none.
    let (a, b) = warnings(&png("bag", 0), &png("trouser", 1));
    assert!(a.is_empty() && b.is_empty(), "{a:?} {b:?}");
    let o = siam()
        .arg("compare")
        .arg(&blank)
        .arg(png("bag", 0))
        .arg("-m")
        .arg(m)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("blank.png: unlike the training data: intensity spread"),
        "{err}"
    );
}

#[test]
fn diagnose_finds_unfamiliar_inputs_in_inverted_images() {
    // The fixture images as negatives, class folders kept.
    let dir = tempfile::tempdir().unwrap();
    for class in std::fs::read_dir(png_root()).unwrap() {
        let class = class.unwrap().path();
        let out = dir.path().join(class.file_name().unwrap());
        std::fs::create_dir_all(&out).unwrap();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            let mut img = image::open(&f).unwrap().to_luma8();
            image::imageops::invert(&mut img);
            img.save(out.join(f.file_name().unwrap())).unwrap();
        }
    }
    let v = json(
        siam()
            .args(["diagnose", "--json", "--data"])
            .arg(dir.path())
            .arg("--model")
            .arg(shipped()),
    );
    let check = &v["measurements"]["input_check"];
    assert!(check["rate"].as_f64().unwrap() > 0.5, "{check}");
    let f = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "unfamiliar-inputs")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert!(f["summary"].as_str().unwrap().contains("brightness"), "{f}");
    let text = stdout(
        siam()
            .args(["diagnose", "--data"])
            .arg(dir.path())
            .arg("--model")
            .arg(shipped()),
    );
    assert!(
        text.contains("input check: ") && text.contains("[unfamiliar-inputs]"),
        "{text}"
    );
}

#[test]
fn compare_says_what_preprocessing_did_to_an_unlike_input() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    // 80×64 RGB noise from a fixed LCG.
    let mut x: u32 = 7;
    let mut next = || {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (x >> 24) as u8
    };
    let noise = image::RgbImage::from_fn(80, 64, |_, _| image::Rgb([next(), next(), next()]));
    let noise_path = dir.path().join("noise.png");
    noise.save(&noise_path).unwrap();
    // The fixture bag as RGB of gray pixels and as RGBA: no colour to lose.
    let bag = image::open(png("bag", 0)).unwrap();
    let gray_rgb = dir.path().join("gray-rgb.png");
    bag.to_rgb8().save(&gray_rgb).unwrap();
    let rgba = dir.path().join("rgba.png");
    bag.to_rgba8().save(&rgba).unwrap();

    let kinds = |v: &serde_json::Value, i: usize| -> Vec<String> {
        v["inputs"][i]["adjustments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let v = json(
        siam()
            .arg("compare")
            .arg(&noise_path)
            .arg(png("bag", 0))
            .arg("-m")
            .arg(m)
            .arg("--json"),
    );
    assert_eq!(kinds(&v, 0), ["resized", "converted-to-gray"], "{v}");
    assert!(kinds(&v, 1).is_empty(), "{v}");
    let detail = v["inputs"][0]["adjustments"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("80×64") && detail.contains("28×28") && detail.contains("aspect"),
        "{detail}"
    );
    let v = json(
        siam()
            .arg("compare")
            .arg(&gray_rgb)
            .arg(&rgba)
            .arg("-m")
            .arg(m)
            .arg("--json"),
    );
    assert!(kinds(&v, 0).is_empty(), "{v}");
    assert_eq!(kinds(&v, 1), ["alpha-dropped"], "{v}");

    let o = siam()
        .arg("compare")
        .arg(&noise_path)
        .arg(png("bag", 0))
        .arg("-m")
        .arg(m)
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: ") && err.contains("noise.png") && err.contains("colour is lost"),
        "{err}"
    );
    let o = siam()
        .arg("compare")
        .arg(png("bag", 0))
        .arg(png("bag", 1))
        .arg("-m")
        .arg(m)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("warning"));
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
fn eval_on_a_pair_list_and_in_the_k_fold_protocol() {
    let m = shipped();
    let dir = tempfile::tempdir().unwrap();
    let classes = ["bag", "coat", "sandal", "trouser"];
    // 32 pairs: same pairs within a class, different pairs across, two folds in a column.
    let mut rows = String::from("a,b,same,fold\n");
    let mut plain = String::from("a,b,same\n");
    for i in 0..16u32 {
        let c = classes[i as usize % 4];
        let o = classes[(i as usize + 1) % 4];
        for (b, same) in [(png(c, (i / 4 + 1) % 4), 1), (png(o, i / 4), 0)] {
            let line = format!("{},{},{same}", png(c, i / 4).display(), b.display());
            rows.push_str(&format!("{line},{}\n", i / 8));
            plain.push_str(&format!("{line}\n"));
        }
    }
    let folded = dir.path().join("folded.csv");
    std::fs::write(&folded, rows).unwrap();
    let v = json(
        siam()
            .args(["eval", "--json", "--pairs"])
            .arg(&folded)
            .arg("-m")
            .arg(&m),
    );
    assert_eq!(v["pairs"], 32, "{v}");
    assert!(v["images"].as_u64().unwrap() < 64, "each image once: {v}");
    assert_eq!(v["threshold_source"], "model");
    assert!(v["verification"]["roc_auc"].as_f64().unwrap() > 0.8, "{v}");
    let k = &v["kfold"];
    assert_eq!(k["folds"].as_array().unwrap().len(), 2, "{v}");
    let mean = k["accuracy_mean"].as_f64().unwrap();
    let per: Vec<f64> = k["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["accuracy"].as_f64().unwrap())
        .collect();
    assert!((mean - per.iter().sum::<f64>() / 2.0).abs() < 1e-12);
    // No fold column: --folds K makes contiguous folds; without it there is no k-fold.
    let list = dir.path().join("plain.csv");
    std::fs::write(&list, plain).unwrap();
    let v = json(
        siam()
            .args(["eval", "--json", "--folds", "4", "--pairs"])
            .arg(&list)
            .arg("-m")
            .arg(&m),
    );
    assert_eq!(v["kfold"]["folds"].as_array().unwrap().len(), 4, "{v}");
    assert!(
        v["kfold"]["folds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["pairs"] == 8)
    );
    let v = json(
        siam()
            .args(["eval", "--json", "--pairs"])
            .arg(&list)
            .arg("-m")
            .arg(&m),
    );
    assert!(v["kfold"].is_null(), "{v}");
    let text = stdout(
        siam()
            .args(["eval", "--folds", "4", "--pairs"])
            .arg(&list)
            .arg("-m")
            .arg(&m),
    );
    assert!(
        text.contains("4-fold accuracy") && text.contains("fold  4:"),
        "{text}"
    );
    // Refusals: a list naming a missing image, --folds against the list's folds, --folds
    // without a list.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("a,b,same\n{},nope.png,1\n", png("bag", 0).display()),
    )
    .unwrap();
    fails(
        siam().args(["eval", "--pairs"]).arg(&bad).arg("-m").arg(&m),
        1,
        "bad.csv: 1 listed image(s) not found",
    );
    fails(
        siam()
            .args(["eval", "--folds", "3", "--pairs"])
            .arg(&folded)
            .arg("-m")
            .arg(&m),
        1,
        "defines 2 folds",
    );
    fails(
        siam()
            .args(["eval", "--data", "fixtures", "--folds", "3", "-m"])
            .arg(&m),
        1,
        "--folds and --images need a pair list",
    );
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
    // The fixture test images are of the training distribution: few flagged.
    let check = &v["input_check"];
    assert_eq!(check["images"], 1000, "{v}");
    assert!(check["rate"].as_f64().unwrap() <= 0.1, "{check}");
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

fn stdout(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// JSON Lines with the `gallery` field (the one thing that differs by gallery source) dropped.
fn jsonl_results(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("gallery");
            v
        })
        .collect()
}

#[test]
fn galleries_embed_once_search_many_append_and_refuse_another_model() {
    let m = model();
    let dir = tempfile::tempdir().unwrap();
    let g = dir.path().join("g.safetensors");
    siam()
        .arg("embed")
        .arg(png_root())
        .arg("-o")
        .arg(&g)
        .arg("-m")
        .arg(m)
        .assert()
        .success();
    // Many queries: two on the command line, two more from a list (relative to the list).
    let list = dir.path().join("queries.txt");
    std::fs::write(
        &list,
        format!(
            "# two more\n{}\n\n{}\n",
            png("coat", 1).display(),
            png("shirt", 2).display()
        ),
    )
    .unwrap();
    let search = |gallery: &Path, format: &str| {
        stdout(
            siam()
                .arg("search")
                .arg(png("bag", 0))
                .arg(png("sandal", 3))
                .arg("--queries")
                .arg(&list)
                .arg("--gallery")
                .arg(gallery)
                .args(["-k", "4", "--format", format, "-m"])
                .arg(m),
        )
    };
    let from_file = search(&g, "jsonl");
    let from_folder = search(&png_root(), "jsonl");
    let lines = jsonl_results(&from_file);
    assert_eq!(lines.len(), 4, "{from_file}");
    // The round trip: searching the embedded file equals searching the folder.
    assert_eq!(lines, jsonl_results(&from_folder));
    for (v, q) in lines
        .iter()
        .zip(["bag/00", "sandal/03", "coat/01", "shirt/02"])
    {
        assert!(
            v["query"].as_str().unwrap().ends_with(&format!("{q}.png")),
            "{v}"
        );
        let r = v["results"].as_array().unwrap();
        assert_eq!(r.len(), 4);
        assert!(
            r[0]["file"]
                .as_str()
                .unwrap()
                .ends_with(&format!("{q}.png")),
            "{v}"
        );
        assert!(r[0]["distance"].as_f64().unwrap() < 1e-3, "{v}");
        assert_eq!(r[0]["same"], true);
        assert_eq!(r[3]["rank"], 4);
    }
    let csv = search(&g, "csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "query,rank,file,distance,same");
    assert_eq!(rows.len(), 1 + 4 * 4, "{csv}");
    assert!(
        rows[1].contains("bag/00.png,1,") && rows[1].ends_with(",true"),
        "{csv}"
    );
    let text = search(&g, "text");
    assert!(text.contains("40 images); 4 queries"), "{text}");
    assert_eq!(text.matches("query: ").count(), 4, "{text}");

    // Append: a gallery of the bags, then the whole folder added; nothing embedded twice.
    let g2 = dir.path().join("g2.safetensors");
    siam()
        .arg("embed")
        .arg(png_root().join("bag"))
        .arg("-o")
        .arg(&g2)
        .arg("-m")
        .arg(m)
        .assert()
        .success();
    let o = siam()
        .arg("embed")
        .arg(png_root())
        .arg("--append")
        .arg("-o")
        .arg(&g2)
        .arg("-m")
        .arg(m)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("wrote 40 embeddings") && err.contains("added to 4; 4 already in the gallery"),
        "{err}"
    );
    let a = siam_model::Gallery::load(&g).unwrap();
    let b = siam_model::Gallery::load(&g2).unwrap();
    assert_eq!(a.len(), b.len());
    for (i, name) in a.items().iter().enumerate() {
        let j = b.items().iter().position(|n| n == name).unwrap();
        let d = a.dim();
        let (ra, rb) = (&a.embeddings()[i * d..][..d], &b.embeddings()[j * d..][..d]);
        assert!(
            ra.iter().zip(rb).all(|(x, y)| (x - y).abs() < 1e-5),
            "{name}"
        );
    }
    fails(
        siam()
            .arg("embed")
            .arg(png("bag", 0))
            .arg("--append")
            .arg("-o")
            .arg(dir.path().join("e.csv"))
            .arg("-m")
            .arg(m),
        1,
        "--append adds to a .safetensors gallery",
    );

    // Another model: refused, naming both.
    let before = std::fs::read(&g2).unwrap();
    for args in [vec!["search", "--gallery"], vec!["embed", "--append", "-o"]] {
        let mut c = siam();
        c.args(&args[..args.len() - 1]);
        if args[0] == "search" {
            c.arg(png("bag", 0));
        } else {
            c.arg(png_root());
        }
        c.arg(args[args.len() - 1])
            .arg(&g2)
            .arg("-m")
            .arg(shipped());
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("g2.safetensors")
                && err.contains(&m.display().to_string())
                && err.contains("fashion-mnist.safetensors"),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read(&g2).unwrap(),
        before,
        "a refused append writes nothing"
    );
    // A list naming a missing image; no query at all; a gallery that is not one.
    std::fs::write(&list, "nope.png\n").unwrap();
    fails(
        siam()
            .arg("search")
            .arg("--queries")
            .arg(&list)
            .arg("--gallery")
            .arg(&g)
            .arg("-m")
            .arg(m),
        1,
        "line 1: nope.png",
    );
    fails(
        siam()
            .arg("search")
            .arg("--gallery")
            .arg(&g)
            .arg("-m")
            .arg(m),
        1,
        "no query",
    );
    fails(
        siam()
            .arg("search")
            .arg(png("bag", 0))
            .arg("--gallery")
            .arg(m)
            .arg("-m")
            .arg(m),
        1,
        "not a gallery written by `siam embed`",
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

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models/fashion-mnist.safetensors")
}

#[test]
fn diagnose_a_healthy_model_as_json() {
    let v = json(
        siam()
            .args(["diagnose", "--data", "fixtures", "--json", "--model"])
            .arg(shipped()),
    );
    assert_eq!(v["healthy"], true, "{v:#}");
    assert_eq!(v["findings"].as_array().unwrap().len(), 0);
    let m = &v["measurements"];
    for k in [
        "verification",
        "retrieval",
        "stats",
        "geometry",
        "consistency",
        "pixels_precision_at_1",
        "untrained_precision_at_1",
        "context",
    ] {
        assert!(!m[k].is_null(), "measurements.{k} missing: {m:#}");
    }
    // Plain output says so too.
    let o = siam()
        .args([
            "diagnose",
            "--data",
            "fixtures",
            "--no-baselines",
            "--model",
        ])
        .arg(shipped())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("no problems found"));
}

/// A threshold calibrated for a false-accept rate of 1e-4 is far from the balanced one:
/// `diagnose --strict` exits 3 and names `stale-threshold`.
#[test]
fn calibrate_then_diagnose_a_stale_threshold_with_report_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let strict = dir.path().join("strict.safetensors");
    let v = json(
        siam()
            .args([
                "calibrate",
                "--data",
                "fixtures",
                "--method",
                "far=0.0001",
                "--json",
            ])
            .arg("--model")
            .arg(model())
            .arg("--out")
            .arg(&strict),
    );
    let t = v["threshold"].as_f64().unwrap();
    assert!(t < v["previous_threshold"].as_f64().unwrap(), "{v}");
    // The input file is never overwritten, and an existing output is refused.
    fails(
        siam()
            .args(["calibrate", "--data", "fixtures", "--model"])
            .arg(&strict)
            .arg("--out")
            .arg(&strict),
        1,
        "--out is the input model",
    );
    fails(
        siam()
            .args(["calibrate", "--data", "fixtures", "--model"])
            .arg(model())
            .arg("--out")
            .arg(&strict),
        1,
        "already exists",
    );
    // An image folder is the calibration set itself (here 40 images, too few to split).
    let folder = json(
        siam()
            .args(["calibrate", "--json", "--model"])
            .arg(model())
            .arg("--data")
            .arg(png_root())
            .arg("--out")
            .arg(dir.path().join("folder.safetensors")),
    );
    assert!(folder["threshold"].as_f64().unwrap() > 0.0, "{folder}");
    fails(
        siam()
            .args([
                "calibrate",
                "--data",
                "fixtures",
                "--method",
                "far=two",
                "--model",
            ])
            .arg(model())
            .arg("--out")
            .arg(dir.path().join("x.safetensors")),
        1,
        "is not a number",
    );
    let report = dir.path().join("report.html");
    let plots = dir.path().join("plots");
    let run = model().parent().unwrap();
    let o = siam()
        .args([
            "diagnose",
            "--data",
            "fixtures",
            "--strict",
            "--no-baselines",
            "--json",
        ])
        .arg("--model")
        .arg(&strict)
        .arg("--run")
        .arg(run)
        .arg("--report")
        .arg(&report)
        .arg("--plots")
        .arg(&plots)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"stale-threshold"), "{kinds:?}");
    assert_eq!(v["healthy"], false);
    // Pictures in both formats, the training curves from the run log included.
    for name in ["embedding", "distances", "roc", "training"] {
        let png = std::fs::read(plots.join(format!("{name}.png"))).unwrap();
        let img = image::load_from_memory(&png).unwrap();
        assert!(img.width() > 400 && img.height() > 300);
        let rgb = img.to_rgb8();
        let non_white = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 1000, "{name}.png is blank");
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("<text"), "{name}.svg");
    }
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("data-kind=\"stale-threshold\""));
    assert_eq!(html.matches("<svg").count(), 4);
    assert!(!html.contains("src=\"http"), "the report is self-contained");
    render_in_chromium(&report);
}

/// Renders the report in headless Chromium (Debian's `chromium`) when it is installed.
fn render_in_chromium(report: &Path) {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        eprintln!(
            "skipped: Chromium is not installed (apt-get install chromium) — the report was not rendered"
        );
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shot = profile.path().join("shot.png");
    let url = format!("file://{}", report.canonicalize().unwrap().display());
    let base = |c: &mut std::process::Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut dump = std::process::Command::new(chromium);
    base(&mut dump);
    let o = dump.arg("--dump-dom").arg(&url).output().unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        dom.contains("stale-threshold"),
        "chromium DOM: {}",
        &dom[..dom.len().min(500)]
    );
    assert_eq!(dom.matches("<svg").count(), 4, "all four pictures parsed");
    let mut sc = std::process::Command::new(chromium);
    base(&mut sc);
    let o = sc
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1000,3000")
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let img = image::open(&shot).unwrap().to_rgb8();
    let colourful = img
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r.max(g).max(b) - r.min(g).min(b) > 60
        })
        .count();
    assert!(
        colourful > 2000,
        "the rendered page shows the coloured pictures ({colourful} px)"
    );
}

#[test]
fn sweep_runs_trials_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sweep");
    let v = json(
        siam()
            .args([
                "sweep",
                "--preset",
                "quick",
                "--margin",
                "0.5,1",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "6",
                "--json",
                "--out",
            ])
            .arg(&out),
    );
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (r, m) in rows.iter().zip([0.5, 1.0]) {
        assert_eq!(r["trial"]["margin"], m);
        assert!(r["error"].is_null(), "{r}");
        assert!(r["roc_auc"].as_f64().unwrap() > 0.5, "{r}");
        let run = PathBuf::from(r["run_dir"].as_str().unwrap());
        assert!(run.join("model.safetensors").is_file());
        assert!(r["findings"].is_array());
    }
    assert!(out.join("sweep.json").is_file());
    // Nothing to sweep, and a non-empty sweep folder, are errors.
    fails(
        siam().args(["sweep", "--preset", "quick"]),
        1,
        "nothing to sweep",
    );
    fails(
        siam().args(["sweep", "--margin", "1", "--out"]).arg(&out),
        1,
        "not empty",
    );
    fails(
        siam()
            .args(["sweep", "--margin=-1", "--out"])
            .arg(dir.path().join("s2")),
        1,
        "margin",
    );
}

/// metrics.jsonl without its timing fields.
fn metrics_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("pairs_per_s");
            o.remove("eta_s");
            o.remove("train_s");
            v
        })
        .collect()
}

/// A thread that keeps one core busy until dropped: load that changes how rayon's threads are
/// scheduled and steal work.
struct Busy(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Busy {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut x = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
        Self(stop, Some(h))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// The same seeded run with 1, 2 and 4 rayon threads, while another thread loads a core, ends
/// with byte-identical model files and the same metrics: every reduction over images (weight,
/// bias and BatchNorm statistics, in the seed CNN's kernels and the convnet's Winograd blocks)
/// sums fixed parts in a fixed order.
#[test]
fn training_is_bit_identical_for_any_thread_count_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let _busy = Busy::start();
    let convnet = siam_model::EncoderConfig::Convnet {
        channels: vec![6, 10],
        hidden: 0,
        dropout: 0.0,
        embedding_dim: 16,
        pooling: siam_model::Pooling::Flatten,
    };
    for (name, encoder) in [
        (
            "seed-cnn",
            siam_model::EncoderConfig::SeedCnn { embedding_dim: 16 },
        ),
        ("convnet", convnet),
    ] {
        let mut c = siam_train::TrainConfig::preset("quick").unwrap();
        c.data.limit_per_class = Some(40);
        c.model.encoder = encoder;
        c.sampler = siam_data::SamplerConfig::Pk { p: 4, k: 4 };
        c.epochs = 1;
        c.steps_per_epoch = 12;
        c.log_every = 1;
        c.validation.pairs = 100;
        c.validation.test_pairs = 200;
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(&cfg, c.to_toml()).unwrap();
        let runs: Vec<PathBuf> = [1, 2, 4]
            .iter()
            .map(|threads| {
                let out = dir.path().join(format!("{name}-{threads}"));
                json(
                    siam()
                        .env("RAYON_NUM_THREADS", threads.to_string())
                        .args(["train", "--json", "--config"])
                        .arg(&cfg)
                        .arg("--out")
                        .arg(&out),
                );
                out
            })
            .collect();
        let model = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
        for r in &runs[1..] {
            assert!(
                model(r) == model(&runs[0]),
                "{name}: {} ends with other weights than {}",
                r.display(),
                runs[0].display()
            );
            assert_eq!(
                metrics_without_timing(r),
                metrics_without_timing(&runs[0]),
                "{name}"
            );
        }
    }
}

/// `kill -9` at seeded random points (before the first checkpoint, between checkpoints, around
/// validations), then `--resume`, while another thread loads a core: the run ends with the same
/// model file, metrics log and test figures as an uninterrupted one, and every checkpoint on
/// disk is always complete.
#[test]
fn kill_9_at_random_points_then_resume_matches_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let _busy = Busy::start();
    let mut c = siam_train::TrainConfig::preset("quick").unwrap();
    c.data.limit_per_class = Some(40);
    c.model.encoder = siam_model::EncoderConfig::SeedCnn { embedding_dim: 16 };
    c.batch_size = 8;
    c.sampler = siam_data::SamplerConfig::Pk { p: 4, k: 2 };
    c.epochs = 3;
    c.steps_per_epoch = 10;
    c.log_every = 1;
    c.checkpoint.every_steps = 4;
    c.validation.pairs = 100;
    c.validation.test_pairs = 200;
    let cfg = dir.path().join("tiny.toml");
    std::fs::write(&cfg, c.to_toml()).unwrap();

    let reference = dir.path().join("reference");
    json(
        siam()
            .args(["train", "--json", "--config"])
            .arg(&cfg)
            .arg("--out")
            .arg(&reference),
    );

    let run = dir.path().join("killed");
    let bin = assert_cmd::cargo::cargo_bin("siam");
    let lines = |p: &Path| {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    // A small LCG: the kill points are random but the same on every machine.
    let mut state = 0x5eed_u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut kills = 0;
    let mut first = true;
    loop {
        let mut cmd = std::process::Command::new(&bin);
        if first {
            cmd.args(["train", "--config"])
                .arg(&cfg)
                .arg("--out")
                .arg(&run);
        } else {
            cmd.args(["train", "--resume"]).arg(&run);
        }
        let mut child = cmd
            .env_remove("SIAM_MODEL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        first = false;
        if kills >= 4 {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            break;
        }
        let target = lines(&run) + 1 + next(7) as usize;
        if kills == 1 {
            // While it runs, a second trainer on the same folder is refused.
            let holds_lock = |pid: u32| {
                std::fs::read_to_string(run.join(".lock"))
                    .is_ok_and(|s| s.trim() == pid.to_string())
            };
            while !holds_lock(child.id()) && child.try_wait().unwrap().is_none() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if child.try_wait().unwrap().is_none() {
                fails(
                    siam().args(["train", "--resume"]).arg(&run),
                    1,
                    "in use by process",
                );
            }
        }
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if lines(&run) >= target {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        if let Some(status) = finished {
            assert!(status.success(), "the run failed before it could be killed");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        for ck in std::fs::read_dir(run.join("checkpoints"))
            .unwrap()
            .flatten()
        {
            let name = ck.file_name().to_string_lossy().into_owned();
            if name.starts_with("step-") {
                let bytes = std::fs::read(ck.path()).unwrap();
                let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
                    .unwrap_or_else(|e| panic!("{name} is corrupt: {e}"));
                assert!(
                    meta.metadata()
                        .as_ref()
                        .unwrap()
                        .contains_key("siam-checkpoint")
                );
                safetensors::SafeTensors::deserialize(&bytes).unwrap();
            }
        }
    }
    assert!(kills >= 3, "only {kills} kills landed");
    assert_eq!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        std::fs::read(reference.join("model.safetensors")).unwrap(),
        "the resumed run's model differs"
    );
    assert_eq!(
        metrics_without_timing(&run),
        metrics_without_timing(&reference)
    );
    let summary = |p: &Path| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(p.join("summary.json")).unwrap(),
        )
        .unwrap()["test"]
            .clone()
    };
    assert_eq!(summary(&run), summary(&reference));
    // No temporary file survives the final resume.
    for d in [run.clone(), run.join("checkpoints")] {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            assert!(!e.file_name().to_string_lossy().ends_with(".tmp"));
        }
    }
}

/// IDX bytes: `n` images of `rows × cols` (or labels when `rows` is None).
fn idx_bytes(magic: u32, dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// Every kind of broken IDX directory: exit 1, the file named, what is wrong said, no panic.
#[test]
fn broken_idx_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let good_images = idx_bytes(0x803, &[4, 28, 28], &[7u8; 4 * 784]);
    let good_labels = idx_bytes(0x801, &[4], &[0, 1, 0, 1]);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "truncated",
            good_images[..100].to_vec(),
            good_labels.clone(),
            "truncated",
        ),
        (
            "wrong magic",
            idx_bytes(0x801, &[4, 28, 28], &[7u8; 4 * 784]),
            good_labels.clone(),
            "magic",
        ),
        (
            "zero images",
            idx_bytes(0x803, &[0, 28, 28], &[]),
            idx_bytes(0x801, &[0], &[]),
            "zero images",
        ),
        (
            "empty dimensions",
            idx_bytes(0x803, &[4, 0, 28], &[]),
            good_labels.clone(),
            "28",
        ),
        (
            "label count",
            good_images.clone(),
            idx_bytes(0x801, &[3], &[0, 1, 0]),
            "3 labels for 4 images",
        ),
        (
            "declared huge",
            idx_bytes(0x803, &[u32::MAX, 65535, 65535], &[1, 2, 3]),
            good_labels.clone(),
            "truncated",
        ),
        (
            "trailing data",
            [good_images.clone(), vec![1, 2, 3]].concat(),
            good_labels.clone(),
            "trailing",
        ),
    ];
    for (what, images, labels, needle) in cases {
        let d = dir.path().join(what.replace(' ', "-"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("train-images-idx3-ubyte"), images).unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte"), labels).unwrap();
        let o = siam()
            .args(["eval", "--model"])
            .arg(shipped())
            .arg("--data")
            .arg(&d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("idx"), "{what}: the file is not named: {err}");
        assert!(
            err.contains(needle),
            "{what}: stderr lacks {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    // Labels out of range for the class names given.
    let d = dir.path().join("range");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte"), &good_images).unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte"),
        idx_bytes(0x801, &[4], &[0, 1, 0, 200]),
    )
    .unwrap();
    std::fs::write(d.join("classes.txt"), "a\nb\n").unwrap();
    fails(
        siam()
            .args(["eval", "--model"])
            .arg(shipped())
            .arg("--data")
            .arg(&d),
        1,
        "200",
    );
}

/// Broken image folders, through `siam train` and `siam eval`.
#[test]
fn broken_image_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = |name: &str| {
        let root = dir.path().join(name);
        for class in ["bag", "sandal"] {
            let d = root.join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..2 {
                std::fs::copy(png(class, i), d.join(format!("{i}.png"))).unwrap();
            }
        }
        root
    };
    let eval = |root: &Path| {
        let mut c = siam();
        c.args(["eval", "--model"])
            .arg(shipped())
            .arg("--data")
            .arg(root);
        c
    };
    let r = fresh("zero-byte");
    std::fs::write(r.join("bag/empty.png"), b"").unwrap();
    fails(&mut eval(&r), 1, "empty.png");
    let r = fresh("corrupt-png");
    let mut bytes = std::fs::read(png("bag", 0)).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(r.join("bag/half.png"), bytes).unwrap();
    fails(&mut eval(&r), 1, "half.png");
    let r = fresh("fake-jpeg");
    std::fs::write(r.join("bag/photo.jpg"), b"\xff\xd8\xff not really a jpeg").unwrap();
    fails(&mut eval(&r), 1, "photo.jpg");
    let r = fresh("empty-class");
    std::fs::create_dir_all(r.join("coat")).unwrap();
    fails(&mut eval(&r), 1, "coat");
    let r = fresh("single-class");
    std::fs::remove_dir_all(r.join("sandal")).unwrap();
    fails(
        siam()
            .args(["train", "--preset", "quick", "--data"])
            .arg(&r)
            .arg("--out")
            .arg(dir.path().join("run")),
        1,
        "class",
    );
    assert!(
        !dir.path().join("run").exists(),
        "a failed start leaves no run folder"
    );
    // Non-image files are ignored; mixed sizes and channel counts are resized and converted
    // to the model's input (the same preprocessing as `compare`).
    let r = fresh("mixed");
    std::fs::write(r.join("bag/notes.txt"), "not an image").unwrap();
    let big = image::DynamicImage::new_rgb8(40, 30);
    big.save(r.join("sandal/big-rgb.png")).unwrap();
    let v = json(eval(&r).arg("--json"));
    assert_eq!(v["images"], 5, "{v}");
}

/// Broken model files, through `siam compare`.
#[test]
fn broken_model_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(shipped()).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&good).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["siam"]).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&good, &candle_core::Device::Cpu).unwrap();
    let write = |name: &str,
                 t: &std::collections::HashMap<String, candle_core::Tensor>,
                 m: Option<serde_json::Value>| {
        let p = dir.path().join(name);
        let md = m.map(|m| std::collections::HashMap::from([("siam".to_string(), m.to_string())]));
        let bytes = safetensors::serialize(t.iter().map(|(k, v)| (k.as_str(), v)), md).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    let p = dir.path().join("text.safetensors");
    std::fs::write(&p, "hello").unwrap();
    cases.push((p, "not a safetensors file"));
    let p = dir.path().join("truncated.safetensors");
    std::fs::write(&p, &good[..good.len() / 3]).unwrap();
    cases.push((p, "not a safetensors file"));
    cases.push((
        write("foreign.safetensors", &tensors, None),
        "without siam metadata",
    ));
    let mut t = tensors.clone();
    t.insert(
        "encoder.head.out.weight".into(),
        candle_core::Tensor::zeros(
            (128, 200),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap(),
    );
    cases.push((
        write("shape.safetensors", &t, Some(meta.clone())),
        "the model needs [128, 256]",
    ));
    let mut m = meta.clone();
    m["format-version"] = 7.into();
    cases.push((write("newer.safetensors", &tensors, Some(m)), "newer"));
    let mut t = tensors.clone();
    let b = t["encoder.head.out.bias"].clone();
    t.insert(
        "encoder.head.out.bias".into(),
        (b.ones_like().unwrap() * f64::NAN).unwrap(),
    );
    cases.push((write("nan.safetensors", &t, Some(meta.clone())), "NaN"));
    for (p, needle) in cases {
        let o = siam()
            .arg("compare")
            .arg(png("bag", 0))
            .arg(png("bag", 1))
            .arg("--model")
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&*p.file_name().unwrap().to_string_lossy()),
            "file not named: {err}"
        );
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Broken configs: the key at fault is named, nothing is created.
#[test]
fn broken_configs_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = siam_train::TrainConfig::preset("quick").unwrap().to_toml();
    // The seed preset draws pairs, where the batch size counts (P×K batches are P·K images).
    let pairs = siam_train::TrainConfig::preset("seed").unwrap().to_toml();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            base.replace("epochs = 2", "epochs = 2\nepochz = 3"),
            "epochz",
        ),
        (
            "wrong type",
            base.replace("epochs = 2", "epochs = \"two\""),
            "epochs",
        ),
        (
            "margin <= 0",
            base.replace("margin = 1.0", "margin = 0.0"),
            "margin",
        ),
        (
            "batch < 2",
            pairs.replace("batch-size = 64", "batch-size = 1"),
            "batch-size",
        ),
        (
            "the retired holdout-classes",
            base.replace(
                "test-fraction = 0.2",
                "test-fraction = 0.2\nholdout-classes = { count = 3 }",
            ),
            "data.class-split",
        ),
        (
            "a class split that leaves one training class",
            base.replace(
                "test-fraction = 0.2",
                "test-fraction = 0.2\nclass-split = { validation = { count = 2 }, test = { count = 7 } }",
            ),
            "1 for training",
        ),
    ];
    for (what, text, needle) in cases {
        assert!(
            text != base && text != pairs,
            "{what}: the edit did not apply"
        );
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, text).unwrap();
        let out = dir.path().join("run");
        let o = siam()
            .args(["train", "--config"])
            .arg(&p)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains(needle),
            "{what}: stderr lacks {needle:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(!out.exists(), "{what}: a run folder was created");
    }
}

/// Outputs that cannot be written: under a file, and on a full disk (a 64 KiB tmpfs, where the
/// test can mount one). Nothing half-written is left behind.
#[test]
fn unwritable_outputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    fails(
        siam()
            .args(["train", "--preset", "quick", "--out"])
            .arg(file.join("run")),
        1,
        "a-file",
    );
    fails(
        siam()
            .arg("embed")
            .arg(png_root())
            .arg("--out")
            .arg(file.join("e.safetensors"))
            .arg("--model")
            .arg(shipped()),
        1,
        "e.safetensors",
    );
    let mnt = dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipped: the full-disk case needs permission to mount a tmpfs");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let out = mnt.join("calibrated.safetensors");
    fails(
        siam()
            .args(["calibrate", "--data", "fixtures", "--model"])
            .arg(shipped())
            .arg("--out")
            .arg(&out),
        1,
        "calibrated.safetensors",
    );
    let left: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left on the full disk: {left:?}");
}

/// `siam config` prints every preset as TOML that parses back to the same config; a partial
/// file over a preset and `--set` overrides resolve the same way in `config` and `train`.
#[test]
fn config_prints_resolves_and_overrides() {
    for p in siam_train::config::PRESETS {
        let o = siam().args(["config", "--preset", p]).output().unwrap();
        assert!(
            o.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8(o.stdout).unwrap();
        let back = siam_train::TrainConfig::from_toml(&text, Path::new("stdout")).unwrap();
        assert_eq!(back, siam_train::TrainConfig::preset(p).unwrap(), "{p}");
    }
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("short.toml");
    std::fs::write(
        &partial,
        "epochs = 1\nsteps-per-epoch = 8\n[loss]\nmargin = 0.6\n",
    )
    .unwrap();
    let o = siam()
        .args(["config", "--preset", "quick", "--config"])
        .arg(&partial)
        .args([
            "--set",
            "loss.pos-margin=0.1",
            "--set",
            "validation.pairs=500",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c =
        siam_train::TrainConfig::from_toml(&String::from_utf8(o.stdout).unwrap(), Path::new("-"))
            .unwrap();
    let mut want = siam_train::TrainConfig::preset("quick").unwrap();
    want.epochs = 1;
    want.steps_per_epoch = 8;
    want.loss = siam_train::config::LossConfig::Contrastive {
        margin: 0.6,
        pos_margin: 0.1,
    };
    want.validation.pairs = 500;
    assert_eq!(c, want);

    // train records the same resolution in its run folder.
    let out = dir.path().join("run");
    let o = siam()
        .args(["train", "--preset", "quick", "--config"])
        .arg(&partial)
        .args([
            "--set",
            "loss.pos-margin=0.1",
            "--set",
            "validation.pairs=500",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut recorded = siam_train::TrainConfig::from_file(&out.join("config.toml")).unwrap();
    // The run folder's config also records the normalisation measured on the training split.
    assert!(recorded.data.mean.is_some() && recorded.data.std.is_some());
    (recorded.data.mean, recorded.data.std) = (None, None);
    assert_eq!(recorded, want);

    // Errors name the override or file and the key; nothing is trained.
    let bad = dir.path().join("bad-run");
    fails(
        siam()
            .args([
                "train",
                "--preset",
                "quick",
                "--set",
                "loss.margn=1",
                "--out",
            ])
            .arg(&bad),
        1,
        "--set loss.margn=1: loss.margn: unknown field",
    );
    fails(
        siam()
            .args(["train", "--preset", "quick", "--set", "epochs=0", "--out"])
            .arg(&bad),
        1,
        "epochs: must be at least 1",
    );
    fails(
        siam().args(["config", "--config"]).arg(&partial),
        1,
        "--preset NAME",
    );
    assert!(!bad.exists());
}

/// `siam lr-find` on a run's own config.toml: a table, the suggestion beside the config's rate,
/// the three files in a new folder; the same --json parses; pointing --out at the run folder
/// (or any folder with files) is refused, exit 1, and the folder is left as it was.
#[test]
fn lr_find_on_a_run_config_writes_a_new_folder_only() {
    let run = model().parent().unwrap();
    let cfg = run.join("config.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lr");
    let o = siam()
        .args(["lr-find", "--steps", "40", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("suggested lr") || text.contains("no suggestion"),
        "{text}"
    );
    assert!(
        text.contains("the config has 1.0e-3") || text.contains("no suggestion"),
        "{text}"
    );
    for f in ["lr-find.json", "lr-find.svg", "lr-find.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let o = siam()
        .args(["lr-find", "--steps", "20", "--json", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(dir.path().join("lr2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), 20);
    let before: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let o = siam()
        .args(["lr-find", "--steps", "20", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(run)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not empty"), "{err}");
    let after: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after);
    // diagnose --lr-find: the range test on the run's config, in the JSON and the report.
    let report = dir.path().join("report.html");
    let o = siam()
        .args([
            "diagnose",
            "--data",
            "fixtures",
            "--lr-find",
            "--json",
            "--max-images",
            "300",
            "--run",
        ])
        .arg(run)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lr_find"]["points"].as_array().unwrap().len(), 100);
    assert!(
        v["measurements"]["data_quality"]["images"]
            .as_u64()
            .unwrap()
            > 0
    );
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("fig-lr-find") && html.contains("Data quality"));
    // It needs a run folder: a usage error.
    let o = siam()
        .args(["diagnose", "--data", "fixtures", "--lr-find"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
