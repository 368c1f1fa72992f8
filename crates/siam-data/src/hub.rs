//! MNIST and Fashion-MNIST from the Hugging Face hub through candle-datasets (feature `hub`).
//! The default build does not include it: it pulls about 200 crates and needs the network.

use candle_core::{DType, Tensor};

use crate::error::{DataError, Result};
use crate::idx::{FASHION_MNIST_CLASSES, MNIST_CLASSES};
use crate::image_set::{ImageSet, ImageShape};

/// A dataset the hub loader knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubDataset {
    /// `ylecun/mnist`.
    Mnist,
    /// `zalando-datasets/fashion_mnist`.
    FashionMnist,
}

/// Downloads (or takes from the hub cache) a dataset and returns (train, test).
pub fn load(which: HubDataset) -> Result<(ImageSet, ImageSet)> {
    let (ds, names) = match which {
        HubDataset::Mnist => (candle_datasets::vision::mnist::load(), MNIST_CLASSES),
        HubDataset::FashionMnist => (
            candle_datasets::vision::fashion_mnist::load(),
            FASHION_MNIST_CLASSES,
        ),
    };
    let ds = ds.map_err(|e| DataError::Invalid(format!("hub download failed: {e}")))?;
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    Ok((
        convert(&ds.train_images, &ds.train_labels, names.clone())?,
        convert(&ds.test_images, &ds.test_labels, names)?,
    ))
}

/// Converts candle-datasets' (N, 784) f32 images in [0, 1] and (N,) u8 labels to an `ImageSet`.
pub fn convert(images: &Tensor, labels: &Tensor, class_names: Vec<String>) -> Result<ImageSet> {
    let (n, d) = images.dims2()?;
    let side = (d as f64).sqrt() as usize;
    if side * side != d {
        return Err(DataError::Invalid(format!(
            "hub images have {d} values, not a square"
        )));
    }
    let px: Vec<u8> = (images * 255.0)?
        .round()?
        .clamp(0.0, 255.0)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    let labels: Vec<u32> = labels.to_dtype(DType::U32)?.to_vec1()?;
    if labels.len() != n {
        return Err(DataError::Invalid(format!(
            "{} hub labels for {n} images",
            labels.len()
        )));
    }
    ImageSet::new(
        px,
        labels,
        ImageShape {
            channels: 1,
            height: side,
            width: side,
        },
        class_names,
    )
}
