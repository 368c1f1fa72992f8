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

/// The distance of every listed pair; each image is decoded and embedded once, 256 at a time.
pub fn list_distances(model: &SiameseModel, list: &PairList) -> Result<Vec<f32>> {
    let (images, idx) = list.images();
    let mut emb = Vec::with_capacity(images.len());
    for chunk in images.chunks(256) {
        let xs = chunk
            .iter()
            .map(|p| model.load_image(p))
            .collect::<siam_model::Result<Vec<_>>>()?;
        let e = model.embed(&candle_core::Tensor::cat(&xs, 0)?)?;
        emb.push(e);
    }
    let emb = candle_core::Tensor::cat(&emb, 0)?;
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

/// Evaluates `model` on the listed pairs; `folds` asks for the k-fold protocol over K
/// contiguous folds when the list has no fold column (a list with one must agree with it).
pub fn eval_pair_list(
    model: &SiameseModel,
    list: &PairList,
    folds: Option<usize>,
    calibration: Calibration,
) -> Result<PairListEval> {
    let d = list_distances(model, list)?;
    let same: Vec<f32> = list.pairs.iter().map(|p| f32::from(p.same)).collect();
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
