//! The two list formats: CSV/TSV tables with a header, and LFW's `pairs.txt`.

use std::path::{Path, PathBuf};

use super::{ListedPair, PairList};
use crate::error::{DataError, Result};

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

pub(super) fn parse_table(
    path: &Path,
    root: &Path,
    lines: &[(usize, &str)],
    need_same: bool,
) -> Result<PairList> {
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
    let cs = col("same");
    let (Some(ca), Some(cb), true) = (col("a"), col("b"), cs.is_some() || !need_same) else {
        return Err(bad(
            path,
            header_line,
            format!(
                "the header must name the columns {} (and optionally fold); it has {}",
                if need_same {
                    "a, b and same"
                } else {
                    "a and b (and same)"
                },
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
        let same = match cs {
            Some(cs) => Some(parse_same(&f[cs]).ok_or_else(|| {
                bad(
                    path,
                    no,
                    format!(
                        "same = `{}`: expected 1/0, true/false, same/different or yes/no",
                        f[cs]
                    ),
                )
            })?),
            None => None,
        };
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

pub(super) fn parse_lfw(path: &Path, root: &Path, lines: &[(usize, &str)]) -> Result<PairList> {
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
            same: Some(same),
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
pub(super) fn check_images(list: &PairList) -> Result<()> {
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
