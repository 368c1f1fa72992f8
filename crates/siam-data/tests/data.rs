//! Integration tests of siam-data: IDX and folder reading with every corruption case,
//! sampler properties, augmentation against reference values, loader determinism.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use proptest::prelude::*;
use siam_data::augment::{AugmentConfig, Normalize, affine};
use siam_data::idx::{self, IdxSplit};
use siam_data::{
    Batch, BatchIndices, FolderOptions, ImageSet, ImageShape, Loader, LoaderConfig, SamplerConfig,
    Transform, load_folder, loader::materialize,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn small_set(per_class: &[usize], side: usize) -> ImageSet {
    let labels: Vec<u32> = per_class
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| std::iter::repeat_n(c as u32, n))
        .collect();
    let shape = ImageShape {
        channels: 1,
        height: side,
        width: side,
    };
    let px = (0..labels.len() * side * side)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let names = (0..per_class.len()).map(|c| format!("c{c}")).collect();
    ImageSet::new(px, labels, shape, names).unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v
}

// ---------------------------------------------------------------- IDX

#[test]
fn fixture_subset_is_stratified_fashion_mnist() {
    let dir = fixtures().join("fashion-mnist-subset");
    let train = idx::load_dir(&dir, IdxSplit::Train, None).unwrap();
    let test = idx::load_dir(&dir, IdxSplit::Test, None).unwrap();
    assert_eq!(train.class_counts(), vec![500; 10]);
    assert_eq!(test.class_counts(), vec![100; 10]);
    assert_eq!(
        train.shape(),
        ImageShape {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    assert_eq!(train.class_names()[0], "T-shirt/top");
    // Real images, not blanks: mean intensity of Fashion-MNIST is about 0.286.
    let mean =
        train.pixels().iter().map(|&p| p as f64).sum::<f64>() / (train.len() * 784) as f64 / 255.0;
    assert!((0.25..0.33).contains(&mean), "mean {mean}");
}

#[test]
fn idx_round_trip_raw_and_gz() {
    let tmp = tempfile::tempdir().unwrap();
    let set = small_set(&[3, 2, 4], 5);
    idx::write_dir(tmp.path(), IdxSplit::Test, &set).unwrap();
    let back = idx::load_dir(tmp.path(), IdxSplit::Test, Some(set.class_names().to_vec())).unwrap();
    assert_eq!(back.pixels(), set.pixels());
    assert_eq!(back.labels(), set.labels());
    // Raw (uncompressed) files with the dotted MNIST names read the same.
    let raw = tmp.path().join("raw");
    std::fs::create_dir(&raw).unwrap();
    idx::write_images(raw.join("train-images.idx3-ubyte"), &set).unwrap();
    idx::write_labels(raw.join("train-labels.idx1-ubyte"), &set).unwrap();
    let back = idx::load_dir(&raw, IdxSplit::Train, None).unwrap();
    assert_eq!(back.pixels(), set.pixels());
    assert_eq!(back.class_names(), &["0", "1", "2"]);
}

fn images_err(bytes: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad-images");
    write(&p, bytes);
    let e = idx::read_images(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad-images"),
        "error does not name the file: {e}"
    );
    e
}

#[test]
fn idx_corruptions_are_named() {
    let mut good = header(idx::IMAGES_MAGIC, &[2, 3, 3]);
    good.extend_from_slice(&[1; 18]);
    let e = images_err(&good[..20]);
    assert!(e.contains("truncated at byte 20"), "{e}");
    let e = images_err(&gz(&good[..25]));
    assert!(e.contains("truncated at byte 25"), "{e}");
    let e = images_err(&good[..10]);
    assert!(e.contains("truncated at byte 10"), "{e}");
    let mut m = good.clone();
    m[3] = 0x01;
    let e = images_err(&m);
    assert!(e.contains("magic 0x00000801, expected 0x00000803"), "{e}");
    let e = images_err(&header(idx::IMAGES_MAGIC, &[0, 28, 28]));
    assert!(e.contains("zero images"), "{e}");
    let e = images_err(&header(idx::IMAGES_MAGIC, &[5, 0, 28]));
    assert!(e.contains("empty"), "{e}");
    let mut extra = good.clone();
    extra.push(0);
    let e = images_err(&extra);
    assert!(e.contains("trailing data"), "{e}");
    // A corrupt gzip stream.
    let mut g = gz(&good);
    let n = g.len();
    g[n / 2] ^= 0xff;
    g[n / 2 + 1] ^= 0xff;
    images_err(&g);
    // Empty file.
    let e = images_err(&[]);
    assert!(e.contains("truncated at byte 0"), "{e}");
}

#[test]
fn idx_huge_declared_size_is_not_allocated() {
    // 4 billion images of 65535x65535 declared in a 16-byte file: must fail fast, not OOM.
    let e = images_err(&header(idx::IMAGES_MAGIC, &[u32::MAX, 65535, 65535]));
    assert!(e.contains("truncated") || e.contains("overflows"), "{e}");
    let e = images_err(&gz(&header(idx::IMAGES_MAGIC, &[u32::MAX, 65535, 65535])));
    assert!(e.contains("truncated") || e.contains("overflows"), "{e}");
}

#[test]
fn idx_label_mismatches() {
    let tmp = tempfile::tempdir().unwrap();
    let set = small_set(&[2, 2], 2);
    idx::write_images(tmp.path().join("train-images-idx3-ubyte"), &set).unwrap();
    // Three labels for four images.
    let mut l = header(idx::LABELS_MAGIC, &[3]);
    l.extend_from_slice(&[0, 1, 1]);
    write(&tmp.path().join("train-labels-idx1-ubyte"), &l);
    let e = idx::load_dir(tmp.path(), IdxSplit::Train, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 labels for 4 images"), "{e}");
    // Label out of range for the named classes.
    let mut l = header(idx::LABELS_MAGIC, &[4]);
    l.extend_from_slice(&[0, 1, 7, 1]);
    write(&tmp.path().join("train-labels-idx1-ubyte"), &l);
    let names = Some(vec!["a".to_string(), "b".to_string()]);
    let e = idx::load_dir(tmp.path(), IdxSplit::Train, names)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 7 at index 2 is out of range"), "{e}");
    assert!(e.contains("train-labels-idx1-ubyte"), "{e}");
    // Missing files.
    let e = idx::load_dir(tmp.path(), IdxSplit::Test, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("t10k-images-idx3-ubyte"), "{e}");
}

// ---------------------------------------------------------------- folders

#[test]
fn folder_fixture_loads_gray_and_rgb_resized() {
    let root = fixtures().join("fashion-mnist-png");
    let f = load_folder(&root, &FolderOptions::default()).unwrap();
    assert_eq!(f.set.num_classes(), 10);
    assert_eq!(f.set.len(), 40);
    assert_eq!(
        f.set.shape(),
        ImageShape {
            channels: 1,
            height: 28,
            width: 28
        }
    );
    assert_eq!(f.files.len(), 40);
    let opts = FolderOptions {
        color: siam_data::ColorMode::Rgb,
        size: Some((32, 24)),
        skip_bad: false,
    };
    let f = load_folder(&root, &opts).unwrap();
    assert_eq!(
        f.set.shape(),
        ImageShape {
            channels: 3,
            height: 32,
            width: 24
        }
    );
}

#[test]
fn folder_png_round_trip_matches_idx_pixels() {
    let tmp = tempfile::tempdir().unwrap();
    let set = small_set(&[2, 3], 6);
    for i in 0..set.len() {
        let d = tmp.path().join(&set.class_names()[set.label(i) as usize]);
        std::fs::create_dir_all(&d).unwrap();
        siam_data::folder::save_png(&set, i, d.join(format!("{i}.png"))).unwrap();
    }
    let f = load_folder(tmp.path(), &FolderOptions::default()).unwrap();
    assert_eq!(f.set.pixels(), set.pixels());
    assert_eq!(f.set.labels(), set.labels());
}

fn folder_with_bad_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let set = small_set(&[2, 2], 4);
    for i in 0..set.len() {
        let d = tmp.path().join(&set.class_names()[set.label(i) as usize]);
        std::fs::create_dir_all(&d).unwrap();
        siam_data::folder::save_png(&set, i, d.join(format!("{i}.png"))).unwrap();
    }
    let bad = tmp.path().join("c1").join(name);
    write(&bad, bytes);
    (tmp, bad)
}

#[test]
fn folder_bad_files_are_named_or_skipped() {
    for (name, bytes) in [
        ("empty.png", &b""[..]),
        ("corrupt.png", &b"\x89PNG\r\n\x1a\nnot really"[..]),
        ("fake.jpg", &b"hello"[..]),
    ] {
        let (tmp, bad) = folder_with_bad_file(name, bytes);
        let e = load_folder(tmp.path(), &FolderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bad.display().to_string()), "{e}");
        let opts = FolderOptions {
            skip_bad: true,
            ..Default::default()
        };
        let f = load_folder(tmp.path(), &opts).unwrap();
        assert_eq!(f.set.len(), 4);
        assert_eq!(f.skipped.len(), 1);
        assert_eq!(f.skipped[0].0, bad);
    }
    // Non-image files are ignored.
    let (tmp, _) = folder_with_bad_file("notes.txt", b"hello");
    assert_eq!(
        load_folder(tmp.path(), &FolderOptions::default())
            .unwrap()
            .set
            .len(),
        4
    );
}

#[test]
fn folder_structure_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load_folder(tmp.path(), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no class sub-folder"), "{e}");
    let (tmp, _) = folder_with_bad_file("x.txt", b"");
    std::fs::create_dir(tmp.path().join("empty-class")).unwrap();
    let e = load_folder(tmp.path(), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty-class") && e.contains("no .png"), "{e}");
    // Mixed sizes need a target size.
    let (tmp, _) = folder_with_bad_file("x.txt", b"");
    let big = small_set(&[1], 9);
    siam_data::folder::save_png(&big, 0, tmp.path().join("c0").join("big.png")).unwrap();
    let e = load_folder(tmp.path(), &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("big.png") && e.contains("9x9"), "{e}");
    let opts = FolderOptions {
        size: Some((4, 4)),
        ..Default::default()
    };
    assert_eq!(load_folder(tmp.path(), &opts).unwrap().set.len(), 5);
}

// ---------------------------------------------------------------- samplers

fn pair_props(per_class: Vec<usize>, batch: usize, frac: f64, seed: u64) {
    let set = small_set(&per_class, 1);
    let s = SamplerConfig::Pairs {
        positive_fraction: frac,
    }
    .build(&set, batch, seed)
    .unwrap();
    let BatchIndices::Pairs(p) = s.batch(3, 5) else {
        panic!("pairs")
    };
    assert_eq!(p.a.len(), batch);
    let npos = p.same.iter().filter(|&&v| v == 1.0).count();
    assert_eq!(npos, (batch as f64 * frac).round() as usize);
    for i in 0..batch {
        assert_ne!(p.a[i], p.b[i], "self-pair");
        let same = set.label(p.a[i]) == set.label(p.b[i]);
        assert_eq!(same, p.same[i] == 1.0, "same flag disagrees with labels");
    }
    assert_eq!(s.batch(3, 5), s.batch(3, 5), "not deterministic");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn pairs_have_exact_fraction_and_correct_flags(
        per_class in prop::collection::vec(2usize..6, 2..8),
        batch in 1usize..40,
        frac in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        pair_props(per_class, batch, frac, seed);
    }

    #[test]
    fn pairs_cover_every_class_in_an_epoch(
        per_class in prop::collection::vec(2usize..5, 2..12),
        seed in any::<u64>(),
    ) {
        let set = small_set(&per_class, 1);
        let k = per_class.len();
        let s = SamplerConfig::default().build(&set, 4, seed).unwrap();
        let mut seen = vec![false; k];
        // k batches of 2 positives each visit every class through the epoch permutation.
        for b in 0..k as u64 {
            let BatchIndices::Pairs(p) = s.batch(0, b) else { panic!() };
            for (i, &a) in p.a.iter().enumerate() {
                if p.same[i] == 1.0 { seen[set.label(a) as usize] = true; }
            }
        }
        prop_assert!(seen.iter().all(|&v| v));
    }

    #[test]
    fn triplets_and_pk_are_valid(
        per_class in prop::collection::vec(2usize..6, 3..8),
        seed in any::<u64>(),
        k in 2usize..8,
    ) {
        let set = small_set(&per_class, 1);
        let t = SamplerConfig::Triplets.build(&set, 16, seed).unwrap();
        let BatchIndices::Triplets(tr) = t.batch(1, 2) else { panic!() };
        for i in 0..16 {
            prop_assert_ne!(tr.anchor[i], tr.positive[i]);
            prop_assert_eq!(set.label(tr.anchor[i]), set.label(tr.positive[i]));
            prop_assert_ne!(set.label(tr.anchor[i]), set.label(tr.negative[i]));
        }
        let pk = SamplerConfig::Pk { p: 3, k }.build(&set, 0, seed).unwrap();
        let BatchIndices::Classes(c) = pk.batch(0, 1) else { panic!() };
        prop_assert_eq!(c.indices.len(), 3 * k);
        let mut classes: Vec<u32> = c.labels.clone();
        classes.dedup();
        prop_assert_eq!(classes.len(), 3, "P distinct classes");
        for (j, &i) in c.indices.iter().enumerate() {
            prop_assert_eq!(set.label(i), c.labels[j]);
        }
        for g in c.indices.chunks(k) {
            let mut u = g.to_vec(); u.sort_unstable(); u.dedup();
            prop_assert!(u.len() >= 2, "at least two distinct images per class");
        }
    }
}

#[test]
fn samplers_explain_impossible_requests() {
    let singles = small_set(&[1, 1, 1], 1);
    let e = SamplerConfig::default()
        .build(&singles, 8, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("at least two images") && e.contains("'c0'"),
        "{e}"
    );
    let one_class = small_set(&[5], 1);
    let e = SamplerConfig::default()
        .build(&one_class, 8, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("two classes"), "{e}");
    let e = SamplerConfig::Pk { p: 4, k: 2 }
        .build(&small_set(&[3, 3, 1], 1), 0, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("P=4") && e.contains("has 2"), "{e}");
    assert!(SamplerConfig::Triplets.build(&singles, 4, 0).is_err());
    // All-positive pairs from a single class are fine.
    assert!(
        SamplerConfig::Pairs {
            positive_fraction: 1.0
        }
        .build(&one_class, 8, 0)
        .is_ok()
    );
}

// ---------------------------------------------------------------- augmentation

#[test]
fn affine_matches_scipy() {
    // Reference: scipy 1.17.1, order-1 (bilinear) resampling with zero fill outside:
    //   C,H,W = 2,5,4; img = np.sin(np.arange(C*H*W)*0.37).reshape(C,H,W)
    //   t = deg2rad(30); s = 1.2; (tx, ty) = (0.5, -0.7)
    //   M = (1/s)*[[cos t, sin t], [-sin t, cos t]]; ctr = ((H-1)/2, (W-1)/2)
    //   off = ctr - M @ (ctr + (ty, tx))
    //   ndimage.affine_transform(img[k], M, offset=off, order=1, mode='grid-constant', cval=0)
    let expected = [
        0.389722, 0.749982, 0.703235, -0.045494, 0.943548, 0.555116, -0.128647, -0.662054,
        0.342803, -0.085209, -0.619968, -0.869038, -0.093865, -0.752761, -0.779846, -0.212299, 0.,
        -0.417994, -0.258353, 0.026491, 0.809839, 0.38564, -0.256548, -0.674687, 0.478653,
        -0.217102, -0.782657, -0.738612, -0.283493, -0.849772, -0.618617, -0.088385, -0.261013,
        -0.675093, -0.126221, 0.553734, 0., 0.03467, 0.69833, 0.578214,
    ];
    let shape = ImageShape {
        channels: 2,
        height: 5,
        width: 4,
    };
    let src: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut dst = vec![0.0; 40];
    affine(&src, &mut dst, shape, 30.0, 1.2, 0.5, -0.7);
    for (i, (a, e)) in dst.iter().zip(expected).enumerate() {
        assert!((a - e).abs() < 1e-5, "pixel {i}: {a} vs {e}");
    }
}

#[test]
fn rotation_by_90_moves_content_counter_clockwise() {
    let shape = ImageShape {
        channels: 1,
        height: 3,
        width: 3,
    };
    let mut src = vec![0.0; 9];
    src[2 * 3 + 1] = 1.0; // bottom middle
    let mut dst = vec![0.0; 9];
    siam_data::augment::rotate(&src, &mut dst, shape, 90.0);
    assert!((dst[3 + 2] - 1.0).abs() < 1e-6, "{dst:?}"); // now right middle
}

// ---------------------------------------------------------------- loader

fn fixture_train() -> ImageSet {
    idx::load_dir(
        fixtures().join("fashion-mnist-subset"),
        IdxSplit::Train,
        None,
    )
    .unwrap()
}

fn augmenting(seed: u64) -> Transform {
    Transform {
        augment: AugmentConfig {
            hflip: true,
            rotate_degrees: 10.0,
            scale_min: 0.9,
            scale_max: 1.1,
            translate: 0.1,
            crop_padding: 2,
            ..AugmentConfig::none()
        },
        normalize: Some(Normalize {
            mean: vec![0.286],
            std: vec![0.353],
        }),
        seed,
        second_view: None,
        second_view_fraction: 1.0,
    }
}

fn collect(threads: usize, cfg: SamplerConfig, n: usize, start: (u64, u64)) -> Vec<Vec<f32>> {
    let set = fixture_train();
    let sampler = cfg.build(&set, 16, 9).unwrap();
    let loader = Loader::spawn(
        set,
        sampler,
        augmenting(5),
        LoaderConfig {
            batches_per_epoch: 3,
            threads: Some(threads),
            start,
            ..Default::default()
        },
    )
    .unwrap();
    loader
        .take(n)
        .map(|b| match b.unwrap().batch {
            Batch::Pairs { a, b, same } => {
                [a.flatten_all().unwrap(), b.flatten_all().unwrap(), same]
                    .iter()
                    .flat_map(|t| t.to_vec1::<f32>().unwrap())
                    .collect()
            }
            Batch::Triplets { anchor, .. } => anchor.flatten_all().unwrap().to_vec1().unwrap(),
            Batch::Classes { images, .. } => images.flatten_all().unwrap().to_vec1().unwrap(),
        })
        .collect()
}

#[test]
fn loader_is_deterministic_across_thread_counts_and_resumes() {
    let one = collect(1, SamplerConfig::default(), 5, (0, 0));
    let two = collect(2, SamplerConfig::default(), 5, (0, 0));
    assert_eq!(one, two);
    // Batches differ from each other, and augmentation really changes pixels.
    assert_ne!(one[0], one[1]);
    // Resuming at (epoch 1, batch 1) gives the 5th batch of the uninterrupted stream.
    let resumed = collect(2, SamplerConfig::default(), 1, (1, 1));
    assert_eq!(resumed[0], one[4]);
    let pk = collect(1, SamplerConfig::Pk { p: 4, k: 4 }, 2, (0, 0));
    assert_eq!(pk, collect(2, SamplerConfig::Pk { p: 4, k: 4 }, 2, (0, 0)));
    assert_eq!(pk[0].len(), 16 * 784);
}

#[test]
fn loader_batches_have_the_right_shapes_and_stop_after_epochs() {
    let set = fixture_train();
    let sampler = SamplerConfig::Triplets.build(&set, 8, 1).unwrap();
    let loader = Loader::spawn(
        set,
        sampler,
        Transform::eval(None),
        LoaderConfig {
            batches_per_epoch: 2,
            epochs: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let batches: Vec<_> = loader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 4);
    assert_eq!((batches[3].epoch, batches[3].index), (1, 1));
    let Batch::Triplets {
        anchor, negative, ..
    } = &batches[0].batch
    else {
        panic!()
    };
    assert_eq!(anchor.dims(), &[8, 1, 28, 28]);
    assert_eq!(negative.device().location(), Device::Cpu.location());
    // Without augmentation or normalisation the tensor is the pixels / 255.
    let BatchIndices::Triplets(t) = &batches[0].indices else {
        panic!()
    };
    let set = fixture_train();
    let expected = set.to_tensor(&t.anchor, &Device::Cpu).unwrap();
    let diff = (anchor - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn dropping_a_loader_mid_stream_stops_its_thread() {
    let set = fixture_train();
    let sampler = SamplerConfig::default().build(&set, 64, 1).unwrap();
    let mut loader = Loader::spawn(
        set,
        sampler,
        augmenting(1),
        LoaderConfig {
            prefetch: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(loader.next().is_some());
    drop(loader); // must return, not hang
}

/// A transform with a second view gives P×K batches a second tensor of the same images: a
/// function of (seed, epoch, slot) like the first view, drawn from its own stream, so it
/// differs from the first view and from another epoch's.
#[test]
fn second_views_are_deterministic_and_differ_from_the_first() {
    let set = fixture_train();
    let sampler = SamplerConfig::Pk { p: 3, k: 2 }.build(&set, 6, 1).unwrap();
    let mut t = augmenting(5);
    t.second_view = Some(t.augment.strong_view());
    let batch = |epoch: u64| {
        let idx = sampler.batch(epoch, 0);
        match materialize(&set, &idx, &t, epoch, 0, 6, &Device::Cpu).unwrap() {
            Batch::Classes { images, views, .. } => (
                images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                views
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            ),
            _ => unreachable!("pk batches"),
        }
    };
    let (a, v) = batch(0);
    assert_eq!(batch(0), (a.clone(), v.clone()));
    assert_eq!(a.len(), v.len());
    assert_ne!(a, v);
    assert_ne!(batch(1).1, v);
    // A fraction of the views: the same views of the chosen rows (a view keeps its slot), and
    // only those rows.
    let mut part = t.clone();
    part.second_view_fraction = 0.5;
    let idx = sampler.batch(0, 0);
    match materialize(&set, &idx, &part, 0, 0, 6, &Device::Cpu).unwrap() {
        Batch::Classes {
            images,
            labels,
            views,
            view_rows,
        } => {
            assert_eq!(images.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
            let labels: Vec<u32> = labels.to_vec1().unwrap();
            assert_eq!(view_rows, siam_data::loader::second_view_rows(&labels, 0.5));
            assert_eq!(view_rows.len(), 3, "one of each class's two images");
            let views = views.unwrap();
            let per = v.len() / 6;
            assert_eq!(views.dim(0).unwrap(), 3);
            let got = views.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (j, &r) in view_rows.iter().enumerate() {
                assert_eq!(
                    got[j * per..(j + 1) * per],
                    v[r * per..(r + 1) * per],
                    "row {r}"
                );
            }
        }
        _ => unreachable!("pk batches"),
    }
    part.second_view_fraction = 0.0;
    let loader = Loader::spawn(
        set.clone(),
        SamplerConfig::Pk { p: 3, k: 2 }.build(&set, 6, 1).unwrap(),
        part,
        LoaderConfig::default(),
    );
    let err = loader
        .err()
        .expect("a fraction of 0 is refused")
        .to_string();
    assert!(err.contains("fraction"), "{err}");
    let plain = augmenting(5);
    let idx = sampler.batch(0, 0);
    match materialize(&set, &idx, &plain, 0, 0, 6, &Device::Cpu).unwrap() {
        Batch::Classes { images, views, .. } => {
            assert!(views.is_none());
            assert_eq!(images.flatten_all().unwrap().to_vec1::<f32>().unwrap(), a);
        }
        _ => unreachable!("pk batches"),
    }
}
