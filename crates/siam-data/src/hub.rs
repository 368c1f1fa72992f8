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

/// The hub repository of a timm model name: `resnet18.a1_in1k` → `timm/resnet18.a1_in1k`; a
/// name with an owner (`someone/resnet18`) is taken as it is.
pub fn timm_repo(name: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("timm/{name}")
    }
}

/// The local path of a timm model's `model.safetensors` (its state dict): from the hub's
/// cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) when it is
/// there, else downloaded into it.
pub fn timm_weights(name: &str) -> Result<std::path::PathBuf> {
    timm_weights_in(name, None)
}

/// [`timm_weights`] with the hub cache in `cache` (else where the environment says).
pub fn timm_weights_in(name: &str, cache: Option<&std::path::Path>) -> Result<std::path::PathBuf> {
    const FILE: &str = "model.safetensors";
    let repo_id = timm_repo(name);
    let (owner, model) = hf_hub::split_id(&repo_id);
    if owner.is_empty() || model.is_empty() || name.trim() != name {
        return Err(DataError::Invalid(format!(
            "'{name}' is not a timm model name (for example resnet18.a1_in1k)"
        )));
    }
    let mut builder = hf_hub::HFClient::builder();
    if let Some(dir) = cache {
        builder = builder.cache_dir(dir);
    }
    let client = builder
        .build_sync()
        .map_err(|e| DataError::Invalid(format!("the hub client could not start: {e}")))?;
    let repo = client.model(owner, model);
    let download = repo.download_file().filename(FILE).revision("main");
    let got = match download.clone().local_files_only(true).send() {
        Err(hf_hub::HFError::LocalEntryNotFound { .. }) => download.send(),
        cached => cached,
    };
    got.map_err(|e| {
        DataError::Invalid(format!(
            "{FILE} of {repo_id} is not in the hub cache and could not be downloaded: {e} (offline, save the file and give its path instead)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cached `model.safetensors` is found without the network, in the hub's own cache
    /// layout (`models--OWNER--NAME/refs/main` naming the snapshot).
    #[test]
    fn timm_weights_come_from_the_hub_cache() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "0123456789abcdef0123456789abcdef01234567";
        let repo = dir.path().join("models--timm--resnet18.tv_in1k");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), hash).unwrap();
        let snap = repo.join("snapshots").join(hash);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("model.safetensors"), b"weights").unwrap();
        let got = timm_weights_in("resnet18.tv_in1k", Some(dir.path())).unwrap();
        assert_eq!(std::fs::read(&got).unwrap(), b"weights");
        assert_eq!(timm_repo("resnet18.tv_in1k"), "timm/resnet18.tv_in1k");
        assert_eq!(timm_repo("me/resnet18"), "me/resnet18");
        for bad in ["", " resnet18", "/resnet18", "timm/"] {
            let e = timm_weights_in(bad, Some(dir.path()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("is not a timm model name"), "{bad:?}: {e}");
        }
    }
}
