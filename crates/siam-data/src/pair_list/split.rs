//! Training, validation and test pairs with no image in two parts.
//!
//! A pair list joins images into a graph (an edge per pair). The split grows the test part,
//! then the validation part, greedily: the next image is the free one with the most pairs
//! into the part (ties and fresh starts in a seeded random order), until the part holds its
//! share of the pairs; the images left train. A pair whose two images fell in different
//! parts is dropped (it would put a validation or test image into training). Growing along
//! the pairs rather than drawing images at random keeps that loss small: a list of disjoint
//! identities (LFW, signatures by writer) loses almost nothing, while a dense list that pairs
//! every image with random others loses more (a part holding a share f of such pairs needs
//! about √f of the images).

use rand::seq::SliceRandom;

use super::PairList;
use crate::error::{DataError, Result};
use crate::rng::{rng_for, stream};

/// The parts of a by-image split: indices into [`PairList::pairs`], in list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairSplit {
    /// Pairs whose two images are training images.
    pub train: Vec<usize>,
    /// Pairs whose two images are validation images.
    pub val: Vec<usize>,
    /// Pairs whose two images are test images.
    pub test: Vec<usize>,
    /// Pairs across two parts, used by none.
    pub dropped: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Free,
    Train,
    Val,
    Test,
}

/// Splits `list` by image: about `val_fraction` and `test_fraction` of the pairs go to
/// validation and test with all of their images, fixed by `seed`. A fraction of 0 leaves
/// that part empty. Errors name the fraction when a part it asks for comes out without a
/// same or a different pair (nothing to calibrate or score on), or training gets no pair.
pub fn split_by_image(
    list: &PairList,
    val_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> Result<PairSplit> {
    for (name, f) in [
        ("val-fraction", val_fraction),
        ("test-fraction", test_fraction),
    ] {
        if !(0.0..1.0).contains(&f) {
            return Err(DataError::Invalid(format!(
                "data.{name} = {f}: must be in [0, 1)"
            )));
        }
    }
    let (images, idx) = list.images();
    let mut by_image: Vec<Vec<usize>> = vec![Vec::new(); images.len()];
    for (p, &(a, b)) in idx.iter().enumerate() {
        by_image[a].push(p);
        by_image[b].push(p);
    }
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.shuffle(&mut rng_for(seed, &[stream::SPLIT, 0x9a1]));
    let mut part = vec![Part::Free; images.len()];
    let n = list.len() as f64;
    // rank[i]: the image's place in the seeded order, which breaks ties and seeds growth.
    let mut rank = vec![0usize; images.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r;
    }
    let mut cursor = 0;
    for (which, fraction) in [(Part::Test, test_fraction), (Part::Val, val_fraction)] {
        let target = (fraction * n).round() as usize;
        let mut inside = 0usize;
        // gain[i]: pairs between free image i and the part; the part grows by the free image
        // with the largest gain (lazily updated heap), else from the next image in order.
        let mut gain = vec![0usize; images.len()];
        let mut heap = std::collections::BinaryHeap::new();
        while inside < target {
            let next = loop {
                match heap.pop() {
                    Some((g, std::cmp::Reverse(r), i)) => {
                        if part[i] == Part::Free && gain[i] == g {
                            let _: usize = r;
                            break Some(i);
                        }
                    }
                    None => {
                        while cursor < order.len() && part[order[cursor]] != Part::Free {
                            cursor += 1;
                        }
                        break order.get(cursor).copied();
                    }
                }
            };
            let Some(i) = next else { break };
            part[i] = which;
            inside += gain[i];
            for &p in &by_image[i] {
                let (a, b) = idx[p];
                let o = if a == i { b } else { a };
                if part[o] == Part::Free {
                    gain[o] += 1;
                    heap.push((gain[o], std::cmp::Reverse(rank[o]), o));
                }
            }
        }
    }
    for p in part.iter_mut().filter(|p| **p == Part::Free) {
        *p = Part::Train;
    }
    let mut s = PairSplit {
        train: Vec::new(),
        val: Vec::new(),
        test: Vec::new(),
        dropped: Vec::new(),
    };
    for (p, &(a, b)) in idx.iter().enumerate() {
        match (part[a], part[b]) {
            (Part::Train, Part::Train) => s.train.push(p),
            (Part::Val, Part::Val) => s.val.push(p),
            (Part::Test, Part::Test) => s.test.push(p),
            _ => s.dropped.push(p),
        }
    }
    let both = |ps: &[usize]| {
        let same = ps
            .iter()
            .filter(|&&p| list.pairs[p].same == Some(true))
            .count();
        same > 0 && same < ps.len()
    };
    for (name, f, ps) in [
        ("val-fraction", val_fraction, &s.val),
        ("test-fraction", test_fraction, &s.test),
    ] {
        if f > 0.0 && !both(ps) {
            return Err(DataError::format(
                &list.path,
                format!(
                    "data.{name} = {f}: the by-image split gives this part {} pairs, {} of them same; it needs same and different pairs (a larger fraction, or a longer list)",
                    ps.len(),
                    ps.iter()
                        .filter(|&&p| list.pairs[p].same == Some(true))
                        .count()
                ),
            ));
        }
    }
    if s.train.is_empty() {
        return Err(DataError::format(
            &list.path,
            format!(
                "the by-image split leaves no training pair ({} validation, {} test, {} dropped across parts): lower data.val-fraction or data.test-fraction",
                s.val.len(),
                s.test.len(),
                s.dropped.len()
            ),
        ));
    }
    Ok(s)
}
