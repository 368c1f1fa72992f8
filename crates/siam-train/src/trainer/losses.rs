//! The loss of a batch, for every loss kind, and the loss's own trainable variables.

use super::*;

pub(super) fn named_vars(model: &SiameseModel) -> Vec<(String, candle_core::Var)> {
    let data = model.varmap().data().lock().expect("var map lock");
    data.iter()
        .filter(|(k, _)| !k.ends_with(".running_mean") && !k.ends_with(".running_var"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The optimizer's variables: the model's trainable ones, then the loss's (`loss.NAME`).
pub(super) fn trained_vars(
    model: &SiameseModel,
    loss_vars: &candle_nn::VarMap,
) -> Vec<(String, candle_core::Var)> {
    let mut v = named_vars(model);
    let data = loss_vars.data().lock().expect("var map lock");
    v.extend(
        data.iter()
            .map(|(k, var)| (format!("loss.{k}"), var.clone())),
    );
    v
}

/// The optimizer over the model's and the loss's variables, with `[finetune]`'s backbone
/// group: its learning-rate factor, and (with `hold`) no update during the frozen epochs.
pub(super) fn optimizer(
    cfg: &TrainConfig,
    model: &SiameseModel,
    loss_vars: &candle_nn::VarMap,
    hold: bool,
) -> crate::optim::Optimizer {
    let mut opt =
        crate::optim::Optimizer::new(cfg.optimizer.clone(), trained_vars(model, loss_vars));
    if let Some(f) = &cfg.finetune {
        let held = if hold { frozen_steps(cfg) } else { 0 };
        opt.set_group(
            crate::config::Finetune::is_backbone,
            f.backbone_lr_scale,
            held,
        );
    }
    opt
}

/// Steps at the start of the run with the backbone frozen.
pub(super) fn frozen_steps(cfg: &TrainConfig) -> u64 {
    cfg.finetune.as_ref().map_or(0, |f| {
        (f.freeze_backbone_epochs * cfg.steps_per_epoch) as u64
    })
}

/// The loss's trainable state for `cfg`: CosFace/ArcFace proxies, one row per class of the data
/// (labels index `classes`), drawn from the config's seed; empty for the other losses.
pub(super) fn loss_state(
    cfg: &TrainConfig,
    classes: usize,
    dim: usize,
    device: &Device,
) -> Result<candle_nn::VarMap> {
    let vars = candle_nn::VarMap::new();
    if cfg.loss.has_proxies() {
        let init = loss::init_proxies(
            classes,
            dim,
            derive_seed(cfg.seed, &[stream::PROXIES]),
            device,
        )?;
        vars.data()
            .lock()
            .expect("var map lock")
            .insert("proxies".into(), candle_core::Var::from_tensor(&init)?);
    }
    if let Some(p) = cfg.self_supervised.as_ref().map(|s| s.projection_dim)
        && p > 0
    {
        // Gaussian weights scaled by 1/√fan-in, zero biases, from the run's own stream.
        let seed = derive_seed(cfg.seed, &[stream::SSL_PROJECTION]);
        let layer = |rows: usize, cols: usize, s: u64| -> Result<Tensor> {
            Ok((loss::init_proxies(rows, cols, s, device)? / (cols as f64).sqrt())?)
        };
        let mut data = vars.data().lock().expect("var map lock");
        let mut put = |name: &str, t: Tensor| -> Result<()> {
            data.insert(name.into(), candle_core::Var::from_tensor(&t)?);
            Ok(())
        };
        put("ssl-projection.w1", layer(dim, dim, seed)?)?;
        put("ssl-projection.b1", Tensor::zeros(dim, DType::F32, device)?)?;
        put("ssl-projection.w2", layer(p, dim, seed ^ 1)?)?;
        put("ssl-projection.b2", Tensor::zeros(p, DType::F32, device)?)?;
    }
    Ok(vars)
}

/// The loss over a labelled batch of embeddings for the losses that take one whole (all but
/// contrastive and triplet, which the trainer mines itself); `proxies` for CosFace/ArcFace.
pub(crate) fn class_batch_loss(
    cfg: &LossConfig,
    e: &Tensor,
    labels: &[u32],
    proxies: Option<&Tensor>,
) -> Result<Tensor> {
    let need = |p: Option<&Tensor>| {
        p.cloned().ok_or_else(|| {
            TrainError::Config(format!("the {} loss needs its class proxies", cfg.kind()))
        })
    };
    Ok(match *cfg {
        LossConfig::MultiSimilarity {
            alpha,
            beta,
            base,
            epsilon,
        } => loss::multi_similarity(
            e,
            labels,
            &loss::MsConfig {
                alpha,
                beta,
                base,
                epsilon: Some(epsilon),
            },
        )?,
        LossConfig::NtXent { temperature } => loss::nt_xent(e, labels, temperature)?,
        LossConfig::SupCon { temperature } => loss::supcon(e, labels, temperature)?,
        LossConfig::Cosface { margin, scale } => {
            loss::cosface(e, labels, &need(proxies)?, margin, scale)?
        }
        LossConfig::Arcface { margin, scale } => {
            loss::arcface(e, labels, &need(proxies)?, margin, scale)?
        }
        ref other => {
            return Err(TrainError::Config(format!(
                "the {} loss is not a batch loss",
                other.kind()
            )));
        }
    })
}

impl Run<'_> {
    /// The loss of one batch, with the miner's active fraction.
    pub(super) fn batch_loss(&self, batch: &Batch) -> Result<(Tensor, Option<f64>)> {
        let m = &self.model;
        Ok(match batch {
            Batch::Pairs { a, b, same } => {
                let n = a.dim(0)?;
                let e = m.forward_t(&Tensor::cat(&[a, b], 0)?, true)?;
                let (e1, e2) = (e.narrow(0, 0, n)?, e.narrow(0, n, n)?);
                match &self.cfg.loss {
                    LossConfig::Bce => (
                        loss::bce_with_logits(&m.pair_logits(&e1, &e2)?, same)?,
                        None,
                    ),
                    LossConfig::Contrastive { margin, pos_margin } => (
                        loss::contrastive_with(&m.distance(&e1, &e2)?, same, *margin, *pos_margin)?,
                        None,
                    ),
                    l => unreachable!("validated: the {} loss takes no pairs", l.kind()),
                }
            }
            Batch::Triplets {
                anchor,
                positive,
                negative,
            } => {
                let n = anchor.dim(0)?;
                let e = m.forward_t(&Tensor::cat(&[anchor, positive, negative], 0)?, true)?;
                let (ea, ep, en) = (
                    e.narrow(0, 0, n)?,
                    e.narrow(0, n, n)?,
                    e.narrow(0, 2 * n, n)?,
                );
                let margin = self.cfg.loss.margin().unwrap_or(1.0);
                (
                    loss::triplet(&m.distance(&ea, &ep)?, &m.distance(&ea, &en)?, margin)?,
                    None,
                )
            }
            Batch::Classes {
                images,
                labels,
                views,
                view_rows,
            } => {
                let labels: Vec<u32> = labels.to_device(&Device::Cpu)?.to_vec1()?;
                let ss = self.cfg.self_supervised.as_ref();
                let (e, second) = match (ss, views) {
                    (Some(_), Some(v)) => {
                        // Both views in one forward pass: BatchNorm sees one batch.
                        let n = images.dim(0)?;
                        let both = m.forward_t(&Tensor::cat(&[images, v], 0)?, true)?;
                        (both.narrow(0, 0, n)?, Some(both))
                    }
                    _ => (m.forward_t(images, true)?, None),
                };
                let (sup, active) = match ss {
                    Some(s) if s.weight >= 1.0 => (None, None),
                    Some(s) if s.supervise_both_views => {
                        let both = second.as_ref().ok_or_else(|| {
                            TrainError::Config(
                                "two-view training needs the batch's second views".into(),
                            )
                        })?;
                        // The labels of the N images and then of their M second views.
                        let with_views: Vec<u32> = labels
                            .iter()
                            .copied()
                            .chain(view_rows.iter().map(|&r| labels[r]))
                            .collect();
                        let (l, a) = self.supervised_class_loss(both, &with_views)?;
                        (Some(l), a)
                    }
                    _ => {
                        let (l, a) = self.supervised_class_loss(&e, &labels)?;
                        (Some(l), a)
                    }
                };
                let Some(s) = ss else {
                    return Ok((sup.expect("supervised without self-supervision"), active));
                };
                let both = second.ok_or_else(|| {
                    TrainError::Config("two-view training needs the batch's second views".into())
                })?;
                // NT-Xent's identities: an image and its view share its row; an image without
                // a view is every other embedding's negative only.
                let ids: Vec<u32> = (0..labels.len() as u32)
                    .chain(view_rows.iter().map(|&r| r as u32))
                    .collect();
                let z = if s.projection_dim > 0 {
                    self.ssl_projection(&both)?
                } else {
                    both
                };
                let selfsup = (loss::nt_xent(&z, &ids, s.temperature)? * s.weight)?;
                let total = match sup {
                    Some(l) => ((l * (1.0 - s.weight))? + selfsup)?,
                    None => selfsup,
                };
                (total, active)
            }
        })
    }

    /// The self-supervised term's projection head over embeddings (N, D).
    fn ssl_projection(&self, e: &Tensor) -> Result<Tensor> {
        let data = self.loss_vars.data().lock().expect("var map lock");
        let get = |n: &str| -> Result<Tensor> {
            data.get(n).map(|v| v.as_tensor().clone()).ok_or_else(|| {
                TrainError::Config(format!("the self-supervised projection has no {n}"))
            })
        };
        let h = e
            .matmul(&get("ssl-projection.w1")?.t()?)?
            .broadcast_add(&get("ssl-projection.b1")?)?
            .relu()?;
        Ok(h.matmul(&get("ssl-projection.w2")?.t()?)?
            .broadcast_add(&get("ssl-projection.b2")?)?)
    }

    /// The supervised loss over a P×K batch's embeddings (with `[uniformity-term]`, plus its
    /// term over the same embeddings), with the miner's active fraction.
    pub(super) fn supervised_class_loss(
        &self,
        e: &Tensor,
        labels: &[u32],
    ) -> Result<(Tensor, Option<f64>)> {
        let (l, active) = self.class_loss(e, labels)?;
        Ok(match &self.cfg.uniformity_term {
            Some(u) => ((l + (loss::uniformity(e, u.t)? * u.weight)?)?, active),
            None => (l, active),
        })
    }

    /// The configured loss over a P×K batch's embeddings, with the miner's active fraction.
    fn class_loss(&self, e: &Tensor, labels: &[u32]) -> Result<(Tensor, Option<f64>)> {
        let m = &self.model;
        Ok(match &self.cfg.loss {
            LossConfig::Triplet { margin, mining } => {
                let r = loss::mined_triplet(e, labels, *margin, m.distance_kind(), *mining)?;
                (r.loss, Some(f64::from(r.active_fraction)))
            }
            LossConfig::Contrastive { margin, pos_margin } => (
                all_pairs_contrastive(m, e, labels, *margin, *pos_margin)?,
                None,
            ),
            LossConfig::Bce => unreachable!("validated: bce takes pairs"),
            l => {
                let proxies = self
                    .loss_vars
                    .data()
                    .lock()
                    .expect("var map lock")
                    .get("proxies")
                    .map(|v| v.as_tensor().clone());
                let main = class_batch_loss(l, e, labels, proxies.as_ref())?;
                match &self.cfg.contrastive_term {
                    Some(ct) => {
                        let term = all_pairs_contrastive(m, e, labels, ct.margin, ct.pos_margin)?;
                        ((main + (term * ct.weight)?)?, None)
                    }
                    None => (main, None),
                }
            }
        })
    }
}

/// The contrastive loss over every pair of a labelled batch, positives and negatives weighing
/// one half each.
fn all_pairs_contrastive(
    m: &SiameseModel,
    e: &Tensor,
    labels: &[u32],
    margin: f64,
    pos_margin: f64,
) -> Result<Tensor> {
    let n = labels.len();
    let (mut pa, mut pb, mut na, mut nb) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        for j in i + 1..n {
            if labels[i] == labels[j] {
                pa.push(i as u32);
                pb.push(j as u32);
            } else {
                na.push(i as u32);
                nb.push(j as u32);
            }
        }
    }
    let dev = e.device();
    let part = |a: Vec<u32>, b: Vec<u32>, s: f32| -> Result<Tensor> {
        let k = a.len();
        let ia = Tensor::from_vec(a, k, dev)?;
        let ib = Tensor::from_vec(b, k, dev)?;
        let d = m.distance(&e.index_select(&ia, 0)?, &e.index_select(&ib, 0)?)?;
        let same = Tensor::full(s, k, dev)?;
        Ok(loss::contrastive_with(&d, &same, margin, pos_margin)?)
    };
    Ok(((part(pa, pb, 1.0)? + part(na, nb, 0.0)?)? * 0.5)?)
}
