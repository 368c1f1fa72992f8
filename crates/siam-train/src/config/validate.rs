//! `TrainConfig::validate`: values that parse but cannot work, each error naming its key.

use siam_data::SamplerConfig;

use super::*;
use crate::error::{Result, TrainError};

impl TrainConfig {
    /// Checks values that parse but cannot work; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(TrainError::Config(format!("{key}: {why}")));
        if self.epochs == 0 {
            return bad("epochs", "must be at least 1".into());
        }
        if self.steps_per_epoch == 0 {
            return bad("steps-per-epoch", "must be at least 1".into());
        }
        if self.log_every == 0 {
            return bad("log-every", "must be at least 1".into());
        }
        let pk = matches!(self.sampler, SamplerConfig::Pk { .. });
        if !pk && self.batch_size < 2 {
            return bad(
                "batch-size",
                format!("{} is too small; use at least 2", self.batch_size),
            );
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return bad(
                "data.val-fraction",
                format!("{} must be in [0, 1)", self.data.val_fraction),
            );
        }
        if !(0.0..1.0).contains(&self.data.test_fraction) {
            return bad(
                "data.test-fraction",
                format!("{} must be in [0, 1)", self.data.test_fraction),
            );
        }
        if self.data.holdout_classes.is_some() {
            return bad(
                "data.holdout-classes",
                "replaced by data.class-split, which draws validation and test classes separately so that model selection never sees a test class: class-split = { validation = { count = 2 }, test = { count = 3 } }".into(),
            );
        }
        if self.data.class_split.is_none() && self.data.val_fraction == 0.0 {
            return bad(
                "data.val-fraction",
                "must be positive: validation calibrates the threshold".into(),
            );
        }
        match &self.loss {
            LossConfig::Contrastive { margin, pos_margin } => {
                if !(*margin > 0.0) {
                    return bad("loss.margin", format!("{margin} must be positive"));
                }
                if !(*pos_margin >= 0.0 && pos_margin < margin) {
                    return bad(
                        "loss.pos-margin",
                        format!("{pos_margin} must be in [0, margin)"),
                    );
                }
                if matches!(self.sampler, SamplerConfig::Triplets) {
                    return bad(
                        "sampler.kind",
                        "the contrastive loss takes pairs or pk batches, not triplets".into(),
                    );
                }
            }
            LossConfig::Triplet { margin, .. } => {
                if !(*margin > 0.0) {
                    return bad("loss.margin", format!("{margin} must be positive"));
                }
                if matches!(self.sampler, SamplerConfig::Pairs { .. }) {
                    return bad(
                        "sampler.kind",
                        "the triplet loss takes triplets or pk batches, not pairs".into(),
                    );
                }
            }
            LossConfig::Bce => {
                if !matches!(
                    self.sampler,
                    SamplerConfig::Pairs { .. } | SamplerConfig::PairList
                ) {
                    return bad("sampler.kind", "the bce loss takes pairs".into());
                }
            }
            LossConfig::MultiSimilarity {
                alpha,
                beta,
                base,
                epsilon,
            } => {
                if !(*alpha > 0.0 && alpha.is_finite()) {
                    return bad("loss.alpha", format!("{alpha} must be positive"));
                }
                if !(*beta > 0.0 && beta.is_finite()) {
                    return bad("loss.beta", format!("{beta} must be positive"));
                }
                if !(-1.0..=1.0).contains(base) {
                    return bad(
                        "loss.base",
                        format!("{base} must be a cosine similarity in [-1, 1]"),
                    );
                }
                if !(*epsilon >= 0.0 && epsilon.is_finite()) {
                    return bad("loss.epsilon", format!("{epsilon} must be at least 0"));
                }
            }
            LossConfig::NtXent { temperature } | LossConfig::SupCon { temperature } => {
                if !(*temperature > 0.0 && temperature.is_finite()) {
                    return bad(
                        "loss.temperature",
                        format!("{temperature} must be positive"),
                    );
                }
            }
            LossConfig::Cosface { margin, scale } | LossConfig::Arcface { margin, scale } => {
                let arc = matches!(self.loss, LossConfig::Arcface { .. });
                let top = if arc { std::f64::consts::PI } else { 2.0 };
                if !(*margin >= 0.0 && *margin < top) {
                    let what = if arc {
                        "an angle in radians in [0, π)"
                    } else {
                        "in [0, 2)"
                    };
                    return bad("loss.margin", format!("{margin} must be {what}"));
                }
                if !(*scale > 0.0 && scale.is_finite()) {
                    return bad("loss.scale", format!("{scale} must be positive"));
                }
                if self.validation.metric == Metric::Loss {
                    return bad(
                        "validation.metric",
                        format!(
                            "the {} loss has no validation figure (its proxies are the training classes'); use map-at-r, precision-at-1 or roc-auc",
                            self.loss.kind()
                        ),
                    );
                }
            }
        }
        if let Some(ss) = &self.self_supervised {
            if !(ss.weight > 0.0 && ss.weight <= 1.0) {
                return bad(
                    "self-supervised.weight",
                    format!("{} must be in (0, 1]", ss.weight),
                );
            }
            if !(ss.temperature > 0.0 && ss.temperature.is_finite()) {
                return bad(
                    "self-supervised.temperature",
                    format!("{} must be positive", ss.temperature),
                );
            }
            if ss.supervise_both_views && ss.weight >= 1.0 {
                return bad(
                    "self-supervised.supervise-both-views",
                    "needs a supervised term: weight below 1".into(),
                );
            }
            if !(ss.view_fraction > 0.0 && ss.view_fraction <= 1.0) {
                return bad(
                    "self-supervised.view-fraction",
                    format!("{} must be in (0, 1]", ss.view_fraction),
                );
            }
            if let Some(a) = &ss.augment {
                a.validate()
                    .map_err(|e| TrainError::Config(format!("self-supervised.{e}")))?;
            }
            if !matches!(self.sampler, SamplerConfig::Pk { .. }) {
                return bad(
                    "sampler.kind",
                    "two-view self-supervised training takes pk batches".into(),
                );
            }
        }
        if let Some(u) = &self.uniformity_term {
            if !(u.weight > 0.0 && u.weight.is_finite()) {
                return bad(
                    "uniformity-term.weight",
                    format!("{} must be positive", u.weight),
                );
            }
            if !(u.t > 0.0 && u.t.is_finite()) {
                return bad("uniformity-term.t", format!("{} must be positive", u.t));
            }
            if !matches!(self.sampler, SamplerConfig::Pk { .. }) {
                return bad(
                    "sampler.kind",
                    "the uniformity term takes pk batches".into(),
                );
            }
        }
        if let Some(ct) = &self.contrastive_term {
            if !(ct.weight > 0.0 && ct.weight.is_finite()) {
                return bad(
                    "contrastive-term.weight",
                    format!("{} must be positive", ct.weight),
                );
            }
            if !(ct.margin > 0.0 && ct.margin.is_finite()) {
                return bad(
                    "contrastive-term.margin",
                    format!("{} must be positive", ct.margin),
                );
            }
            if !(ct.pos_margin >= 0.0 && ct.pos_margin < ct.margin) {
                return bad(
                    "contrastive-term.pos-margin",
                    format!("{} must be in [0, margin)", ct.pos_margin),
                );
            }
            if !self.loss.takes_classes() {
                return bad(
                    "contrastive-term",
                    format!(
                        "adds to a batch loss (cosface, arcface, multi-similarity, supcon, nt-xent), not to {} (remove [contrastive-term], or start from a contrastive recipe: --preset fast)",
                        self.loss.kind()
                    ),
                );
            }
        }
        if let Some(f) = &self.finetune {
            if !(f.backbone_lr_scale > 0.0 && f.backbone_lr_scale <= 16.0) {
                return bad(
                    "finetune.backbone-lr-scale",
                    format!("{} must be in (0, 16]", f.backbone_lr_scale),
                );
            }
            if f.freeze_backbone_epochs >= self.epochs {
                return bad(
                    "finetune.freeze-backbone-epochs",
                    format!(
                        "{} leaves no epoch to train the backbone in (epochs = {})",
                        f.freeze_backbone_epochs, self.epochs
                    ),
                );
            }
            if matches!(
                self.model.encoder,
                siam_model::EncoderConfig::SeedCnn { .. }
            ) {
                return bad(
                    "finetune",
                    "the seed-cnn has no projection head apart from its backbone; fine-tune a convnet, resnet18 or resnet34".into(),
                );
            }
        }
        if self.loss.takes_classes() && !matches!(self.sampler, SamplerConfig::Pk { .. }) {
            return bad(
                "sampler.kind",
                format!(
                    "the {} loss takes pk batches (classes × images)",
                    self.loss.kind()
                ),
            );
        }
        if !(self.optimizer.lr() > 0.0) || !self.optimizer.lr().is_finite() {
            return bad(
                "optimizer.lr",
                format!("{} must be positive", self.optimizer.lr()),
            );
        }
        if self.schedule.kind == ScheduleKind::Step && self.schedule.step_epochs == 0 {
            return bad("schedule.step-epochs", "must be at least 1".into());
        }
        if self.validation.every_epochs == 0 {
            return bad("validation.every-epochs", "must be at least 1".into());
        }
        if self.validation.pairs < 2 || self.validation.test_pairs < 2 {
            return bad(
                "validation.pairs",
                "need at least 2 validation and test pairs".into(),
            );
        }
        self.validate_pair_list()?;
        if self.checkpoint.keep_last == 0 {
            return bad("checkpoint.keep-last", "must be at least 1".into());
        }
        self.augment
            .validate()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(())
    }

    /// A pair list as `data.source` and the `pair-list` sampler go together; such a run has
    /// pairs, not classes, so only pair losses and pair metrics apply.
    fn validate_pair_list(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(TrainError::Config(format!("{key}: {why}")));
        let listed = matches!(self.sampler, SamplerConfig::PairList);
        let list_source = crate::data::is_pair_list(&self.data.source);
        if listed && !list_source {
            return bad(
                "data.source",
                format!(
                    "the pair-list sampler needs a pair list file (CSV/TSV with an `a,b,same` header, or LFW's pairs.txt); `{}` is not a file",
                    self.data.source
                ),
            );
        }
        if list_source && !listed {
            return bad(
                "sampler.kind",
                format!(
                    "data.source {} is a file (a pair list): train on it with kind = \"pair-list\"",
                    self.data.source
                ),
            );
        }
        if !listed {
            return Ok(());
        }
        if !matches!(self.loss, LossConfig::Contrastive { .. } | LossConfig::Bce) {
            return bad(
                "loss.kind",
                format!(
                    "the pair-list sampler gives listed pairs, for the contrastive or bce loss; {} needs classes (start from the contrastive recipe: --preset fast)",
                    self.loss.kind()
                ),
            );
        }
        if matches!(
            self.validation.metric,
            Metric::PrecisionAt1 | Metric::MapAtR
        ) {
            return bad(
                "validation.metric",
                "a pair list has verdicts, not classes: select the model by roc-auc (or loss)"
                    .into(),
            );
        }
        for (key, set) in [
            ("data.class-split", self.data.class_split.is_some()),
            ("data.limit-per-class", self.data.limit_per_class.is_some()),
        ] {
            if set {
                return bad(
                    key,
                    "does not apply to a pair list (it has no classes)".into(),
                );
            }
        }
        if self.data.test_fraction == 0.0 {
            return bad(
                "data.test-fraction",
                "must be positive for a pair list: its test pairs give the final report".into(),
            );
        }
        Ok(())
    }
}
