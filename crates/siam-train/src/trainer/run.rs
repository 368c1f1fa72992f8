//! One run's loop: steps, logging, validation and model selection, the final test.

use super::*;

pub(super) fn model_config(cfg: &TrainConfig, train: &ImageSet) -> ModelConfig {
    let s = train.shape();
    let (mean, std) = match (&cfg.data.mean, &cfg.data.std) {
        (Some(m), Some(sd)) => (m.clone(), sd.clone()),
        _ => train.channel_stats(),
    };
    ModelConfig {
        encoder: cfg.model.encoder.clone(),
        input: InputSpec {
            channels: s.channels,
            height: s.height,
            width: s.width,
            mean,
            std,
        },
        normalize: cfg.model.normalize,
        distance: cfg.model.distance,
        pair_head: matches!(cfg.loss, LossConfig::Bce),
        test_time_flip: cfg.model.test_time_flip,
    }
}

/// The run's sampler: `sampler` (the config's, fitted to the data) over the training set, or
/// over the listed training pairs for `pair-list`.
pub(super) fn sampler_for(
    sampler: &SamplerConfig,
    cfg: &TrainConfig,
    data: &Datasets,
) -> Result<siam_data::Sampler> {
    Ok(match (sampler, &data.pairs) {
        (SamplerConfig::PairList, Some(p)) => {
            let rows = (0..p.train.a.len())
                .map(|i| (p.train.a[i], p.train.b[i], p.train.same[i] > 0.5))
                .collect();
            siam_data::Sampler::PairList(siam_data::PairListSampler::new(
                rows,
                cfg.batch_size,
                cfg.seed,
            )?)
        }
        _ => sampler.build(&data.train, cfg.batch_size, cfg.seed)?,
    })
}

/// The training batches' transform: the config's augmentation (and the second view's, with
/// `[self-supervised]`), then the model's input normalisation.
pub(super) fn train_transform(cfg: &TrainConfig, input: &InputSpec) -> Transform {
    Transform {
        augment: cfg.augment.clone(),
        normalize: Some(Normalize {
            mean: input.mean.clone(),
            std: input.std.clone(),
        }),
        seed: cfg.seed,
        second_view: cfg
            .self_supervised
            .as_ref()
            .map(|s| s.view_augment(&cfg.augment)),
        second_view_fraction: cfg
            .self_supervised
            .as_ref()
            .map_or(1.0, |s| s.view_fraction),
    }
}

/// Refuses a folder that exists and holds anything; `what` says what would have been written.
pub(super) fn ensure_empty(dir: &Path, what: &str) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(TrainError::run(dir, what));
    }
    Ok(())
}

pub(super) fn metric_of(m: Metric, r: &EvalReport) -> f64 {
    match m {
        Metric::RocAuc => r.verification.roc_auc,
        Metric::PrecisionAt1 => r.retrieval.precision_at_1,
        Metric::MapAtR => r.retrieval.map_at_r,
        Metric::Loss => r.loss.unwrap_or(f64::INFINITY),
    }
}

impl<'a> Run<'a> {
    pub(super) fn new(
        cfg: TrainConfig,
        dir: &Path,
        data: Datasets,
        (model, loss_vars): (SiameseModel, candle_nn::VarMap),
        opt: Optimizer,
        progress: Progress,
        opts: &'a TrainOptions,
    ) -> Result<Self> {
        // A pair list brings its own validation pairs; otherwise balanced pairs are drawn.
        let val_pairs = match &data.pairs {
            Some(p) => p.val.clone(),
            None => eval_pairs(&data.val, cfg.validation.pairs, cfg.seed)?,
        };
        let input = &model.config().input;
        let eval_transform = crate::evaluate::eval_transform(input);
        Ok(Self {
            cfg,
            dir: dir.to_path_buf(),
            data,
            model,
            loss_vars,
            opt,
            progress,
            val_pairs,
            eval_transform,
            opts,
        })
    }

    pub(super) fn save_checkpoint(&self, on: &mut dyn FnMut(Event<'_>)) -> Result<PathBuf> {
        let step = self.progress.step;
        let p = checkpoint_dir(&self.dir).join(format!("step-{step:08}.safetensors"));
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        {
            let vars = self.model.varmap().data().lock().expect("var map lock");
            for (k, v) in vars.iter() {
                tensors.insert(format!("model.{k}"), v.as_tensor().to_device(&Device::Cpu)?);
            }
            for (k, v) in self.loss_vars.data().lock().expect("var map lock").iter() {
                tensors.insert(format!("loss.{k}"), v.as_tensor().to_device(&Device::Cpu)?);
            }
        }
        let (state, _) = self.opt.state();
        for (k, t) in state {
            tensors.insert(format!("opt.{k}"), t.to_device(&Device::Cpu)?);
        }
        let mut progress = self.progress.clone();
        progress.optimizer_steps = self.opt.steps();
        let meta =
            serde_json::to_string(&progress).map_err(|e| TrainError::run(&p, e.to_string()))?;
        let bytes = safetensors::serialize(
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            Some([(CHECKPOINT_KEY.to_string(), meta)].into()),
        )
        .map_err(|e| TrainError::run(&p, e.to_string()))?;
        write_atomic(&p, &bytes).map_err(|e| TrainError::run(&p, format!("cannot write: {e}")))?;
        on(Event::Checkpoint { path: &p, step });
        // Keep the last N, and the one holding the best model.
        let best_step = self.progress.best.map(|b| b.1);
        let all = checkpoints(&self.dir);
        let n = all.len();
        for old in all
            .into_iter()
            .take(n.saturating_sub(self.cfg.checkpoint.keep_last))
        {
            let s = old
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix("step-"))
                .and_then(|s| s.parse::<u64>().ok());
            if s != best_step {
                let _ = std::fs::remove_file(old);
            }
        }
        Ok(p)
    }

    pub(super) fn last_checkpoint_hint(&self) -> String {
        checkpoints(&self.dir)
            .pop()
            .map_or_else(|| "none yet".to_string(), |p| p.display().to_string())
    }

    pub(super) fn diverged(&self, what: &str, lr: f64) -> TrainError {
        let msg = format!(
            "step {}: {what} is not finite. Likely causes: a learning rate too high for this model (lr = {lr:.3e}; try 10x lower), \
             a margin far from the embedding scale, or unnormalised inputs. Last good checkpoint: {} (`siam train --resume {}` after fixing the config)",
            self.progress.step,
            self.last_checkpoint_hint(),
            self.dir.display()
        );
        // The log says how the run ended, for `siam diagnose --run`; the error is what matters
        // if the log cannot be written.
        let _ = append_record(
            &self.dir,
            "diverged",
            &serde_json::json!({ "step": self.progress.step, "what": what, "lr": lr, "message": msg }),
        );
        TrainError::Diverged(msg)
    }

    pub(super) fn validate(&mut self, epoch: u64, on: &mut dyn FnMut(Event<'_>)) -> Result<bool> {
        let spec = EvalSpec {
            loss: Some(&self.cfg.loss),
            calibration: self.cfg.validation.calibration,
            threshold: None,
        };
        let report = evaluate(
            &self.model,
            &self.data.val,
            &self.val_pairs,
            &self.eval_transform,
            &spec,
        )?;
        let metric_kind = self.cfg.validation.metric;
        let value = metric_of(metric_kind, &report);
        let better = match self.progress.best {
            None => true,
            Some((b, _)) => {
                if metric_kind.higher_is_better() {
                    value > b
                } else {
                    value < b
                }
            }
        };
        if better {
            let data_description = self.data.description.clone();
            let (loss_cfg, sampler_cfg) = (self.cfg.loss.clone(), self.cfg.sampler.clone());
            self.progress.best = Some((value, self.progress.step));
            self.progress.bad_validations = 0;
            let meta = self.model.meta_mut();
            meta.threshold = Some(report.verification.threshold);
            meta.distance_quantiles = report.quantiles.clone();
            let classes = self
                .data
                .roles
                .as_ref()
                .map(|r| ClassNames::of(r, self.data.train.class_names()));
            let listed = self.data.pairs.as_ref().map(|p| {
                serde_json::json!({ "list": p.list, "train": p.train.a.len(), "validation": p.val.a.len(),
                    "test": p.test.a.len(), "dropped": p.dropped })
            });
            meta.training = Some(serde_json::json!({
                "classes": classes,
                "pairs": listed,
                "data": data_description,
                "step": self.progress.step,
                "epoch": epoch,
                "loss": loss_cfg,
                "sampler": sampler_cfg,
                "validation": { "roc_auc": report.verification.roc_auc, "eer": report.verification.eer,
                    "precision_at_1": report.retrieval.precision_at_1, "map_at_r": report.retrieval.map_at_r,
                    "balanced_accuracy": report.verification.balanced_accuracy },
            }));
            self.model.save(self.dir.join("model.safetensors"))?;
        } else {
            self.progress.bad_validations += 1;
        }
        let rec = ValidationRecord {
            epoch,
            step: self.progress.step,
            report,
            metric: value,
            best: better,
            train_s: self.progress.train_s,
        };
        append_record(&self.dir, "validation", &rec)?;
        on(Event::Validation(&rec));
        Ok(self
            .cfg
            .validation
            .patience
            .is_some_and(|p| self.progress.bad_validations >= p))
    }

    pub(super) fn go(mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
        let started = Instant::now();
        let _flush = crate::denormals::flush_denormals();
        let cfg = self.cfg.clone();
        let spe = cfg.steps_per_epoch as u64;
        let total = cfg.total_steps();
        let parameters = self
            .model
            .trainable_vars()
            .iter()
            .map(|v| v.elem_count())
            .sum();
        on(Event::Started {
            run_dir: &self.dir,
            data: &self.data.description,
            sizes: [
                self.data.train.len(),
                self.data.val.len(),
                self.data.test.len(),
            ],
            parameters,
            total_steps: total,
            start_step: self.progress.step,
        });
        let units_per_batch = match cfg.sampler {
            SamplerConfig::Pk { p, k } => (p * k) as f64,
            _ => cfg.batch_size as f64,
        };
        if self.progress.step < total && !self.progress.stopped_early {
            let sampler = sampler_for(&cfg.sampler, &cfg, &self.data)?;
            let transform = train_transform(&cfg, &self.model.config().input);
            let loader = Loader::spawn(
                self.data.train.clone(),
                sampler,
                transform,
                LoaderConfig {
                    batches_per_epoch: spe,
                    epochs: Some(cfg.epochs as u64),
                    start: (self.progress.step / spe, self.progress.step % spe),
                    prefetch: 4,
                    threads: Some(self.opts.loader_threads.unwrap_or(1)),
                    device: self.model.device().clone(),
                },
            )?;
            let trainable = self.model.trainable_vars();
            let logged_init = std::fs::read_to_string(self.dir.join("metrics.jsonl"))
                .is_ok_and(|s| s.contains("\"kind\":\"init\""));
            if self.progress.step == 0 && !logged_init {
                // The weights' starting size: what diagnose measures their growth against (once:
                // a run killed before its first checkpoint starts again from the same weights).
                let (weight_norm, _) = weight_and_update_norms(&trainable, &[])?;
                append_record(
                    &self.dir,
                    "init",
                    &serde_json::json!({ "step": 0, "weight_norm": weight_norm }),
                )?;
            }
            let mut window_start = Instant::now();
            let mut window_steps_timed = 0u64;
            let run_start_step = self.progress.step;
            let frozen = super::frozen_steps(&cfg);
            // The training clock: stopped for validations and checkpoints (`train_s`).
            let mut clock = Instant::now();
            for item in loader {
                let b = item?;
                self.progress.step += 1;
                let step = self.progress.step;
                let lr = learning_rate(&cfg.schedule, cfg.optimizer.lr(), step - 1, total, spe);
                self.model
                    .reseed_dropout(derive_seed(cfg.seed, &[stream::DROPOUT, step]));
                self.model.set_backbone_frozen(step <= frozen);
                let end_of_epoch = step.is_multiple_of(spe);
                let log_now = step.is_multiple_of(cfg.log_every as u64) || end_of_epoch;
                // The step itself (forward, backward, norms, update) on a pool worker: see
                // `siam_model::kernels::on_pool`.
                let outcome = siam_model::kernels::on_pool(|| {
                    self.step_on_pool(&b.batch, &trainable, lr, log_now)
                })?;
                let (lv, active, sq, before) = match outcome {
                    StepOutcome::Done {
                        loss,
                        active,
                        grad_sq,
                        before,
                    } => (loss, active, grad_sq, before),
                    StepOutcome::LossNotFinite => {
                        return Err(self.diverged("the training loss", lr));
                    }
                    StepOutcome::GradNotFinite => return Err(self.diverged("a gradient", lr)),
                };
                let grad_norm = sq.sqrt();
                self.progress.window_loss += lv;
                self.progress.window_active += active.unwrap_or(0.0);
                self.progress.window_grad += grad_norm;
                self.progress.window_grad_max = self.progress.window_grad_max.max(grad_norm);
                self.progress.window_steps += 1;
                window_steps_timed += 1;
                if log_now {
                    let (weight_norm, update_ratio) =
                        weight_and_update_norms(&trainable, before.as_deref().unwrap_or(&[]))?;
                    let secs = window_start.elapsed().as_secs_f64().max(1e-9);
                    let rate = window_steps_timed as f64 * units_per_batch / secs;
                    let done = (step - run_start_step) as f64;
                    let per_step = started.elapsed().as_secs_f64() / done.max(1.0);
                    let w = self.progress.window_steps.max(1) as f64;
                    let rec = StepRecord {
                        epoch: (step - 1) / spe + 1,
                        step,
                        loss: self.progress.window_loss / w,
                        lr,
                        active_fraction: active.map(|_| self.progress.window_active / w),
                        grad_norm: Some(self.progress.window_grad / w),
                        grad_norm_max: Some(self.progress.window_grad_max),
                        weight_norm: Some(weight_norm),
                        update_ratio,
                        pairs_per_s: rate,
                        eta_s: per_step * (total - step) as f64,
                    };
                    append_record(&self.dir, "step", &rec)?;
                    on(Event::Step(&rec));
                    self.progress.window_loss = 0.0;
                    self.progress.window_active = 0.0;
                    self.progress.window_steps = 0;
                    self.progress.window_grad = 0.0;
                    self.progress.window_grad_max = 0.0;
                    window_start = Instant::now();
                    window_steps_timed = 0;
                }
                let mut checkpointed = false;
                self.progress.train_s += clock.elapsed().as_secs_f64();
                if end_of_epoch {
                    let epoch = step / spe;
                    if epoch.is_multiple_of(cfg.validation.every_epochs as u64) || step == total {
                        let stop = self.validate(epoch, on)?;
                        if stop {
                            self.progress.stopped_early = true;
                            on(Event::EarlyStop {
                                step,
                                best_step: self.progress.best.map_or(0, |b| b.1),
                            });
                        }
                    }
                    self.save_checkpoint(on)?;
                    checkpointed = true;
                } else if cfg.checkpoint.every_steps > 0
                    && step.is_multiple_of(cfg.checkpoint.every_steps as u64)
                {
                    self.save_checkpoint(on)?;
                    checkpointed = true;
                }
                clock = Instant::now();
                if self.progress.stopped_early {
                    break;
                }
                let asked = self
                    .opts
                    .stop
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Relaxed));
                if (self.opts.stop_after == Some(step) || asked) && step < total {
                    let checkpoint = if checkpointed {
                        checkpoints(&self.dir).pop().unwrap_or_default()
                    } else {
                        self.save_checkpoint(on)?
                    };
                    return Err(TrainError::Interrupted { step, checkpoint });
                }
            }
        }
        on(Event::Testing);
        let model_path = self.dir.join("model.safetensors");
        let mut best = SiameseModel::load(&model_path, self.model.device())?;
        // The input check compare and diagnose use: fitted on the validation split, stored
        // with the best model, its false-alarm rate measured below on the test split.
        let profile = fit_input_profile(&best, &self.data.val, &self.eval_transform, cfg.seed)?;
        if profile.is_some() {
            best.meta_mut().input_profile = profile;
            best.save(&model_path)?;
        }
        let input_check = input_check(&best, &self.data.test, &self.eval_transform)?;
        let test_pairs = match &self.data.pairs {
            Some(p) => p.test.clone(),
            None => eval_pairs(
                &self.data.test,
                cfg.validation.test_pairs,
                cfg.seed ^ 0x7e57,
            )?,
        };
        let spec = EvalSpec {
            loss: Some(&cfg.loss),
            calibration: cfg.validation.calibration,
            threshold: best.meta().threshold,
        };
        let test = evaluate(
            &best,
            &self.data.test,
            &test_pairs,
            &self.eval_transform,
            &spec,
        )?;
        let (value, best_step) = self.progress.best.unwrap_or((f64::NAN, 0));
        let summary = Summary {
            run_dir: self.dir.clone(),
            model: model_path,
            data: self.data.description.clone(),
            steps: self.progress.step,
            best_step,
            best_metric: (cfg.validation.metric, value),
            test,
            input_check,
            wall_s: started.elapsed().as_secs_f64(),
            train_s: self.progress.train_s,
            classes: self
                .data
                .roles
                .as_ref()
                .map(|r| ClassNames::of(r, self.data.train.class_names())),
        };
        let sp = self.dir.join("summary.json");
        let text = serde_json::to_string_pretty(&summary)
            .map_err(|e| TrainError::run(&sp, e.to_string()))?;
        write_atomic(&sp, text.as_bytes()).map_err(|e| TrainError::run(&sp, e.to_string()))?;
        Ok(summary)
    }
}
