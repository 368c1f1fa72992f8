//! The learning-rate range test (Smith 2017; fastai's `lr_find`, PyTorch Lightning's
//! `Tuner.lr_find`): a short run of the recipe on its data with a learning rate that grows
//! exponentially from `start` to `end`, the loss recorded at each step and smoothed; the
//! suggestion is the rate where the smoothed loss falls fastest. Nothing is written: the
//! caller renders and saves the result.

use super::*;

/// Settings of the range test.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindOptions {
    /// The first step's rate.
    pub start: f64,
    /// The last step's rate.
    pub end: f64,
    /// Steps (one batch each) from `start` to `end`.
    pub steps: usize,
    /// Stop once the smoothed loss exceeds this multiple of its minimum (diverged).
    pub diverge: f64,
}

impl Default for LrFindOptions {
    fn default() -> Self {
        Self {
            start: 1e-7,
            end: 1.0,
            steps: 100,
            diverge: 4.0,
        }
    }
}

/// One step of the range test.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrFindPoint {
    /// The step's learning rate.
    pub lr: f64,
    /// The batch's loss.
    pub loss: f64,
    /// The loss smoothed by a centred moving mean over about a tenth of the steps (centred,
    /// so that the curve does not lag behind the rate as an exponential average does).
    pub smoothed: f64,
}

/// The result of the range test.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrFind {
    /// Every step run, in order.
    pub points: Vec<LrFindPoint>,
    /// The suggested peak rate: where the smoothed loss falls fastest against log(lr).
    pub suggested: Option<f64>,
    /// The rate at the smoothed loss's minimum (a tenth of it is the other common rule).
    pub min_loss_lr: Option<f64>,
    /// The recipe's own rate, for comparison.
    pub config_lr: f64,
    /// Why the test stopped before `end`, when it did.
    pub stopped: Option<String>,
}

/// The online average that watches for divergence (bias-corrected).
const BETA: f64 = 0.9;

/// The centred moving mean of `v` over a window of `2·half + 1` (shorter at the ends).
fn centred_mean(v: &[f64], half: usize) -> Vec<f64> {
    (0..v.len())
        .map(|i| {
            let (a, b) = (i.saturating_sub(half), (i + half + 1).min(v.len()));
            v[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect()
}

/// Half the smoothing window for `n` points.
fn half_window(n: usize) -> usize {
    (n / 20).max(2)
}

/// The learning rate of step `i` of `n` (0-based), from `start` to `end` geometrically.
pub fn range_lr(o: &LrFindOptions, i: usize) -> f64 {
    let n = o.steps.max(2) - 1;
    o.start * (o.end / o.start).powf(i as f64 / n as f64)
}

/// The suggestion from a loss curve: the rate at the steepest fall of the smoothed loss
/// against log(lr), taken over the points before the smoothed minimum (central differences,
/// away from the ends, where the window is cut short). `None` with too few points or a curve
/// that never falls.
pub fn suggest(points: &[LrFindPoint]) -> Option<f64> {
    let n = points.len();
    if n < 5 {
        return None;
    }
    let min_i = (0..n).min_by(|&a, &b| points[a].smoothed.total_cmp(&points[b].smoothed))?;
    let edge = half_window(n).min(n / 4).max(1);
    let mut best: Option<(f64, usize)> = None;
    for i in edge..min_i.min(n - edge) {
        let (a, b) = (&points[i - 1], &points[i + 1]);
        let slope = (b.smoothed - a.smoothed) / (b.lr.ln() - a.lr.ln());
        if slope < 0.0 && best.is_none_or(|(s, _)| slope < s) {
            best = Some((slope, i));
        }
    }
    best.map(|(_, i)| points[i].lr)
}

/// Runs the range test for `cfg` on its data: a fresh model from the config's seed, its
/// sampler, augmentation, loss and optimizer, `opts.steps` batches. Writes nothing.
pub fn lr_find(cfg: &TrainConfig, opts: &LrFindOptions) -> Result<LrFind> {
    cfg.validate()?;
    if !(opts.start > 0.0 && opts.end > opts.start && opts.end.is_finite()) {
        return Err(TrainError::Config(format!(
            "lr-find: the range must rise from a positive start: {} to {}",
            opts.start, opts.end
        )));
    }
    if opts.steps < 5 {
        return Err(TrainError::Config(format!(
            "lr-find: {} steps are too few (at least 5)",
            opts.steps
        )));
    }
    let _flush = crate::denormals::flush_denormals();
    let data = data::load(&cfg.data, cfg.seed)?;
    let (sampler, _) = cfg.sampler.fit(&data.train);
    let mut cfg = cfg.clone();
    cfg.sampler = sampler;
    let device = siam_model::parse_device(&cfg.device)?;
    let mcfg = model_config(&cfg, &data.train);
    let model = super::initial_model(&mcfg, cfg.seed, &device, &mut |_| {})?;
    let loss_vars = loss_state(
        &cfg,
        data.train.num_classes(),
        mcfg.encoder.embedding_dim(),
        &device,
    )?;
    let opt = super::losses::optimizer(&cfg, &model, &loss_vars, false);
    let sampler = run::sampler_for(&cfg.sampler, &cfg, &data)?;
    let transform = run::train_transform(&cfg, &mcfg.input);
    let loader = Loader::spawn(
        data.train.clone(),
        sampler,
        transform,
        LoaderConfig {
            batches_per_epoch: opts.steps as u64,
            epochs: Some(1),
            start: (0, 0),
            prefetch: 4,
            threads: Some(1),
            device: device.clone(),
        },
    )?;
    let topts = TrainOptions::default();
    // A run that is never validated or saved: only its loss and optimizer step are used.
    let mut run = Run::new(
        cfg.clone(),
        Path::new(""),
        data,
        (model, loss_vars),
        opt,
        Progress::default(),
        &topts,
    )?;
    let mut points = Vec::with_capacity(opts.steps);
    let (mut avg, mut best, mut stopped) = (0f64, f64::INFINITY, None);
    for (i, item) in loader.enumerate() {
        let b = item?;
        let lr = range_lr(opts, i);
        run.model
            .reseed_dropout(derive_seed(cfg.seed, &[stream::DROPOUT, i as u64 + 1]));
        // On a pool worker, as the training loop's steps (`siam_model::kernels::on_pool`).
        let (l, _) = siam_model::kernels::on_pool(|| run.batch_loss(&b.batch))?;
        let loss = f64::from(l.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !loss.is_finite() {
            stopped = Some(format!("the loss was not finite at lr {lr:.2e}"));
            break;
        }
        avg = BETA * avg + (1.0 - BETA) * loss;
        let watched = avg / (1.0 - BETA.powi(i as i32 + 1));
        points.push(LrFindPoint {
            lr,
            loss,
            smoothed: loss,
        });
        best = best.min(watched);
        if i >= 10 && watched > opts.diverge * best {
            stopped = Some(format!(
                "the smoothed loss passed {}x its minimum at lr {lr:.2e}",
                opts.diverge
            ));
            break;
        }
        let opt = &mut run.opt;
        siam_model::kernels::on_pool(|| -> Result<()> {
            let grads = l.backward()?;
            opt.step(&grads, lr)?;
            Ok(())
        })?;
    }
    let raw: Vec<f64> = points.iter().map(|p| p.loss).collect();
    for (p, s) in points
        .iter_mut()
        .zip(centred_mean(&raw, half_window(raw.len())))
    {
        p.smoothed = s;
    }
    let min_loss_lr = points
        .iter()
        .min_by(|a, b| a.smoothed.total_cmp(&b.smoothed))
        .map(|p| p.lr);
    Ok(LrFind {
        suggested: suggest(&points),
        min_loss_lr,
        config_lr: cfg.optimizer.lr(),
        stopped,
        points,
    })
}

/// The range test's picture: the loss against the rate, the suggestion and the config's rate.
pub fn chart(result: &LrFind) -> Result<siam_eval::plot::Chart> {
    let col = |f: fn(&LrFindPoint) -> f64| result.points.iter().map(f).collect::<Vec<_>>();
    Ok(siam_eval::plot::lr_find_chart(
        &col(|p| p.lr),
        &col(|p| p.loss),
        &col(|p| p.smoothed),
        result.suggested,
        Some(result.config_lr),
    )?)
}

/// Writes the range test into `dir` (which must not exist or be empty, so a run folder is
/// never written into): `lr-find.json` (the points and the suggestion), `lr-find.svg` and
/// `lr-find.png` (the curve). Each file is written atomically. Returns the files.
pub fn write_lr_find(result: &LrFind, dir: &Path) -> Result<Vec<PathBuf>> {
    run::ensure_empty(
        dir,
        "exists and is not empty; lr-find writes only into a new folder (choose another --out)",
    )?;
    let chart = chart(result)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::run(dir, format!("cannot create the folder: {e}")))?;
    let json =
        serde_json::to_string_pretty(result).map_err(|e| TrainError::run(dir, e.to_string()))?;
    let files = [
        ("lr-find.json", json.into_bytes()),
        ("lr-find.svg", chart.svg.into_bytes()),
        ("lr-find.png", chart.png),
    ];
    let mut out = Vec::new();
    for (name, bytes) in files {
        let p = dir.join(name);
        write_atomic(&p, &bytes).map_err(|e| TrainError::run(&p, e.to_string()))?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_geometric_from_start_to_end() {
        let o = LrFindOptions {
            start: 1e-6,
            end: 1e-1,
            steps: 6,
            ..Default::default()
        };
        let lrs: Vec<f64> = (0..6).map(|i| range_lr(&o, i)).collect();
        for (got, want) in lrs.iter().zip([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]) {
            assert!((got / want - 1.0).abs() < 1e-9, "{lrs:?}");
        }
    }

    /// A loss that falls like a logistic step in log(lr) centred on `centre`, then blows up:
    /// the suggestion is the step's centre (the steepest fall), wherever it is.
    #[test]
    fn the_suggestion_is_the_steepest_fall() {
        for centre in [1e-4f64, 1e-3, 3e-2] {
            let o = LrFindOptions::default();
            let points: Vec<LrFindPoint> = (0..o.steps)
                .map(|i| {
                    let lr = range_lr(&o, i);
                    let x = (lr / centre).ln();
                    let blow = if lr > 300.0 * centre {
                        (lr / (300.0 * centre)).ln()
                    } else {
                        0.0
                    };
                    let loss = 1.0 - 0.8 / (1.0 + (-2.0 * x).exp()) + blow;
                    LrFindPoint {
                        lr,
                        loss,
                        smoothed: loss,
                    }
                })
                .collect();
            let raw: Vec<f64> = points.iter().map(|p| p.loss).collect();
            let smoothed = centred_mean(&raw, half_window(raw.len()));
            let points: Vec<LrFindPoint> = points
                .into_iter()
                .zip(smoothed)
                .map(|(p, s)| LrFindPoint { smoothed: s, ..p })
                .collect();
            let s = suggest(&points).unwrap();
            assert!(
                (s / centre).ln().abs() < 0.3,
                "centre {centre}: suggested {s}"
            );
        }
        // A curve that never falls gives no suggestion.
        let flat: Vec<LrFindPoint> = (0..50)
            .map(|i| LrFindPoint {
                lr: 1e-6 * 1.3f64.powi(i),
                loss: 1.0,
                smoothed: 1.0 + 1e-3 * f64::from(i),
            })
            .collect();
        assert_eq!(suggest(&flat), None);
    }

    #[test]
    fn the_centred_mean_does_not_lag() {
        let v = [0.0, 0.0, 0.0, 3.0, 6.0, 6.0, 6.0];
        let m = centred_mean(&v, 1);
        assert_eq!(m, vec![0.0, 0.0, 1.0, 3.0, 5.0, 6.0, 6.0]);
    }
}
