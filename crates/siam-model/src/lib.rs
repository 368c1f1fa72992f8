//! siam-model: the part of siam other programs import. A [`SiameseModel`] embeds images with
//! one shared encoder, compares them by a distance, and calls a pair "same" at or below its
//! calibrated threshold. It knows nothing of datasets or training.
//!
//! - [`encoder`]: `seed-cnn` and `convnet`, PyTorch-default initialisation from a seed.
//! - [`distance`]: Euclidean `sqrt(Σ(a−b)² + ε)`, squared Euclidean, cosine; row-wise and pairwise.
//! - [`kernels`]: fast CPU convolution and fused ReLU + max-pooling (candle custom ops).
//! - [`loss`]: contrastive (argument `same`, never `label`), triplet, online mining, BCE.
//! - [`SiameseModel::save`] / [`SiameseModel::load`]: one `.safetensors` with JSON metadata.
//! - [`ood`]: the input check stored at training time ([`SiameseModel::input_warnings`]).
//! - [`Gallery`]: embeddings computed once and searched exactly, saved as safetensors.
//! - [`parse_device`]: "cpu", "cuda:0", "metal", "auto".
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use siam_model::{EncoderConfig, InputSpec, ModelConfig, SiameseModel};
//!
//! let config = ModelConfig {
//!     encoder: EncoderConfig::SeedCnn { embedding_dim: 16 },
//!     input: InputSpec::fashion_mnist(),
//!     normalize: true,
//!     distance: Default::default(),
//!     pair_head: false,
//!     test_time_flip: false,
//! };
//! let model = SiameseModel::new(&config, 42, &Device::Cpu)?;
//! let a = Tensor::zeros((1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
//! let b = Tensor::ones((1, 28, 28), candle_core::DType::F32, &Device::Cpu)?;
//! let c = model.compare(&a, &b)?;
//! assert!(c.distance > 0.0 && c.same.is_none()); // no threshold until calibrated
//!
//! // Losses take distances and `same` (1.0 = same class).
//! let d = Tensor::new(&[0.5f32, 1.5], &Device::Cpu)?;
//! let same = Tensor::new(&[1f32, 0.0], &Device::Cpu)?;
//! let loss = siam_model::loss::contrastive(&d, &same, 2.0)?.to_scalar::<f32>()?;
//! assert!((loss - (0.25 + 0.25) / 2.0).abs() < 1e-6);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod device;
pub mod distance;
pub mod encoder;
pub mod error;
pub mod gallery;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod ood;
pub mod pretrained;

pub use device::parse_device;
pub use distance::Distance;
pub use encoder::{EncoderConfig, InputSpec, Pooling, ReluActivity, ResnetConfig, Stem};
pub use error::{ModelError, Result};
pub use gallery::{Gallery, GalleryIdentity, Hit};
pub use model::{
    Comparison, DistanceQuantiles, FORMAT_VERSION, InputAdjustment, InputNotes, ModelConfig,
    ModelMeta, SiameseModel, read_model_meta,
};
pub use ood::{InputProfile, InputWarning};

/// Re-exported so users need not pin candle themselves.
pub use candle_core;
