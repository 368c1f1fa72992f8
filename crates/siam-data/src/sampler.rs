//! Seeded, deterministic samplers: balanced pairs, triplets and P×K class batches.
//!
//! A batch is a pure function of (seed, epoch, batch index): samplers hold no cursor, so a
//! run resumes at any batch by asking for it. Within an epoch classes are visited through a
//! seeded permutation, so every class is covered.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::error::{DataError, Result};
use crate::image_set::ImageSet;
use crate::rng::{SiamRng, rng_for, stream};

/// Which sampler to use, as written in a config.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case",
    deny_unknown_fields
)]
pub enum SamplerConfig {
    /// Pairs with a `same` flag; `positive-fraction` of each batch are same-class pairs.
    Pairs {
        /// Share of same-class pairs in each batch (default 0.5).
        #[serde(default = "half")]
        positive_fraction: f64,
    },
    /// (anchor, positive, negative) triplets.
    Triplets,
    /// P classes × K images per batch, for online mining.
    Pk {
        /// Classes per batch.
        p: usize,
        /// Images per class.
        k: usize,
    },
    /// The pairs of a pair list (`data.source` is the list), `batch-size` per batch, each
    /// epoch in a new seeded order; the verdicts are the list's.
    PairList,
}

fn half() -> f64 {
    0.5
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::Pairs {
            positive_fraction: 0.5,
        }
    }
}

impl SamplerConfig {
    /// Builds the sampler over `set`. `batch_size` counts pairs or triplets; P×K ignores it.
    /// The config fitted to `set`: P×K's P capped at the number of classes with two or more
    /// images (when that leaves at least two), with a note saying so; otherwise unchanged.
    pub fn fit(&self, set: &ImageSet) -> (Self, Option<String>) {
        match *self {
            Self::Pk { p, k } => {
                let classes = set.class_counts().iter().filter(|&&n| n >= 2).count();
                if classes >= 2 && p > classes {
                    let note = format!(
                        "sampler.p = {p} capped at {classes}: the training set has {classes} classes with two or more images"
                    );
                    (Self::Pk { p: classes, k }, Some(note))
                } else {
                    (self.clone(), None)
                }
            }
            _ => (self.clone(), None),
        }
    }

    /// The sampler over `set` (see [`SamplerConfig::fit`] for fitting P×K to the set first).
    pub fn build(&self, set: &ImageSet, batch_size: usize, seed: u64) -> Result<Sampler> {
        Ok(match *self {
            Self::Pairs { positive_fraction } => {
                Sampler::Pairs(PairSampler::new(set, batch_size, positive_fraction, seed)?)
            }
            Self::Triplets => Sampler::Triplets(TripletSampler::new(set, batch_size, seed)?),
            Self::Pk { p, k } => Sampler::Pk(PkSampler::new(set, p, k, seed)?),
            Self::PairList => {
                return Err(DataError::Invalid(
                    "sampler.kind = \"pair-list\" draws from listed pairs: build it with PairListSampler::new".into(),
                ));
            }
        })
    }
}

/// Indices of a batch of pairs: `same[i]` is 1.0 when `a[i]` and `b[i]` share a class.
#[derive(Debug, Clone, PartialEq)]
pub struct PairIndices {
    /// Left images.
    pub a: Vec<usize>,
    /// Right images.
    pub b: Vec<usize>,
    /// 1.0 for a same-class pair, 0.0 otherwise.
    pub same: Vec<f32>,
}

/// Indices of a batch of triplets.
#[derive(Debug, Clone, PartialEq)]
pub struct TripletIndices {
    /// Anchors.
    pub anchor: Vec<usize>,
    /// Same class as the anchor, another image.
    pub positive: Vec<usize>,
    /// Another class.
    pub negative: Vec<usize>,
}

/// Indices of a P×K batch with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassIndices {
    /// Images, class after class.
    pub indices: Vec<usize>,
    /// Their class labels.
    pub labels: Vec<u32>,
}

/// One batch of indices from any sampler.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchIndices {
    /// From [`PairSampler`].
    Pairs(PairIndices),
    /// From [`TripletSampler`].
    Triplets(TripletIndices),
    /// From [`PkSampler`].
    Classes(ClassIndices),
}

/// Any of the samplers.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// Balanced pairs.
    Pairs(PairSampler),
    /// Triplets.
    Triplets(TripletSampler),
    /// P×K class batches.
    Pk(PkSampler),
    /// Listed pairs.
    PairList(PairListSampler),
}

impl Sampler {
    /// The batch at (`epoch`, `batch`).
    pub fn batch(&self, epoch: u64, batch: u64) -> BatchIndices {
        match self {
            Self::Pairs(s) => BatchIndices::Pairs(s.batch(epoch, batch)),
            Self::Triplets(s) => BatchIndices::Triplets(s.batch(epoch, batch)),
            Self::Pk(s) => BatchIndices::Classes(s.batch(epoch, batch)),
            Self::PairList(s) => BatchIndices::Pairs(s.batch(epoch, batch)),
        }
    }

    /// Images per batch (2 per pair, 3 per triplet, P·K).
    pub fn images_per_batch(&self) -> usize {
        match self {
            Self::Pairs(s) => 2 * s.batch_size,
            Self::Triplets(s) => 3 * s.batch_size,
            Self::Pk(s) => s.p * s.k,
            Self::PairList(s) => 2 * s.batch_size,
        }
    }
}

/// Images of every class, and the classes usable for positives (≥ 2 images) and negatives.
#[derive(Debug)]
struct ClassIndex {
    by_class: Vec<Vec<usize>>,
    pos_classes: Vec<usize>,
    neg_classes: Vec<usize>,
}

impl ClassIndex {
    fn new(set: &ImageSet) -> Self {
        let by_class = set.indices_by_class();
        let with = |min: usize| -> Vec<usize> {
            (0..by_class.len())
                .filter(|&c| by_class[c].len() >= min)
                .collect()
        };
        Self {
            pos_classes: with(2),
            neg_classes: with(1),
            by_class,
        }
    }

    fn describe_small(&self, set: &ImageSet) -> String {
        let small: Vec<String> = self
            .by_class
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() == 1)
            .map(|(c, _)| format!("'{}'", set.class_names()[c]))
            .take(5)
            .collect();
        if small.is_empty() {
            String::new()
        } else {
            format!(" (classes with a single image: {})", small.join(", "))
        }
    }

    fn one_of(&self, c: usize, rng: &mut SiamRng) -> usize {
        *self.by_class[c].choose(rng).expect("class has images")
    }

    /// A negative class other than `not` (there are at least two negative classes).
    fn other(&self, not: usize, rng: &mut SiamRng) -> usize {
        loop {
            let c = *self.neg_classes.choose(rng).expect("at least two classes");
            if c != not {
                return c;
            }
        }
    }
}

/// Per-epoch permutation of `classes`, then the `n` classes starting at `offset` in it.
fn cycle_classes(classes: &[usize], seed: u64, epoch: u64, offset: u64, n: usize) -> Vec<usize> {
    let mut perm = classes.to_vec();
    perm.shuffle(&mut rng_for(seed, &[stream::SAMPLER, epoch, u64::MAX]));
    let len = perm.len() as u64;
    (0..n as u64)
        .map(|i| perm[((offset + i) % len) as usize])
        .collect()
}

fn check_batch_size(batch_size: usize) -> Result<()> {
    if batch_size == 0 {
        return Err(DataError::Invalid("batch size must be at least 1".into()));
    }
    Ok(())
}

/// Balanced pairs: a fixed share of same-class pairs per batch, classes cycled per epoch.
#[derive(Debug, Clone)]
pub struct PairSampler {
    index: std::sync::Arc<ClassIndex>,
    batch_size: usize,
    positives: usize,
    seed: u64,
}

impl PairSampler {
    /// Pairs over `set`, `batch_size` per batch, `round(batch_size · positive_fraction)` of
    /// them same-class.
    pub fn new(
        set: &ImageSet,
        batch_size: usize,
        positive_fraction: f64,
        seed: u64,
    ) -> Result<Self> {
        check_batch_size(batch_size)?;
        if !(0.0..=1.0).contains(&positive_fraction) {
            return Err(DataError::Invalid(format!(
                "positive fraction {positive_fraction} must be in [0, 1]"
            )));
        }
        let idx = ClassIndex::new(set);
        let (pos_classes, neg_classes) = (idx.pos_classes.len(), idx.neg_classes.len());
        let positives = (batch_size as f64 * positive_fraction).round() as usize;
        if positives > 0 && pos_classes == 0 {
            return Err(DataError::Invalid(format!(
                "same-class pairs need a class with at least two images; none of the {} classes has{}",
                neg_classes,
                idx.describe_small(set)
            )));
        }
        if positives < batch_size && neg_classes < 2 {
            return Err(DataError::Invalid(format!(
                "different-class pairs need at least two classes with images; the set has {}",
                neg_classes
            )));
        }
        if pos_classes < neg_classes {
            tracing::warn!(
                "{} of {} classes have a single image and give no same-class pair{}",
                neg_classes - pos_classes,
                neg_classes,
                idx.describe_small(set)
            );
        }
        Ok(Self {
            index: std::sync::Arc::new(idx),
            batch_size,
            positives,
            seed,
        })
    }

    /// Pairs per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The batch at (`epoch`, `batch`).
    pub fn batch(&self, epoch: u64, batch: u64) -> PairIndices {
        let d = &self.index;
        let mut rng = rng_for(self.seed, &[stream::SAMPLER, epoch, batch]);
        let npos = self.positives;
        let nneg = self.batch_size - npos;
        let mut rows: Vec<(usize, usize, f32)> = Vec::with_capacity(self.batch_size);
        if npos > 0 {
            for c in cycle_classes(&d.pos_classes, self.seed, epoch, batch * npos as u64, npos) {
                let (a, b) = two_of(&d.by_class[c], &mut rng);
                rows.push((a, b, 1.0));
            }
        }
        if nneg > 0 {
            for c in cycle_classes(
                &d.neg_classes,
                self.seed ^ 1,
                epoch,
                batch * nneg as u64,
                nneg,
            ) {
                let o = d.other(c, &mut rng);
                let (a, b) = (d.one_of(c, &mut rng), d.one_of(o, &mut rng));
                rows.push((a, b, 0.0));
            }
        }
        rows.shuffle(&mut rng);
        PairIndices {
            a: rows.iter().map(|r| r.0).collect(),
            b: rows.iter().map(|r| r.1).collect(),
            same: rows.iter().map(|r| r.2).collect(),
        }
    }
}

/// Two distinct members of `v` (at least two long).
fn two_of(v: &[usize], rng: &mut SiamRng) -> (usize, usize) {
    let i = rng.random_range(0..v.len());
    let mut j = rng.random_range(0..v.len() - 1);
    if j >= i {
        j += 1;
    }
    (v[i], v[j])
}

/// Triplets: anchor classes cycled per epoch, a distinct positive, a negative of another class.
#[derive(Debug, Clone)]
pub struct TripletSampler {
    index: std::sync::Arc<ClassIndex>,
    batch_size: usize,
    seed: u64,
}

impl TripletSampler {
    /// Triplets over `set`, `batch_size` per batch.
    pub fn new(set: &ImageSet, batch_size: usize, seed: u64) -> Result<Self> {
        check_batch_size(batch_size)?;
        let idx = ClassIndex::new(set);
        let (pos_classes, neg_classes) = (idx.pos_classes.len(), idx.neg_classes.len());
        if pos_classes == 0 {
            return Err(DataError::Invalid(format!(
                "triplets need a class with at least two images; none has{}",
                idx.describe_small(set)
            )));
        }
        if neg_classes < 2 {
            return Err(DataError::Invalid(format!(
                "triplets need at least two classes with images; the set has {}",
                neg_classes
            )));
        }
        Ok(Self {
            index: std::sync::Arc::new(idx),
            batch_size,
            seed,
        })
    }

    /// The batch at (`epoch`, `batch`).
    pub fn batch(&self, epoch: u64, batch: u64) -> TripletIndices {
        let d = &self.index;
        let mut rng = rng_for(self.seed, &[stream::SAMPLER, epoch, batch]);
        let n = self.batch_size;
        let mut t = TripletIndices {
            anchor: Vec::with_capacity(n),
            positive: Vec::with_capacity(n),
            negative: Vec::with_capacity(n),
        };
        for c in cycle_classes(&d.pos_classes, self.seed, epoch, batch * n as u64, n) {
            let (a, p) = two_of(&d.by_class[c], &mut rng);
            let o = d.other(c, &mut rng);
            t.anchor.push(a);
            t.positive.push(p);
            t.negative.push(d.one_of(o, &mut rng));
        }
        t
    }
}

/// P×K batches: P distinct classes, K images each (without replacement where the class has
/// K images or more, with replacement otherwise).
#[derive(Debug, Clone)]
pub struct PkSampler {
    index: std::sync::Arc<ClassIndex>,
    p: usize,
    k: usize,
    seed: u64,
}

impl PkSampler {
    /// P classes × K images per batch over `set`.
    pub fn new(set: &ImageSet, p: usize, k: usize, seed: u64) -> Result<Self> {
        if p < 2 || k < 2 {
            return Err(DataError::Invalid(format!(
                "P×K sampling needs P ≥ 2 classes and K ≥ 2 images per class; got P={p}, K={k}"
            )));
        }
        let idx = ClassIndex::new(set);
        let pos_classes = idx.pos_classes.len();
        if pos_classes < p {
            return Err(DataError::Invalid(format!(
                "P×K sampling with P={p} needs {p} classes with at least two images; the set has {}{}",
                pos_classes,
                idx.describe_small(set)
            )));
        }
        Ok(Self {
            index: std::sync::Arc::new(idx),
            p,
            k,
            seed,
        })
    }

    /// Classes per batch.
    pub fn p(&self) -> usize {
        self.p
    }

    /// Images per class.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The batch at (`epoch`, `batch`).
    pub fn batch(&self, epoch: u64, batch: u64) -> ClassIndices {
        let d = &self.index;
        let mut rng = rng_for(self.seed, &[stream::SAMPLER, epoch, batch]);
        let mut out = ClassIndices {
            indices: Vec::with_capacity(self.p * self.k),
            labels: Vec::with_capacity(self.p * self.k),
        };
        for c in cycle_classes(
            &d.pos_classes,
            self.seed,
            epoch,
            batch * self.p as u64,
            self.p,
        ) {
            let v = &d.by_class[c];
            if v.len() >= self.k {
                out.indices
                    .extend(v.choose_multiple(&mut rng, self.k).copied());
            } else {
                // Every image once, then random repeats: at least two distinct per class.
                let mut pick = v.clone();
                while pick.len() < self.k {
                    pick.push(*v.choose(&mut rng).expect("class has images"));
                }
                out.indices.extend(pick);
            }
            out.labels.extend(std::iter::repeat_n(c as u32, self.k));
        }
        out
    }
}

/// Batches of listed pairs: each epoch visits every pair once in a seeded order (the last
/// batch of an epoch wraps around to its start), `batch_size` pairs per batch.
#[derive(Debug, Clone)]
pub struct PairListSampler {
    pairs: std::sync::Arc<Vec<(usize, usize, f32)>>,
    batch_size: usize,
    seed: u64,
}

impl PairListSampler {
    /// `pairs` are (image, image, same) rows over the set the loader reads.
    pub fn new(pairs: Vec<(usize, usize, bool)>, batch_size: usize, seed: u64) -> Result<Self> {
        check_batch_size(batch_size)?;
        if pairs.is_empty() {
            return Err(DataError::Invalid(
                "the pair-list sampler has no training pair".into(),
            ));
        }
        Ok(Self {
            pairs: std::sync::Arc::new(
                pairs
                    .into_iter()
                    .map(|(a, b, s)| (a, b, f32::from(u8::from(s))))
                    .collect(),
            ),
            batch_size,
            seed,
        })
    }

    /// Pairs per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Listed pairs drawn from.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Never true (the constructor refuses an empty list).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The batch at (`epoch`, `batch`): a pure function of them and the seed.
    pub fn batch(&self, epoch: u64, batch: u64) -> PairIndices {
        let n = self.pairs.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.shuffle(&mut rng_for(self.seed, &[stream::SAMPLER, epoch]));
        let start = (batch as usize).wrapping_mul(self.batch_size) % n;
        let mut out = PairIndices {
            a: Vec::with_capacity(self.batch_size),
            b: Vec::with_capacity(self.batch_size),
            same: Vec::with_capacity(self.batch_size),
        };
        for j in 0..self.batch_size {
            let (a, b, s) = self.pairs[order[(start + j) % n] as usize];
            out.a.push(a);
            out.b.push(b);
            out.same.push(s);
        }
        out
    }
}
