//! The model's input check ([`siam_model::ood`]) over a diagnosed set, and the
//! `unfamiliar-inputs` finding when the set is unlike what the model was trained on.

use super::*;

/// How many images of a set the model's input check flags as unlike its training data.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputCheck {
    /// Images checked.
    pub images: usize,
    /// Images with at least one warning.
    pub flagged: usize,
    /// `flagged / images`.
    pub rate: f64,
    /// Images flagged by each kind of warning (an image may count under several).
    pub by_kind: std::collections::BTreeMap<String, usize>,
    /// The rate the profile measured on held-out training-like images when it was fitted.
    pub expected_rate: f64,
}

/// Runs the model's input check over preprocessed images (N, C, H, W), 512 at a time; None
/// for a model without an input profile.
pub fn input_check(model: &SiameseModel, images: &Tensor) -> Result<Option<InputCheck>> {
    let Some(p) = &model.meta().input_profile else {
        return Ok(None);
    };
    let n = images.dim(0)?;
    let (mut stats, mut near) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut i = 0;
    while i < n {
        let k = 512.min(n - i);
        let x = images.narrow(0, i, k)?;
        let (e, norms) = model.embed_with_norms(&x)?;
        stats.extend(siam_model::ood::image_stats(
            &x,
            &model.config().input,
            &norms,
        )?);
        near.extend(p.nearest(&e, model.distance_kind())?);
        i += k;
    }
    Ok(Some(tally(p, &stats, &near)))
}

/// The input check's counts over measured [`ImageStats`](siam_model::ood::ImageStats) and
/// nearest-reference distances.
pub fn tally(
    p: &siam_model::InputProfile,
    stats: &[siam_model::ood::ImageStats],
    near: &[f32],
) -> InputCheck {
    let mut by_kind = std::collections::BTreeMap::new();
    let mut flagged = 0;
    for (s, &d) in stats.iter().zip(near) {
        let w = p.check(s, d);
        flagged += usize::from(!w.is_empty());
        for x in w {
            *by_kind.entry(x.kind.to_string()).or_insert(0) += 1;
        }
    }
    InputCheck {
        images: stats.len(),
        flagged,
        rate: flagged as f64 / stats.len().max(1) as f64,
        by_kind,
        expected_rate: f64::from(p.false_alarm_rate),
    }
}

/// `unfamiliar-inputs`: a fifth of the data or more (and five times what training-like data
/// gets) falls outside what the model saw.
pub(super) fn unfamiliar_inputs(m: &Measurements) -> Option<Finding> {
    let c = m.input_check.as_ref()?;
    if c.images == 0 || c.rate < 0.2 || c.rate < 5.0 * c.expected_rate {
        return None;
    }
    let share = |k: &str| *c.by_kind.get(k).unwrap_or(&0) as f64 / c.images as f64;
    let mut hints = Vec::new();
    if share("intensity-mean") >= 0.1 {
        hints.push("the brightness differs (inverted images, another background, other scaling?)");
    }
    if share("intensity-spread") >= 0.1 {
        hints.push("the contrast differs (blank, washed-out or noisy images?)");
    }
    if share("texture") >= 0.1 {
        hints.push("the texture differs (noise, compression, scans?)");
    }
    if share("far-from-training") >= 0.1 || share("embedding-norm") >= 0.1 {
        hints.push("the content is of another kind than the training images");
    }
    let mut f = finding(
        Kind::UnfamiliarInputs,
        Severity::Warning,
        format!(
            "{:.0}% of the images are unlike the training data ({:.1}% for images like it){}",
            100.0 * c.rate,
            100.0 * c.expected_rate,
            if hints.is_empty() {
                String::new()
            } else {
                format!(": {}", hints.join("; "))
            }
        ),
    )
    .with("flagged-share", c.rate)
    .with("expected-share", c.expected_rate);
    for k in [
        "intensity-mean",
        "intensity-spread",
        "texture",
        "embedding-norm",
        "far-from-training",
    ] {
        f = f.with(&format!("{k}-share"), share(k));
    }
    Some(f.explain(
        "The model's input check (fitted on its validation images at training time) bounds an image's mean \
         intensity, its spread, its texture, the length of its features and the distance of its embedding to the \
         nearest validation image. Images outside \
         those bounds are unlike anything the model learned from, and its distances to them carry no meaning: \
         the verdicts on this data are not to be trusted, whatever the figures on the training data.",
        "If this data is what the model must serve, train or fine-tune on it (siam train --data …) and recalibrate \
         (siam calibrate); if it should be like the training data, make its preprocessing match (the shares above \
         say which: intensity-mean for brightness or inversion, intensity-spread for contrast, texture for noise, \
         embedding-norm and far-from-training for content).",
    ))
}
