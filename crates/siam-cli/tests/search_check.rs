//! `siam search` runs the model's input check on its queries: a query unlike the training
//! data is still searched, with a warning on stderr and in the JSON Lines.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

#[test]
fn search_warns_on_queries_unlike_the_training_data() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([0u8]))
        .save(&blank)
        .unwrap();
    let familiar = fixtures().join("fashion-mnist-png/bag/00.png");
    let o = Command::cargo_bin("siam")
        .unwrap()
        .env_remove("SIAM_MODEL")
        .args(["search", "--json", "-k", "2", "--gallery"])
        .arg(fixtures().join("fashion-mnist-png"))
        .arg(&familiar)
        .arg(&blank)
        .arg("-m")
        .arg(fixtures().join("models/fashion-mnist.safetensors"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}: unlike the training data",
            blank.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("bag/00.png"),
        "a training-like query gets no warning: {err}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0]["warnings"].as_array().unwrap().len(),
        0,
        "{}",
        lines[0]
    );
    let w = lines[1]["warnings"].as_array().unwrap();
    assert!(!w.is_empty(), "{}", lines[1]);
    // Both queries are still searched.
    assert!(
        lines
            .iter()
            .all(|l| l["results"].as_array().unwrap().len() == 2)
    );
}
