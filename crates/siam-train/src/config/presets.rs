//! The built-in recipes (`TrainConfig::preset`).

use siam_data::{AugmentConfig, ColorMode, SamplerConfig};
use siam_eval::Calibration;
use siam_model::{Distance, EncoderConfig};

use super::*;
use crate::error::{Result, TrainError};

/// The built-in presets, by name.
pub const PRESETS: [&str; 7] = [
    "default", "unseen", "fast", "seed", "quick", "convnet", "resnet",
];

impl TrainConfig {
    /// A preset by name: `default` (the recommended recipe: the convnet encoder with CosFace
    /// and a contrastive term over the batch's pairs, a uniformity term (0.7) that keeps
    /// classes never seen in training apart, batches of 8 × 16, 12 epochs, test-time flip;
    /// docs/BENCHMARKS.md has its figures), `unseen` (the default without the uniformity term
    /// and with the two-view term over both views of 8 × 8 batches, the recipe for unseen
    /// classes before the uniformity term, a point of P@1 lower on the trained ones), `fast`
    /// (the seed CNN with batches of 8 × 8, the default's augmentation and the contrastive
    /// loss: the default until 2026-12-03, a sixth of its time), `seed` (the recipe the project
    /// grew from: seed CNN, contrastive m = 2, random balanced pairs, Adam 1e-3, 5 epochs of 60k
    /// pairs), `quick` (a minute on the fixtures, for smoke tests), `convnet` (`fast` with the
    /// deeper BatchNorm encoder, a flattened head and 12 epochs of the contrastive loss alone),
    /// `resnet` (fine-tuning a ResNet-18 on colour photos: RGB at 112×112, the backbone frozen
    /// for the first epoch and then at a tenth of the head's rate; give it `--data` and
    /// usually `--pretrained`).
    pub fn preset(name: &str) -> Result<Self> {
        let base = Self {
            seed: 42,
            device: "cpu".into(),
            epochs: 5,
            steps_per_epoch: 938,
            batch_size: 64,
            log_every: 20,
            data: DataConfig {
                source: "fixtures".into(),
                val_fraction: 0.1,
                holdout_classes: None,
                class_split: None,
                test_fraction: 0.2,
                limit_per_class: None,
                color: ColorMode::Gray,
                size: None,
                mean: None,
                std: None,
            },
            sampler: SamplerConfig::default(),
            augment: AugmentConfig::none(),
            model: ModelSection {
                encoder: EncoderConfig::SeedCnn { embedding_dim: 128 },
                normalize: false,
                distance: Distance::Euclidean,
                test_time_flip: false,
            },
            loss: LossConfig::Contrastive {
                margin: 2.0,
                pos_margin: 0.0,
            },
            optimizer: OptimizerConfig::Adamw {
                lr: 1e-3,
                weight_decay: 0.0,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            schedule: ScheduleConfig {
                kind: ScheduleKind::Constant,
                warmup_steps: 0,
                step_epochs: 1,
                gamma: 0.1,
                min_lr: 0.0,
            },
            validation: ValidationConfig {
                every_epochs: 1,
                pairs: 4000,
                test_pairs: 10000,
                metric: Metric::MapAtR,
                patience: None,
                calibration: Calibration::BalancedAccuracy,
            },
            checkpoint: CheckpointConfig {
                every_steps: 0,
                keep_last: 2,
            },
            self_supervised: None,
            contrastive_term: None,
            uniformity_term: None,
            finetune: None,
        };
        match name {
            "seed" => Ok(base),
            "default" => {
                // The convnet with CosFace's learned class proxies (what retrieval needs) and
                // a contrastive term over every pair of the batch (what verification's
                // threshold needs), batches of 8 classes × 16 images for 12 epochs, the head
                // and the proxies at a quarter of the encoder's rate (at the full rate the
                // flattened head loses a third of its units), each image embedded with its
                // mirror image at evaluation: docs/BENCHMARKS.md, "The default recipe"; and
                // Wang & Isola's uniformity over the batch at 0.7, which keeps what the
                // untrained network separates on classes it never trains on ("Targets 5 and 6:
                // the uniformity term at 0.7 is the default").
                let mut c = Self::preset("convnet")?;
                c.epochs = 12;
                c.sampler = SamplerConfig::Pk { p: 8, k: 16 };
                c.batch_size = 128;
                c.steps_per_epoch = 469;
                c.model.test_time_flip = true;
                c.loss = LossConfig::Cosface {
                    margin: 0.35,
                    scale: 30.0,
                };
                c.contrastive_term = Some(super::ContrastiveTerm {
                    weight: 2.0,
                    margin: 1.0,
                    pos_margin: 0.0,
                });
                c.optimizer = OptimizerConfig::Adamw {
                    lr: 3.5e-4,
                    weight_decay: 1e-4,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                };
                c.finetune = Some(super::Finetune {
                    backbone_lr_scale: 4.0,
                    freeze_backbone_epochs: 0,
                });
                c.schedule.warmup_steps = 94;
                c.uniformity_term = Some(super::UniformityTerm {
                    weight: 0.7,
                    t: 2.0,
                });
                Ok(c)
            }
            "unseen" => {
                // For classes never seen in training: the default with NT-Xent over two views
                // of each image (on a 64-wide projection head of its own, 0.3 of the loss)
                // and the supervised losses over both views, at 8 × 8 images so that a step
                // embeds the default's 128: docs/BENCHMARKS.md, "The two-view term over both
                // views at the default's cost".
                let mut c = Self::preset("default")?;
                c.sampler = SamplerConfig::Pk { p: 8, k: 8 };
                c.batch_size = 64;
                c.uniformity_term = None;
                c.self_supervised = Some(super::SelfSupervised {
                    weight: 0.3,
                    temperature: 0.1,
                    supervise_both_views: true,
                    projection_dim: 64,
                    view_fraction: 1.0,
                    augment: None,
                });
                Ok(c)
            }
            "fast" => Ok(Self {
                sampler: SamplerConfig::Pk { p: 8, k: 8 },
                augment: AugmentConfig {
                    hflip: true,
                    crop_padding: 2,
                    ..AugmentConfig::none()
                },
                model: ModelSection {
                    normalize: true,
                    ..base.model.clone()
                },
                loss: LossConfig::Contrastive {
                    margin: 1.0,
                    pos_margin: 0.0,
                },
                schedule: ScheduleConfig {
                    kind: ScheduleKind::Cosine,
                    warmup_steps: 100,
                    ..base.schedule.clone()
                },
                ..base
            }),
            "convnet" => {
                // `fast` with the deeper encoder, a head that sees every position, 12 epochs
                // of the contrastive loss (docs/BENCHMARKS.md).
                let mut c = Self::preset("fast")?;
                c.model.encoder = EncoderConfig::Convnet {
                    channels: vec![32, 64, 128],
                    hidden: 256,
                    dropout: 0.0,
                    embedding_dim: 128,
                    pooling: siam_model::Pooling::Flatten,
                };
                c.epochs = 12;
                Ok(c)
            }
            "resnet" => {
                // Fine-tuning: torchvision's ResNet-18 with siam's head, photos as RGB
                // 112×112, one frozen epoch so the new head settles, then the backbone at a
                // tenth of the rate; `fast`'s P×K batches and contrastive loss.
                let mut c = Self::preset("fast")?;
                c.model.encoder = EncoderConfig::Resnet18(siam_model::ResnetConfig::default());
                c.data.color = ColorMode::Rgb;
                c.data.size = Some([112, 112]);
                c.epochs = 8;
                c.steps_per_epoch = 200;
                c.set_lr(3e-4);
                c.finetune = Some(super::Finetune {
                    backbone_lr_scale: 0.1,
                    freeze_backbone_epochs: 1,
                });
                Ok(c)
            }
            "quick" => {
                let mut c = Self::preset("fast")?;
                c.epochs = 2;
                c.steps_per_epoch = 30;
                c.log_every = 10;
                c.schedule.warmup_steps = 5;
                c.validation.pairs = 1000;
                c.validation.test_pairs = 2000;
                Ok(c)
            }
            other => Err(TrainError::Config(format!(
                "unknown preset '{other}' (known: {})",
                PRESETS.join(", ")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `docs/recipes/*-split.toml` file, which must hold a class split, without it.
    fn recipe_without_split(file: &str) -> TrainConfig {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/recipes");
        let mut c = TrainConfig::from_file(&dir.join(file)).unwrap();
        assert!(c.data.class_split.is_some(), "{file} has no class split");
        c.data.class_split = None;
        c
    }

    /// The `default` preset is the recipe docs/BENCHMARKS.md measured, the file
    /// `docs/recipes/default.toml`, on whatever data is given; it is
    /// `docs/recipes/cosface-contrastive.toml` with batches of 8 × 16 for 12 epochs (469 steps
    /// each), the head at a quarter of the encoder's rate and test-time flip.
    #[test]
    fn the_default_is_the_measured_recipe() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/recipes");
        let mut measured = TrainConfig::from_file(&dir.join("default.toml")).unwrap();
        measured.data.source = "fixtures".into();
        let mut before = TrainConfig::from_file(&dir.join("cosface-contrastive.toml")).unwrap();
        before.epochs = 12;
        before.sampler = SamplerConfig::Pk { p: 8, k: 16 };
        before.batch_size = 128;
        before.steps_per_epoch = 469;
        before.schedule.warmup_steps = 94;
        before.model.test_time_flip = true;
        before.set_lr(3.5e-4);
        before.finetune = Some(super::super::Finetune {
            backbone_lr_scale: 4.0,
            freeze_backbone_epochs: 0,
        });
        before.uniformity_term = Some(super::super::UniformityTerm {
            weight: 0.7,
            t: 2.0,
        });
        before.data.source = "fixtures".into();
        assert_eq!(before, measured);
        // The unseen-class recipe (cargo xtask bench-unseen's) is the default with a class split.
        let mut split = recipe_without_split("default-split.toml");
        split.data.source = "fixtures".into();
        assert_eq!(split, measured);
        assert_eq!(TrainConfig::preset("default").unwrap(), measured);
        measured.validate().unwrap();
    }

    /// The `unseen` preset is the recipe docs/BENCHMARKS.md measured on held-out classes
    /// (`docs/recipes/unseen-split.toml`, the default's split file with the two-view term over
    /// both views at 8 × 8) without its class split.
    #[test]
    fn the_unseen_preset_is_the_measured_recipe() {
        let mut split = recipe_without_split("unseen-split.toml");
        split.data.source = "fixtures".into();
        let unseen = TrainConfig::preset("unseen").unwrap();
        assert_eq!(split, unseen);
        unseen.validate().unwrap();
        // Only the batch and the term differ from the default.
        let mut default = TrainConfig::preset("default").unwrap();
        default.sampler = SamplerConfig::Pk { p: 8, k: 8 };
        default.batch_size = 64;
        default.self_supervised = unseen.self_supervised.clone();
        default.uniformity_term = None;
        assert_eq!(default, unseen);
        let ss = unseen.self_supervised.unwrap();
        assert!(ss.supervise_both_views && ss.projection_dim == 64 && ss.weight == 0.3);
    }

    /// The colour-photo recipe docs/BENCHMARKS.md runs (`docs/recipes/resnet-photos-split.toml`)
    /// is the `resnet` preset at 64×64 trained from scratch (no frozen epoch, the backbone at
    /// the head's rate: no pretrained weights at hand), 40 steps an epoch, with a class split.
    #[test]
    fn the_photo_recipe_is_the_resnet_preset_from_scratch() {
        let photos = recipe_without_split("resnet-photos-split.toml");
        let mut resnet = TrainConfig::preset("resnet").unwrap();
        resnet.data.source = photos.data.source.clone();
        resnet.data.size = Some([64, 64]);
        resnet.steps_per_epoch = 40;
        resnet.schedule.warmup_steps = 40;
        resnet.finetune = Some(super::super::Finetune {
            backbone_lr_scale: 1.0,
            freeze_backbone_epochs: 0,
        });
        assert_eq!(photos, resnet);
    }

    /// `fast` keeps the seed CNN recipe that was the default, and `quick` and `resnet` still
    /// start from it (contrastive, no class proxies).
    #[test]
    fn fast_quick_and_resnet_keep_the_contrastive_recipe() {
        for name in ["fast", "quick", "resnet"] {
            let c = TrainConfig::preset(name).unwrap();
            assert!(
                matches!(c.loss, LossConfig::Contrastive { margin, .. } if margin == 1.0),
                "{name}: {:?}",
                c.loss
            );
            assert!(c.contrastive_term.is_none(), "{name}");
        }
        let fast = TrainConfig::preset("fast").unwrap();
        assert_eq!(
            fast.model.encoder,
            EncoderConfig::SeedCnn { embedding_dim: 128 }
        );
        assert_eq!(fast.epochs, 5);
    }
}
