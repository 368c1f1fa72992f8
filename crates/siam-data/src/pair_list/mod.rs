//! Pair lists: the user's own verification pairs, as verification protocols report them.
//!
//! Two formats are read, told apart by the first line:
//!
//! - **CSV or TSV with a header** naming the columns `a`, `b`, `same` and optionally `fold`
//!   (any order, any case; tab-separated when the header holds a tab). `a` and `b` are image
//!   paths, relative to the list's folder or absolute; `same` is `1`/`0`, `true`/`false`,
//!   `same`/`different` (or `yes`/`no`), any case. CSV fields may be double-quoted. Blank lines
//!   and lines starting with `#` are skipped.
//! - **LFW's `pairs.txt`**: a first line of one number (pairs of each kind: `pairsDevTrain.txt`)
//!   or two (`folds pairs-per-fold`: the 10-fold `pairs.txt`), then `name n1 n2` lines (a same
//!   pair: `name/name_000n1.jpg` and `name/name_000n2.jpg`) and `name1 n1 name2 n2` lines (a
//!   different pair), in blocks of same then different pairs per fold. Image paths are under
//!   the images folder given ([`read_pair_list_with_root`]), by default the list's folder.
//!
//! [`read_pairs_to_compare`] also takes a table without a `same` column (pairs to decide, not
//! to score): its pairs have `same = None`.
//!
//! [`split_by_image`] splits a list into training, validation and test pairs so that no
//! image is in two parts (pair-list training); [`PairList::same_components`] gives each image
//! a pseudo-class, the connected components of the `same` pairs.
//!
//! A list is refused, naming the file and the line, for: a missing image (every missing one is
//! listed, not only the first), a `same` value that is not one of the accepted words, the
//! header repeated inside the list, a list without pairs, a pair of an image with itself, a
//! fold column with gaps (folds must be 0..K−1 or 1..K with every fold present), and LFW
//! blocks that do not add up to the counts of the first line.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

mod parse;
mod split;

pub use split::{PairSplit, split_by_image};

/// One listed pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPair {
    /// The first image (resolved path).
    pub a: PathBuf,
    /// The second image (resolved path).
    pub b: PathBuf,
    /// The listed verdict; `None` in a list read by [`read_pairs_to_compare`] without a
    /// `same` column.
    pub same: Option<bool>,
    /// The fold, numbered from 0, when the list has folds.
    pub fold: Option<usize>,
    /// The line of the list it came from (1-based).
    pub line: usize,
}

/// A parsed pair list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairList {
    /// The list file.
    pub path: PathBuf,
    /// The pairs, in list order.
    pub pairs: Vec<ListedPair>,
    /// Number of folds (0 when the list has none).
    pub folds: usize,
    /// `csv`, `tsv` or `lfw`.
    pub format: &'static str,
}

impl PairList {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True for a list without pairs (never returned by the readers).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The distinct images of the list in first-appearance order, and for each pair the
    /// indices of its two images in that order: each image is decoded once however many
    /// pairs it appears in.
    pub fn images(&self) -> (Vec<PathBuf>, Vec<(usize, usize)>) {
        let mut index = std::collections::HashMap::new();
        let mut images = Vec::new();
        let mut id = |p: &PathBuf| {
            *index.entry(p.clone()).or_insert_with(|| {
                images.push(p.clone());
                images.len() - 1
            })
        };
        let pairs = self.pairs.iter().map(|p| (id(&p.a), id(&p.b))).collect();
        (images, pairs)
    }

    /// True when every pair has a verdict.
    pub fn is_labelled(&self) -> bool {
        self.pairs.iter().all(|p| p.same.is_some())
    }

    /// The verdicts, or an error naming the list when it has no `same` column.
    pub fn verdicts(&self) -> Result<Vec<bool>> {
        self.pairs
            .iter()
            .map(|p| p.same)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                DataError::format(
                    &self.path,
                    "the list has no `same` column: these pairs have no verdict to score",
                )
            })
    }

    /// A pseudo-class for each image of [`PairList::images`]: images joined by a chain of
    /// `same` pairs share one (the connected components of the `same` pairs, numbered in
    /// first-appearance order). Retrieval figures on a pair list use these classes.
    pub fn same_components(&self) -> Vec<u32> {
        let (images, idx) = self.images();
        let mut parent: Vec<usize> = (0..images.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        for (p, &(a, b)) in self.pairs.iter().zip(&idx) {
            if p.same == Some(true) {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                if ra != rb {
                    parent[ra.max(rb)] = ra.min(rb);
                }
            }
        }
        let mut number = std::collections::HashMap::new();
        (0..images.len())
            .map(|i| {
                let r = root(&mut parent, i);
                let n = number.len() as u32;
                *number.entry(r).or_insert(n)
            })
            .collect()
    }
}

/// Reads a pair list; image paths are relative to the list's folder.
pub fn read_pair_list(path: impl AsRef<Path>) -> Result<PairList> {
    let path = path.as_ref();
    let root = path.parent().unwrap_or(Path::new("")).to_path_buf();
    read_pair_list_with_root(path, &root)
}

/// Reads a pair list whose relative image paths (and LFW names) are under `root`.
pub fn read_pair_list_with_root(path: impl AsRef<Path>, root: &Path) -> Result<PairList> {
    read(path.as_ref(), root, true)
}

/// Reads pairs to decide (`siam compare --pairs`): as [`read_pair_list_with_root`], but a
/// table may leave out the `same` column (its pairs then have `same = None`).
pub fn read_pairs_to_compare(path: impl AsRef<Path>, root: Option<&Path>) -> Result<PairList> {
    let path = path.as_ref();
    let default_root = path.parent().unwrap_or(Path::new("")).to_path_buf();
    read(path, root.unwrap_or(&default_root), false)
}

fn read(path: &Path, root: &Path, need_same: bool) -> Result<PairList> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let Some(&(_, first)) = lines.first() else {
        return Err(DataError::format(
            path,
            "the list is empty: no header and no pairs",
        ));
    };
    let fields: Vec<&str> = first.split_whitespace().collect();
    let list = if !fields.is_empty()
        && fields.len() <= 2
        && fields.iter().all(|f| f.parse::<usize>().is_ok())
    {
        parse::parse_lfw(path, root, &lines)?
    } else {
        parse::parse_table(path, root, &lines, need_same)?
    };
    parse::check_images(&list)?;
    Ok(list)
}
