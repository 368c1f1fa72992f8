//! Evaluation on the user's own pair list (`siam eval --pairs LIST`): verification figures on
//! exactly the listed pairs, and the k-fold protocol (LFW's) when the list has folds or K is
//! given.

use std::path::PathBuf;

use siam_data::pair_list::PairList;
use siam_eval::{Calibration, KFoldReport, VerificationReport};
use siam_model::SiameseModel;

use crate::error::{Result, TrainError};

/// The figures of one pair list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairListEval {
    /// The list.
    pub list: PathBuf,
    /// Pairs evaluated.
    pub pairs: usize,
    /// Distinct images embedded (each once).
    pub images: usize,
    /// Verification on every listed pair, accuracies at the model's stored threshold (or
    /// the best one on these pairs when it has none).
    pub verification: VerificationReport,
    /// `model` or `calibrated-on-these-pairs`.
    pub threshold_source: &'static str,
    /// The k-fold protocol, when asked for or when the list has folds.
    pub kfold: Option<KFoldReport>,
}

/// The list's images, each decoded once, as the model takes them (its colour and size),
/// labelled by their `same` component.
pub fn list_set(model: &SiameseModel, list: &PairList) -> Result<siam_data::ImageSet> {
    let input = &model.config().input;
    let color = if input.channels == 3 {
        siam_data::ColorMode::Rgb
    } else {
        siam_data::ColorMode::Gray
    };
    crate::data::list_images(list, color, Some([input.height, input.width]))
}

/// The distance of every listed pair, from `set` = [`list_set`] of the same list: each image
/// embedded once, 512 at a time.
pub fn set_distances(
    model: &SiameseModel,
    set: &siam_data::ImageSet,
    list: &PairList,
) -> Result<Vec<f32>> {
    let transform = crate::evaluate::eval_transform(&model.config().input);
    let emb = crate::evaluate::embed_set(model, set, &transform, 512)?;
    let (_, idx) = list.images();
    let ia: Vec<u32> = idx.iter().map(|&(a, _)| a as u32).collect();
    let ib: Vec<u32> = idx.iter().map(|&(_, b)| b as u32).collect();
    let dev = emb.device().clone();
    let ea = emb.index_select(&candle_core::Tensor::new(ia.as_slice(), &dev)?, 0)?;
    let eb = emb.index_select(&candle_core::Tensor::new(ib.as_slice(), &dev)?, 0)?;
    Ok(model
        .distance(&ea, &eb)?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1()?)
}

/// The distance of every listed pair; each image is decoded and embedded once.
pub fn list_distances(model: &SiameseModel, list: &PairList) -> Result<Vec<f32>> {
    set_distances(model, &list_set(model, list)?, list)
}

/// Evaluates `model` on the listed pairs; `folds` asks for the k-fold protocol over K
/// contiguous folds when the list has no fold column (a list with one must agree with it).
pub fn eval_pair_list(
    model: &SiameseModel,
    list: &PairList,
    folds: Option<usize>,
    calibration: Calibration,
) -> Result<PairListEval> {
    let d = list_distances(model, list)?;
    let same: Vec<f32> = list
        .verdicts()?
        .into_iter()
        .map(|s| f32::from(u8::from(s)))
        .collect();
    let threshold = model.meta().threshold;
    let verification = siam_eval::verification(&d, &same, threshold)
        .map_err(|e| TrainError::Config(format!("{}: {e}", list.path.display())))?;
    let fold_of: Option<Vec<usize>> = match (folds, list.folds) {
        (Some(k), 0) => {
            if k < 2 || k > list.len() {
                return Err(TrainError::Config(format!(
                    "--folds {k}: between 2 and the {} pairs of {}",
                    list.len(),
                    list.path.display()
                )));
            }
            Some(siam_eval::verification::contiguous_folds(list.len(), k))
        }
        (Some(k), n) if k != n => {
            return Err(TrainError::Config(format!(
                "--folds {k}, but {} defines {n} folds",
                list.path.display()
            )));
        }
        (_, 0) => None,
        (_, _) => Some(list.pairs.iter().map(|p| p.fold.unwrap_or(0)).collect()),
    };
    let kfold = match fold_of {
        Some(f) => Some(
            siam_eval::kfold(&d, &same, &f, calibration)
                .map_err(|e| TrainError::Config(format!("{}: {e}", list.path.display())))?,
        ),
        None => None,
    };
    let (images, _) = list.images();
    Ok(PairListEval {
        list: list.path.clone(),
        pairs: list.len(),
        images: images.len(),
        verification,
        threshold_source: if threshold.is_some() {
            "model"
        } else {
            "calibrated-on-these-pairs"
        },
        kfold,
    })
}

/// One verdict of [`compare_list`].
#[derive(Debug, Clone, PartialEq)]
pub struct PairVerdict {
    /// The pair's index in the list.
    pub index: usize,
    /// The distance between the two embeddings.
    pub distance: f32,
    /// The model's threshold (none for an uncalibrated model).
    pub threshold: Option<f32>,
    /// `distance <= threshold` (as [`SiameseModel::compare`]), when there is a threshold.
    pub same: Option<bool>,
}

/// Decides every listed pair, in list order, `chunk` pairs at a time: each image is decoded
/// and embedded once, when its first pair comes, and forgotten after its last, so memory
/// holds only the images still to be used. `on` gets each chunk's verdicts as they are ready
/// and the number of pairs done so far; it returns false to stop there. Returns the number
/// of pairs decided.
pub fn compare_list(
    model: &SiameseModel,
    list: &PairList,
    chunk: usize,
    on: &mut dyn FnMut(&[PairVerdict], usize) -> bool,
) -> Result<usize> {
    use rayon::prelude::*;
    let (images, idx) = list.images();
    let mut last_use = vec![0usize; images.len()];
    for (p, &(a, b)) in idx.iter().enumerate() {
        last_use[a] = p;
        last_use[b] = p;
    }
    let threshold = model.meta().threshold;
    let dev = model.device().clone();
    let mut cache: std::collections::HashMap<usize, candle_core::Tensor> =
        std::collections::HashMap::new();
    let chunk = chunk.max(1);
    for start in (0..idx.len()).step_by(chunk) {
        let end = (start + chunk).min(idx.len());
        let mut new: Vec<usize> = Vec::new();
        for &(a, b) in &idx[start..end] {
            for i in [a, b] {
                if !cache.contains_key(&i) && !new.contains(&i) {
                    new.push(i);
                }
            }
        }
        for part in new.chunks(256) {
            let xs = part
                .par_iter()
                .map(|&i| model.load_image(&images[i]))
                .collect::<siam_model::Result<Vec<_>>>()?;
            let e = model.embed(&candle_core::Tensor::cat(&xs, 0)?)?;
            for (j, &i) in part.iter().enumerate() {
                cache.insert(i, e.get(j)?);
            }
        }
        let rows = |pick: fn(&(usize, usize)) -> usize| -> Result<candle_core::Tensor> {
            let v = idx[start..end]
                .iter()
                .map(|p| cache[&pick(p)].clone())
                .collect::<Vec<_>>();
            Ok(candle_core::Tensor::stack(&v, 0)?.to_device(&dev)?)
        };
        let d: Vec<f32> = model
            .distance(&rows(|p| p.0)?, &rows(|p| p.1)?)?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1()?;
        let verdicts: Vec<PairVerdict> = d
            .into_iter()
            .enumerate()
            .map(|(j, distance)| PairVerdict {
                index: start + j,
                distance,
                threshold,
                same: threshold.map(|t| distance <= t),
            })
            .collect();
        cache.retain(|&i, _| last_use[i] >= end);
        if !on(&verdicts, end) {
            return Ok(end);
        }
    }
    Ok(idx.len())
}
