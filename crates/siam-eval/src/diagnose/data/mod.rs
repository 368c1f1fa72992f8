//! The quality of the data diagnosed: images whose neighbours carry another label (suspected
//! wrong labels), exact and near duplicates (within a class, across classes, across the run's
//! splits), and degenerate images (blank, saturated, outside the training intensities). The
//! measurement is [`data_quality`]; the rules (`label-noise`, `duplicates`,
//! `degenerate-images`) are [`data_findings`], pure functions of it, in `findings/data.rs`.
//!
//! - this file: the measurement's input and results, and [`data_quality`];
//! - `search.rs`: exact neighbours, duplicate search, thumbnails.

use std::collections::HashMap;

use super::*;

mod search;

pub use search::image_hash;
use search::{copies_in, disagreement, knn, share_of, thumbnail};

/// Neighbours looked at per image.
pub const NEIGHBOURS: usize = 10;
/// At most this many suspects, duplicate pairs and degenerate images are listed.
pub const LISTED: usize = 200;

/// What [`data_quality`] looks at: raw pixels (0–255, image after image), labels, names, the
/// model's embeddings of the same images, and the hashes of the run's other splits.
pub struct DataInput<'a> {
    /// Raw pixels, `numel` per image.
    pub pixels: &'a [u8],
    /// Values per image.
    pub numel: usize,
    /// Label of each image.
    pub labels: &'a [u32],
    /// Class names by label.
    pub class_names: &'a [String],
    /// Each image's name (its file, or `#N` for its index in an IDX file).
    pub names: &'a [String],
    /// Row-major embeddings, `dims` per image (the model's, as it compares them).
    pub embeddings: &'a [f32],
    /// Embedding dimension.
    pub dims: usize,
    /// The run's other splits (`training`, `validation`), searched for exact and near copies
    /// of the images diagnosed.
    pub other_splits: Vec<OtherSplit<'a>>,
    /// Mean intensity bounds (0–1) of the training images, when the model stores them.
    pub intensity_bounds: Option<(f64, f64)>,
    /// Channels, height and width of an image (for the report's thumbnails).
    pub shape: (usize, usize, usize),
}

/// A split of the run other than the data diagnosed: its images, searched for copies.
pub struct OtherSplit<'a> {
    /// Its name (`training`, `validation`).
    pub name: &'a str,
    /// Raw pixels, `numel` per image, as in [`DataInput::pixels`].
    pub pixels: std::borrow::Cow<'a, [u8]>,
    /// Each image's name.
    pub names: Vec<String>,
}

/// How many of each list the report shows, with thumbnails.
pub const SHOWN: usize = 20;

/// An image whose neighbours mostly carry another label.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Suspect {
    /// The image.
    pub name: String,
    /// Its label's class.
    pub class: String,
    /// The class most of its neighbours carry.
    pub neighbours_class: String,
    /// Share of its nearest neighbours in the embedding with another label.
    pub embedding_disagreement: f64,
    /// The same in pixel space.
    pub pixel_disagreement: f64,
}

/// Two images that are the same, or nearly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Duplicate {
    /// The first image.
    pub a: String,
    /// The second image (in another split for `kind = "across-splits"`).
    pub b: String,
    /// `same-class`, `conflicting-labels` or `across-splits` (`b` named with its split).
    pub kind: String,
    /// `exact`, or `near` (root-mean-square difference of at most 2 intensity levels).
    pub how: String,
    /// Their classes (one for an across-split pair whose other class is not known).
    pub classes: Vec<String>,
}

/// An image that carries little or nothing to learn from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Degenerate {
    /// The image.
    pub name: String,
    /// `blank` (constant), `saturated` (half its pixels at full intensity) or `out-of-range`
    /// (mean intensity beyond the training images' bounds by a quarter of their width).
    pub kind: String,
    /// The figure: intensity range for blank, share at 255 for saturated, mean for out-of-range.
    pub value: f64,
}

/// The data-quality measurements.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataQuality {
    /// Images checked.
    pub images: usize,
    /// Neighbours looked at per image: ten, or one less than a typical class's images.
    pub neighbours: usize,
    /// Images whose embedding neighbours are at least 70 % of another label.
    pub suspects: usize,
    /// Of those, the ones whose embedding neighbours are at least 80 % of another label and
    /// whose pixel neighbours at least 70 %: both spaces say so.
    pub confident_suspects: usize,
    /// The suspects, most suspicious first (at most [`LISTED`]).
    pub suspect_list: Vec<Suspect>,
    /// Duplicate pairs within a class.
    pub duplicates_same_class: usize,
    /// Duplicate pairs with different labels.
    pub duplicates_conflicting: usize,
    /// Images also found in another split of the run.
    pub duplicates_across_splits: usize,
    /// The duplicate pairs (conflicting and across splits first; at most [`LISTED`]).
    pub duplicate_list: Vec<Duplicate>,
    /// Degenerate images.
    pub degenerate: usize,
    /// The degenerate images (at most [`LISTED`]).
    pub degenerate_list: Vec<Degenerate>,
    /// PNG data URIs of the first [`SHOWN`] images of each list, by name, for the report
    /// (not in JSON).
    #[serde(skip)]
    pub thumbnails: std::collections::BTreeMap<String, String>,
}

/// Measures the data's quality: suspected wrong labels, duplicates, degenerate images.
pub fn data_quality(d: &DataInput<'_>) -> Result<DataQuality> {
    let n = d.labels.len();
    if d.pixels.len() != n * d.numel || d.embeddings.len() != n * d.dims || d.names.len() != n {
        return Err(EvalError::Invalid(format!(
            "data quality: {} images, {} pixel values of {}, {} embedding values of {}, {} names",
            n,
            d.pixels.len(),
            d.numel,
            d.embeddings.len(),
            d.dims,
            d.names.len()
        )));
    }
    let class = |l: u32| {
        d.class_names
            .get(l as usize)
            .cloned()
            .unwrap_or_else(|| l.to_string())
    };
    let px: Vec<f32> = d.pixels.iter().map(|&v| f32::from(v)).collect();
    let pix_nb = knn(&px, n, d.numel, NEIGHBOURS)?;
    let emb_nb = knn(d.embeddings, n, d.dims, NEIGHBOURS)?;

    // Suspected wrong labels, over as many neighbours as a typical class can offer (fewer
    // than ten when classes are small: with four images a class, three).
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &l in d.labels {
        *counts.entry(l).or_default() += 1;
    }
    let mut sizes: Vec<usize> = counts.into_values().collect();
    sizes.sort_unstable();
    let typical = sizes.get(sizes.len() / 2).copied().unwrap_or(1);
    let k = typical.saturating_sub(1).clamp(1, NEIGHBOURS);
    // A mislabelled image sits among images of one other class, in the embedding and in pixel
    // space alike; an image of two overlapping classes (a shirt among T-shirts) has neighbours
    // of several. Rank by how much both spaces agree on the one other class.
    let mut suspects: Vec<(f64, f64, f64, usize, u32)> = Vec::new();
    for i in 0..n {
        let (en, pn) = (
            &emb_nb[i][..k.min(emb_nb[i].len())],
            &pix_nb[i][..k.min(pix_nb[i].len())],
        );
        let (e, top) = disagreement(en, d.labels, d.labels[i]);
        if let Some(top) = top.filter(|_| e >= 0.7) {
            let (p, _) = disagreement(pn, d.labels, d.labels[i]);
            let score = share_of(en, d.labels, top) + share_of(pn, d.labels, top);
            suspects.push((score, e, p, i, top));
        }
    }
    suspects.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(b.1.total_cmp(&a.1))
            .then(a.3.cmp(&b.3))
    });
    let suspect_list = suspects
        .iter()
        .take(LISTED)
        .map(|&(_, e, p, i, top)| Suspect {
            name: d.names[i].clone(),
            class: class(d.labels[i]),
            neighbours_class: class(top),
            embedding_disagreement: e,
            pixel_disagreement: p,
        })
        .collect();

    // Duplicates within the data: exact by hash, near by the nearest pixel neighbours.
    let hashes: Vec<u64> = (0..n)
        .map(|i| image_hash(&d.pixels[i * d.numel..(i + 1) * d.numel]))
        .collect();
    let near = 4.0 * d.numel as f32; // squared distance of an RMS difference of 2 levels
    let mut pairs: Vec<(usize, usize, bool)> = Vec::new();
    for i in 0..n {
        for &(j, dist) in &pix_nb[i] {
            if j > i && dist <= near {
                let exact = hashes[i] == hashes[j]
                    && d.pixels[i * d.numel..(i + 1) * d.numel]
                        == d.pixels[j * d.numel..(j + 1) * d.numel];
                pairs.push((i, j, exact));
            }
        }
    }
    let mut dup = Vec::new();
    let (mut same_class, mut conflicting) = (0, 0);
    for &(i, j, exact) in &pairs {
        let conflict = d.labels[i] != d.labels[j];
        if conflict {
            conflicting += 1;
        } else {
            same_class += 1;
        }
        dup.push(Duplicate {
            a: d.names[i].clone(),
            b: d.names[j].clone(),
            kind: if conflict {
                "conflicting-labels"
            } else {
                "same-class"
            }
            .into(),
            how: if exact { "exact" } else { "near" }.into(),
            classes: if conflict {
                vec![class(d.labels[i]), class(d.labels[j])]
            } else {
                vec![class(d.labels[i])]
            },
        });
    }
    let mut across = 0;
    for split in &d.other_splits {
        for (i, j, exact) in copies_in(d.pixels, &split.pixels, d.numel)? {
            across += 1;
            dup.push(Duplicate {
                a: d.names[i].clone(),
                b: format!("{}: {}", split.name, split.names[j]),
                kind: "across-splits".into(),
                how: if exact { "exact" } else { "near" }.into(),
                classes: vec![class(d.labels[i])],
            });
        }
    }
    let rank = |k: &str| match k {
        "across-splits" => 0,
        "conflicting-labels" => 1,
        _ => 2,
    };
    dup.sort_by_key(|x| rank(&x.kind));
    dup.truncate(LISTED);

    // Degenerate images.
    let mut degenerate = Vec::new();
    for i in 0..n {
        let img = &d.pixels[i * d.numel..(i + 1) * d.numel];
        let (lo, hi) = img
            .iter()
            .fold((u8::MAX, u8::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let full = img.iter().filter(|&&v| v == u8::MAX).count() as f64 / img.len().max(1) as f64;
        let mean =
            img.iter().map(|&v| f64::from(v)).sum::<f64>() / (255.0 * img.len().max(1) as f64);
        let (kind, value) = if hi.saturating_sub(lo) <= 2 {
            ("blank", f64::from(hi - lo))
        } else if full >= 0.5 {
            ("saturated", full)
        } else if d.intensity_bounds.is_some_and(|(a, b)| {
            // Far outside: beyond the training bounds by a quarter of their width (the bounds
            // themselves are the 0.1 and 99.9 % quantiles, which 0.2 % of images pass).
            let m = 0.25 * (b - a);
            mean < a - m || mean > b + m
        }) {
            ("out-of-range", mean)
        } else {
            continue;
        };
        degenerate.push(Degenerate {
            name: d.names[i].clone(),
            kind: kind.into(),
            value,
        });
    }
    let degenerate_count = degenerate.len();
    degenerate.truncate(LISTED);
    let index: HashMap<&str, usize> = d
        .names
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut thumbnails = std::collections::BTreeMap::new();
    let shown = suspect_list_names(&suspects, d)
        .chain(
            dup.iter()
                .take(SHOWN)
                .flat_map(|x| [x.a.clone(), x.b.clone()]),
        )
        .chain(degenerate.iter().take(SHOWN).map(|x| x.name.clone()));
    for name in shown {
        if let Some(&i) = index.get(name.as_str())
            && let Some(uri) = thumbnail(&d.pixels[i * d.numel..(i + 1) * d.numel], d.shape)
        {
            thumbnails.insert(name, uri);
        }
    }
    Ok(DataQuality {
        images: n,
        neighbours: k,
        suspects: suspects.len(),
        confident_suspects: suspects.iter().filter(|s| s.1 >= 0.8 && s.2 >= 0.7).count(),
        suspect_list,
        duplicates_same_class: same_class,
        duplicates_conflicting: conflicting,
        duplicates_across_splits: across,
        duplicate_list: dup,
        degenerate: degenerate_count,
        degenerate_list: degenerate,
        thumbnails,
    })
}

/// The names of the first [`SHOWN`] suspects.
fn suspect_list_names<'a>(
    s: &'a [(f64, f64, f64, usize, u32)],
    d: &'a DataInput<'_>,
) -> impl Iterator<Item = String> + 'a {
    s.iter().take(SHOWN).map(|x| d.names[x.3].clone())
}
