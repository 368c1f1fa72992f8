//! The loader: turns sampler indices into candle tensors on a background thread, augmenting
//! images in parallel with rayon and keeping a bounded number of batches ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};
use crossbeam_channel::{Receiver, bounded};
use rayon::prelude::*;

use crate::augment::{AugmentConfig, Normalize};
use crate::error::{DataError, Result};
use crate::image_set::ImageSet;
use crate::rng::{rng_for, stream};
use crate::sampler::{BatchIndices, Sampler};

/// How an image becomes model input: u8 → f32 in [0, 1] → augmentation → normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    /// Random augmentation (use [`AugmentConfig::none`] for evaluation).
    pub augment: AugmentConfig,
    /// Normalisation applied last; `None` keeps [0, 1].
    pub normalize: Option<Normalize>,
    /// Seed of the augmentation stream.
    pub seed: u64,
    /// For two-view self-supervised training: a second view of every P×K image, drawn with
    /// this augmentation from its own stream (`Batch::Classes::views`). `None`: one view.
    pub second_view: Option<AugmentConfig>,
    /// The share of each class's images in a P×K batch that get the second view, in (0, 1]
    /// (1: every image; see [`second_view_rows`]).
    pub second_view_fraction: f64,
}

impl Transform {
    /// Deterministic preprocessing: normalisation only.
    pub fn eval(normalize: Option<Normalize>) -> Self {
        Self {
            augment: AugmentConfig::none(),
            normalize,
            seed: 0,
            second_view: None,
            second_view_fraction: 1.0,
        }
    }

    /// Writes image `i` of `set`, transformed, into `out`; the randomness derives from
    /// (seed, `epoch`, `slot`) alone.
    pub fn write(
        &self,
        set: &ImageSet,
        i: usize,
        epoch: u64,
        slot: u64,
        out: &mut [f32],
        scratch: &mut Vec<f32>,
    ) {
        self.write_view(set, i, (epoch, slot), out, scratch, None);
    }

    /// [`Transform::write`] for the first view (`view = None`) or the second view drawn with
    /// `view`'s augmentation from the second-view stream.
    fn write_view(
        &self,
        set: &ImageSet,
        i: usize,
        (epoch, slot): (u64, u64),
        out: &mut [f32],
        scratch: &mut Vec<f32>,
        view: Option<&AugmentConfig>,
    ) {
        set.write_f32(i, out);
        let shape = set.shape();
        let (augment, tag) = match view {
            None => (&self.augment, stream::AUGMENT),
            Some(a) => (a, stream::SECOND_VIEW),
        };
        if !augment.is_identity() {
            scratch.resize(out.len(), 0.0);
            let mut rng = rng_for(self.seed, &[tag, epoch, slot]);
            augment.apply(out, scratch, shape, &mut rng);
        }
        if let Some(n) = &self.normalize {
            n.apply(out, shape);
        }
    }

    /// The images at `indices` as an (N, C, H, W) tensor; image `j` uses slot `first_slot + j`.
    pub fn tensor(
        &self,
        set: &ImageSet,
        indices: &[usize],
        epoch: u64,
        first_slot: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let items: Vec<(usize, u64)> = (first_slot..)
            .zip(indices)
            .map(|(slot, &i)| (i, slot))
            .collect();
        self.tensor_view(set, &items, epoch, device, None)
    }

    /// The images of `items` (image index, slot) as an (N, C, H, W) tensor.
    fn tensor_view(
        &self,
        set: &ImageSet,
        items: &[(usize, u64)],
        epoch: u64,
        device: &Device,
        view: Option<&AugmentConfig>,
    ) -> Result<Tensor> {
        let s = set.shape();
        let n = s.numel();
        let mut buf = vec![0f32; items.len() * n];
        buf.par_chunks_mut(n).zip(items.par_iter()).for_each_init(
            Vec::new,
            |scratch, (out, &(i, slot))| {
                self.write_view(set, i, (epoch, slot), out, scratch, view);
            },
        );
        Ok(Tensor::from_vec(
            buf,
            (items.len(), s.channels, s.height, s.width),
            device,
        )?)
    }
}

/// The rows of a P×K batch with `labels` that get a second view when a `fraction` of each
/// class's images does: per class, its first round(fraction · count) images in batch order
/// (at least one), returned in batch order. A fraction of 1 (or more) gives every row.
pub fn second_view_rows(labels: &[u32], fraction: f64) -> Vec<usize> {
    if fraction >= 1.0 {
        return (0..labels.len()).collect();
    }
    use std::collections::HashMap;
    let mut count: HashMap<u32, usize> = HashMap::new();
    for &l in labels {
        *count.entry(l).or_default() += 1;
    }
    let mut taken: HashMap<u32, usize> = HashMap::new();
    labels
        .iter()
        .enumerate()
        .filter(|&(_, l)| {
            let want = ((fraction * count[l] as f64).round() as usize).max(1);
            let t = taken.entry(*l).or_default();
            *t += 1;
            *t <= want
        })
        .map(|(r, _)| r)
        .collect()
}

/// A batch of model inputs.
#[derive(Debug, Clone)]
pub enum Batch {
    /// Pairs: `a`, `b` are (N, C, H, W); `same` is (N,) f32, 1.0 for same-class pairs.
    Pairs {
        /// Left images.
        a: Tensor,
        /// Right images.
        b: Tensor,
        /// 1.0 for a same-class pair, 0.0 otherwise.
        same: Tensor,
    },
    /// Triplets, each (N, C, H, W).
    Triplets {
        /// Anchors.
        anchor: Tensor,
        /// Positives.
        positive: Tensor,
        /// Negatives.
        negative: Tensor,
    },
    /// P×K images (N, C, H, W) with labels (N,) u32.
    Classes {
        /// Images, class after class.
        images: Tensor,
        /// Class labels.
        labels: Tensor,
        /// A second view (M, C, H, W) of the images at `view_rows`, when the transform asks
        /// for one.
        views: Option<Tensor>,
        /// The rows of `images` that `views` shows again, in order (every row at the default
        /// fraction of 1; empty without views).
        view_rows: Vec<usize>,
    },
}

/// A batch and where it sits in the run.
#[derive(Debug, Clone)]
pub struct LoadedBatch {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Batch within the epoch, from 0.
    pub index: u64,
    /// The sampled indices.
    pub indices: BatchIndices,
    /// The tensors.
    pub batch: Batch,
}

/// Builds the tensors of one batch (used by the loader thread, and directly in tests).
pub fn materialize(
    set: &ImageSet,
    indices: &BatchIndices,
    transform: &Transform,
    epoch: u64,
    batch: u64,
    per_batch: usize,
    device: &Device,
) -> Result<Batch> {
    let base = batch * per_batch as u64;
    let t = |idx: &[usize], part: u64| transform.tensor(set, idx, epoch, base + part, device);
    Ok(match indices {
        BatchIndices::Pairs(p) => {
            let n = p.a.len() as u64;
            Batch::Pairs {
                a: t(&p.a, 0)?,
                b: t(&p.b, n)?,
                same: Tensor::from_slice(&p.same, p.same.len(), device)?,
            }
        }
        BatchIndices::Triplets(tr) => {
            let n = tr.anchor.len() as u64;
            Batch::Triplets {
                anchor: t(&tr.anchor, 0)?,
                positive: t(&tr.positive, n)?,
                negative: t(&tr.negative, 2 * n)?,
            }
        }
        BatchIndices::Classes(c) => {
            let (views, view_rows) = match &transform.second_view {
                Some(v) => {
                    // A view keeps its image's slot, on the second view's own stream.
                    let rows = second_view_rows(&c.labels, transform.second_view_fraction);
                    let items: Vec<(usize, u64)> = rows
                        .iter()
                        .map(|&r| (c.indices[r], base + r as u64))
                        .collect();
                    let views = transform.tensor_view(set, &items, epoch, device, Some(v))?;
                    (Some(views), rows)
                }
                None => (None, Vec::new()),
            };
            Batch::Classes {
                images: t(&c.indices, 0)?,
                labels: Tensor::from_slice(&c.labels, c.labels.len(), device)?,
                views,
                view_rows,
            }
        }
    })
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Batches in one epoch.
    pub batches_per_epoch: u64,
    /// Stop after this many epochs (`None`: run until dropped).
    pub epochs: Option<u64>,
    /// First (epoch, batch) to produce: (0, 0) for a fresh run, later to resume.
    pub start: (u64, u64),
    /// Batches kept ready ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// rayon threads for augmentation (`None`: rayon's global pool).
    pub threads: Option<usize>,
    /// Device the tensors are created on.
    pub device: Device,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batches_per_epoch: 100,
            epochs: None,
            start: (0, 0),
            prefetch: 4,
            threads: None,
            device: Device::Cpu,
        }
    }
}

/// A background loader; iterate it for batches in (epoch, batch) order. Dropping it stops the
/// thread.
pub struct Loader {
    rx: Option<Receiver<Result<LoadedBatch>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts the loader thread.
    pub fn spawn(
        set: ImageSet,
        sampler: Sampler,
        transform: Transform,
        cfg: LoaderConfig,
    ) -> Result<Self> {
        if cfg.batches_per_epoch == 0 {
            return Err(DataError::Invalid(
                "an epoch needs at least one batch".into(),
            ));
        }
        if let Some(n) = &transform.normalize {
            n.validate(set.shape().channels)?;
        }
        transform.augment.validate()?;
        if let Some(v) = &transform.second_view {
            v.validate()?;
            let f = transform.second_view_fraction;
            if !(f > 0.0 && f <= 1.0) {
                return Err(DataError::Invalid(format!(
                    "the second view's fraction must be in (0, 1], got {f}"
                )));
            }
        }
        let pool = match cfg.threads {
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n.max(1))
                    .thread_name(|i| format!("siam-aug-{i}"))
                    .build()
                    .map_err(|e| {
                        DataError::Invalid(format!("cannot start {n} loader threads: {e}"))
                    })?,
            ),
            None => None,
        };
        let (tx, rx) = bounded(cfg.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("siam-loader".into())
            .spawn(move || {
                let per_batch = sampler.images_per_batch();
                let (mut epoch, mut b) = cfg.start;
                while !stop2.load(Ordering::Relaxed) && cfg.epochs.is_none_or(|e| epoch < e) {
                    let indices = sampler.batch(epoch, b);
                    let work = || {
                        materialize(&set, &indices, &transform, epoch, b, per_batch, &cfg.device)
                    };
                    let batch = match &pool {
                        Some(p) => p.install(work),
                        None => work(),
                    };
                    let item = batch.map(|batch| LoadedBatch {
                        epoch,
                        index: b,
                        indices,
                        batch,
                    });
                    let failed = item.is_err();
                    if tx.send(item).is_err() || failed {
                        break;
                    }
                    b += 1;
                    if b == cfg.batches_per_epoch {
                        b = 0;
                        epoch += 1;
                    }
                }
            })
            .map_err(|e| DataError::Invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            rx: Some(rx),
            stop,
            handle: Some(handle),
        })
    }
}

impl Iterator for Loader {
    type Item = Result<LoadedBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver unblocks a thread waiting to send.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::second_view_rows;

    #[test]
    fn second_view_rows_take_each_class_s_first_images_in_batch_order() {
        let pk = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2];
        assert_eq!(second_view_rows(&pk, 1.0), (0..12).collect::<Vec<_>>());
        assert_eq!(second_view_rows(&pk, 0.5), [0, 1, 4, 5, 8, 9]);
        assert_eq!(second_view_rows(&pk, 0.25), [0, 4, 8]);
        // Rounded to the nearest count, never below one a class.
        assert_eq!(second_view_rows(&pk, 0.01), [0, 4, 8]);
        assert_eq!(second_view_rows(&pk, 0.6), [0, 1, 4, 5, 8, 9]);
        let twelve = [7u32; 12];
        assert_eq!(second_view_rows(&twelve, 0.33).len(), 4);
        // Classes interleaved and of unequal counts.
        assert_eq!(second_view_rows(&[3, 1, 3, 1, 3, 3], 0.5), [0, 1, 2]);
        assert!(second_view_rows(&[], 0.5).is_empty());
    }
}
