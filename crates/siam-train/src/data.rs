//! Resolves a config's data source into train, validation and test sets.
//!
//! Sources: `fixtures` (the Fashion-MNIST subset embedded in this crate), `fashion-mnist` and
//! `mnist` (looked up where `cargo xtask download` puts them), an IDX directory, an image
//! folder `root/<class>/*.png`, or a pair list (a CSV/TSV or LFW file, for the `pair-list`
//! sampler: its images split by image, its pairs kept).

use std::path::{Path, PathBuf};

use siam_data::idx::{self, FASHION_MNIST_CLASSES, IdxSplit, MNIST_CLASSES};
use siam_data::{FolderOptions, ImageSet, split};

use crate::config::DataConfig;
use crate::error::{Result, TrainError};

const FIX_TRAIN_IMAGES: &[u8] =
    include_bytes!("../../../fixtures/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const FIX_TRAIN_LABELS: &[u8] =
    include_bytes!("../../../fixtures/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const FIX_TEST_IMAGES: &[u8] =
    include_bytes!("../../../fixtures/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const FIX_TEST_LABELS: &[u8] =
    include_bytes!("../../../fixtures/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

/// Train, validation and test sets of one run.
#[derive(Debug, Clone)]
pub struct Datasets {
    /// What was loaded, for logs.
    pub description: String,
    /// Training images.
    pub train: ImageSet,
    /// Validation images (threshold calibration, model selection).
    pub val: ImageSet,
    /// Test images (the final report).
    pub test: ImageSet,
    /// With a class split: which classes each role has (labels).
    pub roles: Option<split::ClassRoles>,
    /// With a pair list as the source: the listed pairs of each split.
    pub pairs: Option<ListedPairs>,
}

/// The listed pairs of a pair-list run, split by image ([`siam_data::pair_list::split_by_image`]):
/// indices into the matching [`Datasets`] set. The sets' classes are the connected components
/// of the `same` pairs ([`siam_data::pair_list::PairList::same_components`]).
#[derive(Debug, Clone)]
pub struct ListedPairs {
    /// The list.
    pub list: PathBuf,
    /// Training pairs (the pair-list sampler draws from them).
    pub train: siam_data::PairIndices,
    /// Validation pairs (model selection, the threshold).
    pub val: siam_data::PairIndices,
    /// Test pairs (the final report).
    pub test: siam_data::PairIndices,
    /// Pairs across two parts, used by none.
    pub dropped: usize,
}

/// True when `source` names a pair list (a file, not a folder or a known name).
pub fn is_pair_list(source: &str) -> bool {
    !matches!(source, "fixtures" | "fashion-mnist" | "mnist") && Path::new(source).is_file()
}

/// Reads every image of `list` once, in [`siam_data::pair_list::PairList::images`] order,
/// labelled by its `same` component.
pub fn list_images(
    list: &siam_data::pair_list::PairList,
    color: siam_data::ColorMode,
    size: Option<[usize; 2]>,
) -> Result<ImageSet> {
    let (images, _) = list.images();
    let labels = list.same_components();
    let groups = labels.iter().max().map_or(0, |&m| m as usize + 1);
    let names = (0..groups).map(|g| format!("same-group-{g}")).collect();
    let opts = FolderOptions {
        color,
        size: size.map(|[h, w]| (h, w)),
        skip_bad: false,
    };
    Ok(siam_data::folder::load_files(
        &images, &labels, names, &opts, &list.path,
    )?)
}

/// A pair-list source: its images split by image into training, validation and test, with
/// the listed pairs of each.
fn load_pair_list(cfg: &DataConfig, seed: u64) -> Result<Datasets> {
    let path = Path::new(&cfg.source);
    let list = siam_data::pair_list::read_pair_list(path)?;
    for (key, f) in [
        ("val-fraction", cfg.val_fraction),
        ("test-fraction", cfg.test_fraction),
    ] {
        if f <= 0.0 {
            return Err(TrainError::Config(format!(
                "data.{key} = {f}: a pair-list run needs validation and test pairs (for example 0.2)"
            )));
        }
    }
    let parts =
        siam_data::pair_list::split_by_image(&list, cfg.val_fraction, cfg.test_fraction, seed)?;
    let all = list_images(&list, cfg.color, cfg.size)?;
    let (_, idx) = list.images();
    let verdicts = list.verdicts()?;
    // Each part's images in first-appearance order, and its pairs in their indices.
    let part = |ps: &[usize]| -> Result<(ImageSet, siam_data::PairIndices)> {
        let mut local = std::collections::HashMap::new();
        let mut images = Vec::new();
        let mut id = |g: usize| {
            *local.entry(g).or_insert_with(|| {
                images.push(g);
                images.len() - 1
            })
        };
        let mut pairs = siam_data::PairIndices {
            a: Vec::with_capacity(ps.len()),
            b: Vec::with_capacity(ps.len()),
            same: Vec::with_capacity(ps.len()),
        };
        for &p in ps {
            let (a, b) = idx[p];
            pairs.a.push(id(a));
            pairs.b.push(id(b));
            pairs.same.push(f32::from(u8::from(verdicts[p])));
        }
        Ok((all.subset(&images)?, pairs))
    };
    let (train, tp) = part(&parts.train)?;
    let (val, vp) = part(&parts.val)?;
    let (test, sp) = part(&parts.test)?;
    let description = format!(
        "pair list {}: {} pairs of {} images; split by image into {} training, {} validation and {} test pairs ({} across parts dropped)",
        path.display(),
        list.len(),
        all.len(),
        tp.a.len(),
        vp.a.len(),
        sp.a.len(),
        parts.dropped.len()
    );
    Ok(Datasets {
        description,
        train,
        val,
        test,
        roles: None,
        pairs: Some(ListedPairs {
            list: path.to_path_buf(),
            train: tp,
            val: vp,
            test: sp,
            dropped: parts.dropped.len(),
        }),
    })
}

/// The folder datasets are downloaded to: `$SIAM_DATA_DIR`, else `./data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("SIAM_DATA_DIR").map_or_else(|| PathBuf::from("data"), PathBuf::from)
}

/// Where Debian's `dataset-fashion-mnist` package puts the files.
pub const SYSTEM_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Finds a known dataset by name: under [`data_dir`], or (Fashion-MNIST) the system copy.
pub fn find_known(name: &str) -> Option<PathBuf> {
    let mut candidates = vec![data_dir().join(name)];
    if name == "fashion-mnist" {
        candidates.push(PathBuf::from(SYSTEM_FASHION_MNIST));
    }
    candidates
        .into_iter()
        .find(|d| idx::has_split(d, IdxSplit::Train))
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The embedded fixture subset: (train, test).
pub fn fixtures() -> Result<(ImageSet, ImageSet)> {
    let n = Some(names(&FASHION_MNIST_CLASSES));
    let part = |imgs: &[u8], labels: &[u8], p: &str| -> Result<ImageSet> {
        let ip = PathBuf::from(format!("<embedded>/{p}-images-idx3-ubyte.gz"));
        let lp = PathBuf::from(format!("<embedded>/{p}-labels-idx1-ubyte.gz"));
        Ok(idx::assemble(
            idx::images_from_bytes(imgs, &ip)?,
            idx::labels_from_bytes(labels, &lp)?,
            n.clone(),
            &ip,
            &lp,
        )?)
    };
    Ok((
        part(FIX_TRAIN_IMAGES, FIX_TRAIN_LABELS, "train")?,
        part(FIX_TEST_IMAGES, FIX_TEST_LABELS, "t10k")?,
    ))
}

/// Loads a source into (all training images, test images if the source has a test split).
pub fn load_source(cfg: &DataConfig) -> Result<(String, ImageSet, Option<ImageSet>)> {
    let src = cfg.source.as_str();
    match src {
        "fixtures" => {
            let (tr, te) = fixtures()?;
            Ok(("embedded Fashion-MNIST fixture subset".into(), tr, Some(te)))
        }
        "fashion-mnist" | "mnist" => {
            let dir = find_known(src).ok_or_else(|| {
                TrainError::Config(format!(
                    "data.source: {src} is not downloaded (looked in {}); run `cargo xtask download {src}`{}",
                    data_dir().join(src).display(),
                    if src == "fashion-mnist" { " or `apt-get install dataset-fashion-mnist`" } else { "" }
                ))
            })?;
            let n = names(if src == "mnist" {
                &MNIST_CLASSES
            } else {
                &FASHION_MNIST_CLASSES
            });
            let tr = idx::load_dir(&dir, IdxSplit::Train, Some(n.clone()))?;
            let te = idx::load_dir(&dir, IdxSplit::Test, Some(n))?;
            Ok((format!("{src} from {}", dir.display()), tr, Some(te)))
        }
        path => {
            let p = Path::new(path);
            if !p.exists() {
                return Err(TrainError::Config(format!(
                    "data.source: {path} does not exist (expected fixtures, fashion-mnist, mnist, an IDX directory or an image folder)"
                )));
            }
            if p.is_file() {
                return Err(TrainError::Config(format!(
                    "{path}: a file, not a dataset folder; a pair list is given with `--pairs {path}` (eval, calibrate, compare) or trained on with `[sampler] kind = \"pair-list\"`"
                )));
            }
            if idx::has_split(p, IdxSplit::Train) {
                let tr = idx::load_dir(p, IdxSplit::Train, None)?;
                let te = if idx::has_split(p, IdxSplit::Test) {
                    Some(idx::load_dir(
                        p,
                        IdxSplit::Test,
                        Some(tr.class_names().to_vec()),
                    )?)
                } else {
                    None
                };
                Ok((format!("IDX directory {path}"), tr, te))
            } else {
                let opts = FolderOptions {
                    color: cfg.color,
                    size: cfg.size.map(|[h, w]| (h, w)),
                    skip_bad: false,
                };
                let f = siam_data::load_folder(p, &opts)?;
                Ok((format!("image folder {path}"), f.set, None))
            }
        }
    }
}

/// Loads and splits the data of a run.
pub fn load(cfg: &DataConfig, seed: u64) -> Result<Datasets> {
    if is_pair_list(&cfg.source) {
        return load_pair_list(cfg, seed);
    }
    let (description, mut all, test) = load_source(cfg)?;
    if let Some(k) = cfg.limit_per_class {
        all = all.take_per_class(k)?;
    }
    let (all, test) = match test {
        Some(t) => (all, t),
        None => {
            let (tr, te) = split::stratified(&all, cfg.test_fraction, seed ^ 0x7e57)?;
            if te.is_empty() {
                return Err(TrainError::Config(
                    "data.test-fraction: the test split is empty".into(),
                ));
            }
            (tr, te)
        }
    };
    let (train, val, test, roles) = match &cfg.class_split {
        None => {
            let (tr, va) = split::stratified(&all, cfg.val_fraction, seed)?;
            (tr, va, test, None)
        }
        Some(cs) => {
            let roles = split::class_roles(&all, &cs.validation, &cs.test, seed)?;
            (
                split::with_classes(&all, &roles.train)?,
                split::with_classes(&all, &roles.validation)?,
                split::with_classes(&test, &roles.test)?,
                Some(roles),
            )
        }
    };
    for (name, s) in [("training", &train), ("validation", &val), ("test", &test)] {
        let classes = s.class_counts().iter().filter(|&&n| n >= 2).count();
        if classes < 2 {
            return Err(TrainError::Config(format!(
                "data: the {name} split of {description} has {classes} classes with two or more images; it needs at least 2"
            )));
        }
    }
    Ok(Datasets {
        description,
        train,
        val,
        test,
        roles,
        pairs: None,
    })
}

/// The data config that reads `source` the way a model with `input` takes its images.
pub fn data_config_for(source: &str, input: &siam_model::InputSpec) -> DataConfig {
    DataConfig {
        source: source.to_string(),
        val_fraction: 0.1,
        holdout_classes: None,
        class_split: None,
        test_fraction: 0.2,
        limit_per_class: None,
        color: if input.channels == 3 {
            siam_data::ColorMode::Rgb
        } else {
            siam_data::ColorMode::Gray
        },
        size: Some([input.height, input.width]),
        mean: None,
        std: None,
    }
}

/// The images a model is evaluated on: the source's test split, or every image of a source
/// without one (an image folder), checked against the model's input shape.
pub fn eval_set(source: &str, input: &siam_model::InputSpec) -> Result<(String, ImageSet)> {
    let (description, all, test) = load_source(&data_config_for(source, input))?;
    let set = test.unwrap_or(all);
    let s = set.shape();
    if (s.channels, s.height, s.width) != (input.channels, input.height, input.width) {
        return Err(TrainError::Config(format!(
            "{source}: images are {}x{}x{} but the model takes {}x{}x{}",
            s.channels, s.height, s.width, input.channels, input.height, input.width
        )));
    }
    Ok((description, set))
}
