//! Galleries: exact search against candle's pairwise distances, the file format, and every
//! rejection naming the file.

use candle_core::{Device, Tensor};
use siam_model::{
    Distance, EncoderConfig, Gallery, GalleryIdentity, InputSpec, ModelConfig, SiameseModel,
};

/// Deterministic pseudo-random values in [-1, 1) (an LCG; no RNG crate needed here).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn identity(distance: Distance, dim: usize) -> GalleryIdentity {
    GalleryIdentity {
        fingerprint: "0123456789abcdef".into(),
        model: "m.safetensors".into(),
        distance,
        embedding_dim: dim,
    }
}

fn gallery(distance: Distance, n: usize, dim: usize) -> Gallery {
    let names = (0..n).map(|i| format!("img/{i:05}.png")).collect();
    Gallery::from_parts(identity(distance, dim), names, values(n * dim, 7)).unwrap()
}

/// The reference ranking: candle's pairwise distance, sorted stably by (distance, row).
fn brute_force(g: &Gallery, q: &[f32], k: usize) -> Vec<Vec<(usize, f32)>> {
    let d = g.dim();
    let qt = Tensor::from_slice(q, (q.len() / d, d), &Device::Cpu).unwrap();
    let gt = Tensor::from_slice(g.embeddings(), (g.len(), d), &Device::Cpu).unwrap();
    let dist: Vec<Vec<f32>> = g
        .identity()
        .distance
        .pairwise(&qt, &gt)
        .unwrap()
        .to_vec2()
        .unwrap();
    dist.into_iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&i, &j| row[i].total_cmp(&row[j]).then(i.cmp(&j)));
            order.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect()
}

#[test]
fn search_equals_brute_force_for_every_distance_across_blocks() {
    // More rows than one gallery block (8,192) and more queries than one query block (512).
    let (n, m, dim, k) = (9000, 520, 8, 7);
    for distance in [
        Distance::Euclidean,
        Distance::SquaredEuclidean,
        Distance::Cosine,
    ] {
        let g = gallery(distance, n, dim);
        let q = values(m * dim, 99);
        let got = g.search(&q, k).unwrap();
        let want = brute_force(&g, &q, k);
        assert_eq!(got.len(), m);
        let mut same_rank = 0;
        for (hits, reference) in got.iter().zip(&want) {
            assert_eq!(hits.len(), k);
            for (h, &(i, dist)) in hits.iter().zip(reference) {
                assert!(
                    (h.distance - dist).abs() < 1e-4,
                    "{distance:?}: {} vs {dist}",
                    h.distance
                );
                same_rank += usize::from(h.index == i);
            }
            // Nearest first.
            assert!(
                hits.windows(2)
                    .all(|w| w[0].distance <= w[1].distance + 1e-6)
            );
        }
        // Rounding may swap two nearly equal distances; nothing more.
        assert!(
            same_rank * 100 >= m * k * 99,
            "{distance:?}: {same_rank} of {}",
            m * k
        );
    }
}

#[test]
fn k_larger_than_the_gallery_and_empty_galleries() {
    let g = gallery(Distance::Euclidean, 3, 4);
    let hits = g.search(&values(4, 1), 10).unwrap();
    assert_eq!(hits[0].len(), 3);
    let empty = Gallery::new(identity(Distance::Euclidean, 4));
    assert!(
        empty
            .search(&values(8, 1), 5)
            .unwrap()
            .iter()
            .all(Vec::is_empty)
    );
    let err = g.search(&values(5, 1), 1).unwrap_err().to_string();
    assert!(err.contains("dimension 4"), "{err}");
}

#[test]
fn save_load_round_trip_and_any_safetensors_reader_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.safetensors");
    let g = gallery(Distance::Cosine, 50, 6);
    g.save(&p).unwrap();
    let back = Gallery::load(&p).unwrap();
    assert_eq!(back.identity(), g.identity());
    assert_eq!(back.items(), g.items());
    assert_eq!(back.embeddings(), g.embeddings());
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("embeddings").unwrap();
    assert_eq!(t.shape(), [50, 6]);
    let first = f32::from_le_bytes(t.data()[..4].try_into().unwrap());
    assert_eq!(first, g.embeddings()[0]);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let files: Vec<String> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["files"]).unwrap();
    assert_eq!(files, g.items());
}

#[test]
fn add_appends_and_refuses_duplicates_and_bad_shapes() {
    let mut g = gallery(Distance::Euclidean, 2, 3);
    g.add(vec!["new".into()], &[0.5, 0.5, 0.5]).unwrap();
    assert_eq!(g.len(), 3);
    assert!(g.contains("new"));
    let hits = g.search(&[0.5, 0.5, 0.5], 1).unwrap();
    assert_eq!(g.item(hits[0][0].index), "new");
    assert!(hits[0][0].distance < 1e-3);
    let err = g
        .add(vec!["new".into()], &[0.0; 3])
        .unwrap_err()
        .to_string();
    assert!(err.contains("new is already in the gallery"), "{err}");
    let err = g.add(vec!["x".into()], &[0.0; 2]).unwrap_err().to_string();
    assert!(err.contains("1 names but 2 values"), "{err}");
    let err = g
        .add(vec!["y".into()], &[f32::NAN, 0.0, 0.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("embedding of y is not finite"), "{err}");
    assert_eq!(g.len(), 3, "a refused add adds nothing");
}

#[test]
fn bad_gallery_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.safetensors");
    gallery(Distance::Euclidean, 4, 3).save(&p).unwrap();
    let good = std::fs::read(&p).unwrap();
    let load_err = |bytes: &[u8]| {
        let q = dir.path().join("bad.safetensors");
        std::fs::write(&q, bytes).unwrap();
        let e = Gallery::load(&q).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
        e
    };
    assert!(load_err(&good[..good.len() - 5]).contains("truncated"));
    assert!(load_err(&good[..4]).contains("not a safetensors file"));
    assert!(load_err(b"\xff\xff\xff\xff\xff\xff\xff\x7fxx").contains("not a safetensors file"));
    // Another safetensors file: a model, not a gallery.
    let model = SiameseModel::new(&config(), 1, &Device::Cpu).unwrap();
    let e = load_err(&model.to_bytes().unwrap());
    assert!(e.contains("not a gallery written by `siam embed`"), "{e}");
    // Metadata that lists fewer files than rows.
    let text = String::from_utf8_lossy(&good).into_owned();
    let fewer = text
        .replacen("\\\"img/00003.png\\\"", "", 1)
        .replacen(",]", "]", 1);
    assert_ne!(fewer, text);
    let e = load_err(fewer.as_bytes());
    assert!(
        e.contains("shape") || e.contains("not a safetensors file"),
        "{e}"
    );
    let e = load_err(
        text.replacen("siam-gallery/1", "siam-gallery/9", 1)
            .as_bytes(),
    );
    assert!(e.contains("gallery format `siam-gallery/9`"), "{e}");
}

fn config() -> ModelConfig {
    ModelConfig {
        encoder: EncoderConfig::SeedCnn { embedding_dim: 8 },
        input: InputSpec::fashion_mnist(),
        normalize: true,
        distance: Distance::Euclidean,
        pair_head: false,
        test_time_flip: false,
    }
}

#[test]
fn the_fingerprint_tells_models_apart_and_the_gallery_names_both() {
    let a = SiameseModel::new(&config(), 1, &Device::Cpu).unwrap();
    let b = SiameseModel::new(&config(), 2, &Device::Cpu).unwrap();
    let a2 = SiameseModel::from_bytes(&a.to_bytes().unwrap(), "copy", &Device::Cpu).unwrap();
    assert_eq!(a.fingerprint().unwrap(), a2.fingerprint().unwrap());
    assert_ne!(a.fingerprint().unwrap(), b.fingerprint().unwrap());
    let g = Gallery::for_model(&a, "a.safetensors").unwrap();
    g.check_model(&a2, "copy.safetensors").unwrap();
    let e = g.check_model(&b, "b.safetensors").unwrap_err().to_string();
    assert!(
        e.contains("a.safetensors") && e.contains("b.safetensors"),
        "{e}"
    );
    assert!(e.contains(&b.fingerprint().unwrap()), "{e}");
}
