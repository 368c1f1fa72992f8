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
//! A list is refused, naming the file and the line, for: a missing image (every missing one is
//! listed, not only the first), a `same` value that is not one of the accepted words, the
//! header repeated inside the list, a list without pairs, a pair of an image with itself, a
//! fold column with gaps (folds must be 0..K−1 or 1..K with every fold present), and LFW
//! blocks that do not add up to the counts of the first line.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// One listed pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPair {
    /// The first image (resolved path).
    pub a: PathBuf,
    /// The second image (resolved path).
    pub b: PathBuf,
    /// The listed verdict.
    pub same: bool,
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
}

/// Reads a pair list; image paths are relative to the list's folder.
pub fn read_pair_list(path: impl AsRef<Path>) -> Result<PairList> {
    let path = path.as_ref();
    let root = path.parent().unwrap_or(Path::new("")).to_path_buf();
    read_pair_list_with_root(path, &root)
}

/// Reads a pair list whose relative image paths (and LFW names) are under `root`.
pub fn read_pair_list_with_root(path: impl AsRef<Path>, root: &Path) -> Result<PairList> {
    let path = path.as_ref();
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
        parse_lfw(path, root, &lines)?
    } else {
        parse_table(path, root, &lines)?
    };
    check_images(&list)?;
    Ok(list)
}

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> DataError {
    DataError::format(path, format!("line {line}: {msg}"))
}

/// Splits one CSV line, honouring double quotes (`""` inside quotes is a quote).
fn split_csv(path: &Path, line_no: usize, line: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cur.is_empty() => quoted = true,
            (',', false) => out.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    if quoted {
        return Err(bad(path, line_no, "an unterminated quoted field"));
    }
    out.push(cur);
    Ok(out.into_iter().map(|f| f.trim().to_string()).collect())
}

fn parse_same(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "same" | "yes" => Some(true),
        "0" | "false" | "different" | "no" => Some(false),
        _ => None,
    }
}

fn resolve(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

fn parse_table(path: &Path, root: &Path, lines: &[(usize, &str)]) -> Result<PairList> {
    let (header_line, header) = lines[0];
    let tsv = header.contains('\t');
    let split = |no: usize, l: &str| -> Result<Vec<String>> {
        if tsv {
            Ok(l.split('\t').map(|f| f.trim().to_string()).collect())
        } else {
            split_csv(path, no, l)
        }
    };
    let names: Vec<String> = split(header_line, header)?
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let col = |name: &str| names.iter().position(|n| n == name);
    let (Some(ca), Some(cb), Some(cs)) = (col("a"), col("b"), col("same")) else {
        return Err(bad(
            path,
            header_line,
            format!(
                "the header must name the columns a, b and same (and optionally fold); it has {}",
                names.join(", ")
            ),
        ));
    };
    let cf = col("fold");
    let mut pairs = Vec::new();
    for &(no, line) in &lines[1..] {
        let f = split(no, line)?;
        if f.iter().map(|s| s.to_ascii_lowercase()).collect::<Vec<_>>() == names {
            return Err(bad(
                path,
                no,
                "the header is repeated (two lists pasted together?)",
            ));
        }
        if f.len() != names.len() {
            return Err(bad(
                path,
                no,
                format!("{} fields, the header has {}", f.len(), names.len()),
            ));
        }
        let same = parse_same(&f[cs]).ok_or_else(|| {
            bad(
                path,
                no,
                format!(
                    "same = `{}`: expected 1/0, true/false, same/different or yes/no",
                    f[cs]
                ),
            )
        })?;
        let fold = match cf {
            Some(c) => Some(f[c].parse::<usize>().map_err(|_| {
                bad(
                    path,
                    no,
                    format!("fold = `{}`: expected a whole number", f[c]),
                )
            })?),
            None => None,
        };
        if f[ca].is_empty() || f[cb].is_empty() {
            return Err(bad(path, no, "an empty image path"));
        }
        let (a, b) = (resolve(root, &f[ca]), resolve(root, &f[cb]));
        if a == b {
            return Err(bad(path, no, format!("a pair of {} with itself", f[ca])));
        }
        pairs.push(ListedPair {
            a,
            b,
            same,
            fold,
            line: no,
        });
    }
    if pairs.is_empty() {
        return Err(DataError::format(
            path,
            "the list has a header but no pairs",
        ));
    }
    let folds = if cf.is_some() {
        renumber_folds(path, &mut pairs)?
    } else {
        0
    };
    Ok(PairList {
        path: path.to_path_buf(),
        pairs,
        folds,
        format: if tsv { "tsv" } else { "csv" },
    })
}

/// Folds must be 0..K−1 or 1..K, each present; they are renumbered from 0.
fn renumber_folds(path: &Path, pairs: &mut [ListedPair]) -> Result<usize> {
    let mut seen: Vec<usize> = pairs.iter().filter_map(|p| p.fold).collect();
    seen.sort_unstable();
    seen.dedup();
    let lo = seen[0];
    if lo > 1 {
        return Err(DataError::format(
            path,
            format!("folds start at {lo}: they must be numbered from 0 or from 1"),
        ));
    }
    let missing: Vec<String> = (lo..=*seen.last().expect("non-empty"))
        .filter(|f| seen.binary_search(f).is_err())
        .map(|f| f.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(DataError::format(
            path,
            format!(
                "the fold column has gaps: no pair in fold {} (folds seen: {})",
                missing.join(", "),
                seen.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for p in pairs.iter_mut() {
        p.fold = p.fold.map(|f| f - lo);
    }
    Ok(seen.len())
}

fn parse_lfw(path: &Path, root: &Path, lines: &[(usize, &str)]) -> Result<PairList> {
    let nums: Vec<usize> = lines[0]
        .1
        .split_whitespace()
        .map(|f| f.parse().expect("checked by the caller"))
        .collect();
    let (folds, per_kind) = match nums[..] {
        [n] => (1, n),
        [k, n] => (k, n),
        _ => unreachable!("one or two numbers"),
    };
    let image = |name: &str, n: &str, no: usize| -> Result<PathBuf> {
        let n: usize = n
            .parse()
            .map_err(|_| bad(path, no, format!("`{n}` is not an image number")))?;
        Ok(root.join(name).join(format!("{name}_{n:04}.jpg")))
    };
    let mut pairs = Vec::new();
    for &(no, line) in &lines[1..] {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (a, b, same) = match f[..] {
            [name, n1, n2] => (image(name, n1, no)?, image(name, n2, no)?, true),
            [a, n1, b, n2] => (image(a, n1, no)?, image(b, n2, no)?, false),
            _ => {
                return Err(bad(
                    path,
                    no,
                    format!(
                        "{} fields: LFW lines are `name n1 n2` (same) or `name1 n1 name2 n2` (different)",
                        f.len()
                    ),
                ));
            }
        };
        if a == b {
            return Err(bad(
                path,
                no,
                format!("a pair of {} with itself", a.display()),
            ));
        }
        let i = pairs.len();
        let fold = i / (2 * per_kind);
        let want_same = i % (2 * per_kind) < per_kind;
        if fold < folds && same != want_same {
            return Err(bad(
                path,
                no,
                format!(
                    "a {} pair where fold {} expects its {}: each fold lists {per_kind} same pairs, then {per_kind} different ones",
                    if same { "same" } else { "different" },
                    fold + 1,
                    if want_same {
                        "same pairs"
                    } else {
                        "different pairs"
                    }
                ),
            ));
        }
        pairs.push(ListedPair {
            a,
            b,
            same,
            fold: (folds > 1).then_some(fold),
            line: no,
        });
    }
    let want = folds * 2 * per_kind;
    if pairs.len() != want {
        return Err(DataError::format(
            path,
            format!(
                "the first line promises {folds} fold(s) of {per_kind} same and {per_kind} different pairs ({want} lines), the list has {}",
                pairs.len()
            ),
        ));
    }
    Ok(PairList {
        path: path.to_path_buf(),
        pairs,
        folds: if folds > 1 { folds } else { 0 },
        format: "lfw",
    })
}

/// Every image must exist: the error lists all missing ones with their lines.
fn check_images(list: &PairList) -> Result<()> {
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in &list.pairs {
        for img in [&p.a, &p.b] {
            if seen.insert(img.clone()) && !img.is_file() {
                missing.push(format!("{} (line {})", img.display(), p.line));
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let n = missing.len();
    let shown: Vec<String> = missing.into_iter().take(50).collect();
    Err(DataError::format(
        &list.path,
        format!(
            "{n} listed image(s) not found: {}{}",
            shown.join(", "),
            if n > 50 {
                format!(", and {} more", n - 50)
            } else {
                String::new()
            }
        ),
    ))
}
