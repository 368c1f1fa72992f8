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

/// Valid inputs for a target, to start fuzzing from: a tiny IDX images and labels file (each
/// alone, and joined as the `idx` harness splits them), a tiny model file, the presets.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "idx" => {
            let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 3];
            images.extend((0u8..18).map(|v| v * 14));
            let labels = vec![0, 0, 8, 1, 0, 0, 0, 2, 1, 0];
            // The harness splits after byte 0 at byte0 · len / 256 of the rest.
            let split = (images.len() * 256).div_ceil(images.len() + labels.len()) as u8;
            let mut both = vec![split];
            both.extend_from_slice(&images);
            both.extend_from_slice(&labels);
            let gz = |b: &[u8]| {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(b).and_then(|_| e.finish()).unwrap_or_default()
            };
            let (gi, gl) = (gz(&images), gz(&labels));
            let mut both_gz = vec![((gi.len() * 256).div_ceil(gi.len() + gl.len())) as u8];
            both_gz.extend_from_slice(&gi);
            both_gz.extend_from_slice(&gl);
            vec![
                ("images".into(), images),
                ("labels".into(), labels),
                ("pair".into(), both),
                ("pair-gz".into(), both_gz),
            ]
        }
        "model-file" => {
            let cfg = siam_model::ModelConfig {
                encoder: siam_model::EncoderConfig::Convnet {
                    channels: vec![2],
                    hidden: 0,
                    dropout: 0.0,
                    embedding_dim: 4,
                    pooling: siam_model::Pooling::GlobalAverage,
                },
                input: siam_model::InputSpec {
                    channels: 1,
                    height: 8,
                    width: 8,
                    mean: vec![0.5],
                    std: vec![0.25],
                },
                normalize: true,
                distance: siam_model::Distance::Euclidean,
                pair_head: false,
                test_time_flip: false,
            };
            siam_model::SiameseModel::new(&cfg, 1, &candle_core::Device::Cpu)
                .and_then(|m| m.to_bytes())
                .map(|b| vec![("tiny-convnet.safetensors".to_string(), b)])
                .unwrap_or_default()
        }
        "config" => crate::config::PRESETS
            .iter()
            .filter_map(|p| {
                crate::TrainConfig::preset(p)
                    .ok()
                    .map(|c| (format!("{p}.toml"), c.to_toml().into_bytes()))
            })
            .collect(),
        _ => Vec::new(),
    }
}
