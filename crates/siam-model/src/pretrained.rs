//! Pretrained backbones: a torchvision or timm ResNet state dict, saved as safetensors, loaded
//! into a [`SiameseModel`]'s ResNet encoder.
//!
//! torchvision's `resnet18`/`resnet34` and timm's (`resnet18.a1_in1k`, `resnet18.tv_in1k`, …)
//! name their tensors alike: `conv1.weight`, `bn1.{weight,bias,running_mean,running_var}`,
//! `layerS.B.conv1.weight`, `layerS.B.downsample.{0,1}.*`, `fc.*`. They map one to one onto
//! the encoder's variables (`encoder.` + the name). A wrapper's prefix (`module.` from
//! DataParallel, `model.` or `backbone.` from a training script) is removed first. The
//! classifier `fc.*` and `num_batches_tracked` counters are ignored; every other tensor must
//! match a variable and every backbone variable must be in the file, each with the same shape:
//! otherwise the error names every missing, unexpected and mismatched tensor and nothing is
//! loaded. The projection head (`head.*`) keeps its initial weights.
//!
//! To make such a file in PyTorch:
//!
//! ```python
//! import torchvision, safetensors.torch
//! m = torchvision.models.resnet18(weights="IMAGENET1K_V1")
//! safetensors.torch.save_file(m.state_dict(), "resnet18.safetensors")
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::model::SiameseModel;

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretrainedLoad {
    /// Backbone tensors loaded.
    pub loaded: usize,
    /// Tensors of the file not used (the classifier, BatchNorm batch counters), by name.
    pub ignored: Vec<String>,
    /// The prefix removed from every name (`module.`, …), if any.
    pub stripped_prefix: Option<String>,
}

/// Prefixes training wrappers put before every name.
const WRAPPERS: [&str; 4] = ["module.", "model.", "backbone.", "encoder."];

/// True for a model variable of the backbone: every encoder variable but the projection head
/// (`encoder.head.*`). What a pretrained file fills, and what `[finetune]` freezes.
pub fn is_backbone(name: &str) -> bool {
    name.starts_with("encoder.") && !name.starts_with("encoder.head.")
}

/// True for tensors a backbone never needs: the classifier and the batch counters.
fn ignored(name: &str) -> bool {
    name.starts_with("fc.") || name == "fc" || name.ends_with(".num_batches_tracked")
}

/// Maps a state dict's names onto the encoder's: strips a wrapper prefix shared by every name.
/// Returns the names by encoder variable, the ignored names and the prefix.
pub fn map_names(names: &[String]) -> (BTreeMap<String, String>, Vec<String>, Option<String>) {
    let mut prefix = None;
    let mut stripped: Vec<(String, String)> =
        names.iter().map(|n| (n.clone(), n.clone())).collect();
    // Strip repeatedly (`module.model.` from a wrapped wrapper), only when all names share it.
    while let Some(p) = WRAPPERS
        .iter()
        .find(|p| !stripped.is_empty() && stripped.iter().all(|(_, s)| s.starts_with(*p)))
    {
        for (_, s) in &mut stripped {
            *s = s[p.len()..].to_string();
        }
        prefix = Some(format!("{}{p}", prefix.unwrap_or_default()));
    }
    let mut map = BTreeMap::new();
    let mut skipped = Vec::new();
    for (orig, s) in stripped {
        if ignored(&s) {
            skipped.push(orig);
        } else {
            map.insert(format!("encoder.{s}"), orig);
        }
    }
    skipped.sort();
    (map, skipped, prefix)
}

/// Loads the backbone weights in `path` into `model`'s ResNet encoder (see the module's
/// documentation); on any mismatch nothing is loaded and the error names every problem.
pub fn load_backbone(model: &SiameseModel, path: &Path) -> Result<PretrainedLoad> {
    if model.config().encoder.resnet().is_none() {
        return Err(ModelError::file(
            path,
            format!(
                "pretrained weights load into a resnet18 or resnet34 encoder, not {}",
                model.config().encoder.kind()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| ModelError::file(path, e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::file(path, format!("not a safetensors file: {e}")))?;
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    let (map, skipped, prefix) = map_names(&names);
    let data = model
        .varmap()
        .data()
        .lock()
        .map_err(|_| ModelError::Config("var map poisoned".into()))?;
    let mut wanted: Vec<&String> = data.keys().filter(|k| is_backbone(k)).collect();
    wanted.sort();
    // Missing and unexpected tensors first (the layout differs), then shape mismatches.
    let mut problems = Vec::new();
    let mut shapes = Vec::new();
    for name in &wanted {
        let short = &name["encoder.".len()..];
        match map.get(*name) {
            None => problems.push(format!("missing {short}")),
            Some(orig) => {
                let view = st
                    .tensor(orig)
                    .map_err(|e| ModelError::file(path, format!("{orig}: {e}")))?;
                let want = data[*name].dims();
                if view.shape() != want {
                    shapes.push(format!(
                        "{orig} has shape {:?}, the encoder needs {want:?}",
                        view.shape()
                    ));
                }
            }
        }
    }
    let known: std::collections::HashSet<&String> = wanted.iter().copied().collect();
    for (enc, orig) in &map {
        if !known.contains(enc) {
            problems.push(format!("unexpected {orig}"));
        }
    }
    problems.extend(shapes);
    if !problems.is_empty() {
        let n = problems.len();
        let mut shown: Vec<String> = problems.into_iter().take(40).collect();
        if n > 40 {
            shown.push(format!("… and {} more", n - 40));
        }
        return Err(ModelError::file(
            path,
            format!(
                "not a {} backbone for this encoder ({n} problems; nothing was loaded): {}",
                model.config().encoder.kind(),
                shown.join("; ")
            ),
        ));
    }
    // Read everything first, then set: a failure leaves the model as it was.
    let loaded: HashMap<String, Tensor> =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| ModelError::file(path, format!("cannot read tensors: {e}")))?;
    let mut values = Vec::with_capacity(wanted.len());
    for name in &wanted {
        let t = loaded[&map[*name]]
            .to_dtype(DType::F32)?
            .to_device(data[*name].device())?
            .to_dtype(data[*name].dtype())?;
        let m: f32 = t.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar()?;
        if !m.is_finite() {
            return Err(ModelError::file(
                path,
                format!(
                    "{} holds NaN or infinite values; nothing was loaded",
                    map[*name]
                ),
            ));
        }
        values.push(t);
    }
    for (name, t) in wanted.iter().zip(values) {
        data[*name].set(&t)?;
    }
    Ok(PretrainedLoad {
        loaded: wanted.len(),
        ignored: skipped,
        stripped_prefix: prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn torchvision_and_timm_names_map_one_to_one() {
        let n = names(&[
            "conv1.weight",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer2.0.downsample.1.weight",
            "fc.weight",
            "fc.bias",
        ]);
        let (map, skipped, prefix) = map_names(&n);
        assert_eq!(prefix, None);
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            [
                "encoder.bn1.running_var",
                "encoder.conv1.weight",
                "encoder.layer2.0.downsample.1.weight"
            ]
        );
        assert_eq!(skipped, ["bn1.num_batches_tracked", "fc.bias", "fc.weight"]);
    }

    #[test]
    fn wrapper_prefixes_shared_by_every_name_are_removed() {
        let n = names(&["module.model.conv1.weight", "module.model.fc.bias"]);
        let (map, skipped, prefix) = map_names(&n);
        assert_eq!(prefix.as_deref(), Some("module.model."));
        assert_eq!(map["encoder.conv1.weight"], "module.model.conv1.weight");
        assert_eq!(skipped, ["module.model.fc.bias"]);
        // Not shared by every name: kept, so the name shows up as unexpected.
        let n = names(&["module.conv1.weight", "bn1.weight"]);
        let (map, _, prefix) = map_names(&n);
        assert_eq!(prefix, None);
        assert!(map.contains_key("encoder.module.conv1.weight"));
    }
}
