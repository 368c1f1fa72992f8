//! Fuzzing harnesses for every parser that reads user input: IDX files, model files and
//! configs. The cargo-fuzz targets in `xtask/fuzz` call these, and the regression test runs
//! every saved input (`xtask/fuzz/regressions/`) through them under `cargo test`. An `Err` is
//! the expected answer to bad input; a panic, an abort or a blow-up is a bug.

use std::path::Path;

/// IDX images and labels (raw or gzip) from the bytes, then both halves assembled into a set:
/// the first byte chooses where the bytes split into an images and a labels file.
pub fn idx(data: &[u8]) {
    let _ = siam_data::idx::images_from_bytes(data, "fuzz-images");
    let _ = siam_data::idx::labels_from_bytes(data, "fuzz-labels");
    if let Some((&first, rest)) = data.split_first() {
        let cut = usize::from(first) * rest.len() / 256;
        let (a, b) = rest.split_at(cut);
        if let (Ok(images), Ok(labels)) = (
            siam_data::idx::images_from_bytes(a, "fuzz-images"),
            siam_data::idx::labels_from_bytes(b, "fuzz-labels"),
        ) {
            let _ = siam_data::idx::assemble(
                images,
                labels,
                None,
                Path::new("fuzz-images"),
                Path::new("fuzz-labels"),
            );
        }
    }
}

/// A model file from the bytes, with every check `siam compare` makes.
pub fn model_file(data: &[u8]) {
    let _ = siam_model::SiameseModel::from_bytes(data, "fuzz-model", &candle_core::Device::Cpu);
}

/// A training config from the bytes (as UTF-8 TOML), parsed and validated.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::TrainConfig::from_toml(text, Path::new("fuzz.toml"));
    }
}

/// The harness for a target name (`idx`, `model-file`, `config`).
pub fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "idx" => Some(idx),
        "model-file" => Some(model_file),
        "config" => Some(config),
        _ => None,
    }
}

/// The fuzz targets, by the names `cargo xtask fuzz` takes.
pub const TARGETS: [&str; 3] = ["idx", "model-file", "config"];
