//! siam-data: the data side of siam. It reads datasets into an [`ImageSet`], splits them,
//! samples pairs, triplets or P×K batches from seeded RNG streams, augments images and feeds
//! candle tensors from a background loader. It knows nothing of models.
//!
//! - [`idx`]: MNIST-family IDX files (raw or gzip), validated; [`folder`]: `root/<class>/*.png`.
//! - [`pair_list`]: the user's own verification pairs (CSV/TSV with a header, LFW's `pairs.txt`).
//! - [`split`]: stratified train/validation and class-disjoint splits.
//! - [`sampler`]: [`PairSampler`], [`TripletSampler`], [`PkSampler`]; a batch is a pure
//!   function of (seed, epoch, batch index).
//! - [`augment`]: flip, rotation, affine, crop with padding, normalisation on f32 CHW.
//! - [`loader`]: [`Loader`] materialises batches in parallel on a background thread.
//! - [`rng`]: the seeded ChaCha streams every random draw comes from.
//!
//! ```
//! use siam_data::{ImageSet, ImageShape, SamplerConfig, Transform, loader::materialize};
//! use candle_core::Device;
//!
//! // Eight 2×2 gray images in two classes.
//! let shape = ImageShape { channels: 1, height: 2, width: 2 };
//! let set = ImageSet::new(vec![0; 32], vec![0, 0, 0, 0, 1, 1, 1, 1], shape, vec!["a".into(), "b".into()])?;
//! let sampler = SamplerConfig::default().build(&set, 4, 42)?;
//! let idx = sampler.batch(0, 0);
//! let batch = materialize(&set, &idx, &Transform::eval(None), 0, 0, sampler.images_per_batch(), &Device::Cpu)?;
//! if let siam_data::Batch::Pairs { a, same, .. } = batch {
//!     assert_eq!(a.dims(), &[4, 1, 2, 2]);
//!     assert_eq!(same.to_vec1::<f32>()?.iter().sum::<f32>(), 2.0); // half are same-class
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod augment;
pub mod error;
pub mod folder;
mod fsutil;
#[cfg(feature = "hub")]
pub mod hub;
pub mod idx;
pub mod image_set;
pub mod loader;
pub mod pair_list;
pub mod rng;
pub mod sampler;
pub mod split;

pub use augment::{AugmentConfig, Normalize};
pub use error::{DataError, Result};
pub use folder::{ColorMode, FolderOptions, FolderSet, load_folder};
pub use fsutil::write_atomic;
pub use image_set::{ImageSet, ImageShape};
pub use loader::{Batch, LoadedBatch, Loader, LoaderConfig, Transform};
pub use sampler::{
    BatchIndices, ClassIndices, PairIndices, PairListSampler, PairSampler, PkSampler, Sampler,
    SamplerConfig, TripletIndices, TripletSampler,
};
