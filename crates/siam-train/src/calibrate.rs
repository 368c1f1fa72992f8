//! Recalibrating a trained model (`siam calibrate`): a new decision threshold, the distance
//! quantiles `siam compare` ranks against, and a refitted input check, from a dataset's
//! validation split, an image folder, or the user's own pair list.

use siam_data::pair_list::PairList;
use siam_eval::Calibration;
use siam_model::{DistanceQuantiles, InputProfile, SiameseModel};

use crate::error::{Result, TrainError};
use crate::evaluate::{EvalSpec, eval_pairs, eval_transform, evaluate, fit_input_profile};

/// What a calibration found; [`Calibrated::apply`] writes it into a model.
#[derive(Debug, Clone)]
pub struct Calibrated {
    /// The new threshold.
    pub threshold: f32,
    /// The model's threshold before.
    pub previous: Option<f32>,
    /// Pairs it was calibrated on.
    pub pairs: usize,
    /// Balanced accuracy at the new threshold on those pairs.
    pub balanced_accuracy: f64,
    /// ROC-AUC on those pairs.
    pub roc_auc: f64,
    /// What the pairs came from, for the user.
    pub description: String,
    quantiles: Option<DistanceQuantiles>,
    profile: Option<InputProfile>,
}

impl Calibrated {
    /// Stores the threshold, the quantiles and (when one was fitted) the input profile.
    pub fn apply(&self, model: &mut SiameseModel) {
        let meta = model.meta_mut();
        meta.threshold = Some(self.threshold);
        meta.distance_quantiles = self.quantiles.clone();
        if let Some(p) = &self.profile {
            meta.input_profile = Some(p.clone());
        }
    }
}

/// Calibrates on `pairs` balanced pairs from `source`: the validation split training would
/// use for a dataset with a test split (fixtures, fashion-mnist, mnist, an IDX directory), or
/// the whole of an image folder (it is the calibration set given). The input check is
/// refitted on the same images.
pub fn on_data(
    model: &SiameseModel,
    source: &str,
    pairs: usize,
    seed: u64,
    method: Calibration,
) -> Result<Calibrated> {
    let input = model.config().input.clone();
    let dcfg = crate::data::data_config_for(source, &input);
    let (description, all, test) = crate::data::load_source(&dcfg)?;
    let (set, description) = match test {
        Some(_) => {
            let ds = crate::data::load(&dcfg, seed)?;
            (
                ds.val,
                format!("the validation split of {}", ds.description),
            )
        }
        None => (all, description),
    };
    let p = eval_pairs(&set, pairs, seed)?;
    let transform = eval_transform(&input);
    let spec = EvalSpec {
        loss: None,
        calibration: method,
        threshold: None,
    };
    let r = evaluate(model, &set, &p, &transform, &spec)?;
    let profile = fit_input_profile(model, &set, &transform, seed)?;
    Ok(Calibrated {
        threshold: r.verification.threshold,
        previous: model.meta().threshold,
        pairs: r.verification.pairs,
        balanced_accuracy: r.verification.balanced_accuracy,
        roc_auc: r.verification.roc_auc,
        description,
        quantiles: r.quantiles,
        profile,
    })
}

/// Calibrates on exactly the listed pairs (each image embedded once); the input check is
/// refitted on the list's images.
pub fn on_pair_list(
    model: &SiameseModel,
    list: &PairList,
    seed: u64,
    method: Calibration,
) -> Result<Calibrated> {
    let input = model.config().input.clone();
    let set = crate::pairs::list_set(model, list)?;
    let transform = eval_transform(&input);
    let d = crate::pairs::set_distances(model, &set, list)?;
    let same: Vec<f32> = list
        .verdicts()?
        .into_iter()
        .map(|s| f32::from(u8::from(s)))
        .collect();
    let named =
        |e: siam_eval::EvalError| TrainError::Config(format!("{}: {e}", list.path.display()));
    let threshold = siam_eval::calibrate(&d, &same, method).map_err(named)?;
    let v = siam_eval::verification(&d, &same, Some(threshold)).map_err(named)?;
    let quantiles = Some(siam_eval::distance_quantiles(&d, &same).map_err(named)?);
    let profile = fit_input_profile(model, &set, &transform, seed)?;
    Ok(Calibrated {
        threshold,
        previous: model.meta().threshold,
        pairs: v.pairs,
        balanced_accuracy: v.balanced_accuracy,
        roc_auc: v.roc_auc,
        description: format!(
            "{} ({} images, {})",
            list.path.display(),
            set.len(),
            list.format
        ),
        quantiles,
        profile,
    })
}
