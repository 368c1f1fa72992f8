//! Sweeps: short runs of one config over a grid of margins and learning rates, side by side.
//! Trials run `jobs` at a time, each in its own rayon pool of `threads / jobs` threads, so
//! small models use every core without oversubscribing them. Each trial is an ordinary run
//! folder under the sweep folder, followed by a quick diagnosis of its best model.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use crate::config::TrainConfig;
use crate::diagnose::{DiagnoseOptions, diagnose};
use crate::error::{Result, TrainError};
use crate::trainer::{TrainOptions, train};

/// One point of the grid.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Trial {
    /// Folder name under the sweep folder.
    pub name: String,
    /// The margin, when swept.
    pub margin: Option<f64>,
    /// The learning rate, when swept.
    pub lr: Option<f64>,
}

/// The grid of `margins` × `lrs` (an empty list leaves the config's value).
pub fn grid(margins: &[f64], lrs: &[f64]) -> Vec<Trial> {
    let ms: Vec<Option<f64>> = if margins.is_empty() {
        vec![None]
    } else {
        margins.iter().copied().map(Some).collect()
    };
    let ls: Vec<Option<f64>> = if lrs.is_empty() {
        vec![None]
    } else {
        lrs.iter().copied().map(Some).collect()
    };
    let mut out = Vec::new();
    for &m in &ms {
        for &l in &ls {
            let mut parts = Vec::new();
            if let Some(m) = m {
                parts.push(format!("margin-{m}"));
            }
            if let Some(l) = l {
                parts.push(format!("lr-{l:e}"));
            }
            out.push(Trial {
                name: if parts.is_empty() {
                    "base".into()
                } else {
                    parts.join("_")
                },
                margin: m,
                lr: l,
            });
        }
    }
    out
}

/// One trial's outcome (a row of the sweep table).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SweepRow {
    /// The trial.
    pub trial: Trial,
    /// Its run folder.
    pub run_dir: PathBuf,
    /// Wall time of the trial, seconds.
    pub wall_s: f64,
    /// The error that ended it, if it failed (a diverged run, for instance).
    pub error: Option<String>,
    /// Test ROC-AUC of the best model.
    pub roc_auc: Option<f64>,
    /// Test EER.
    pub eer: Option<f64>,
    /// Test precision@1.
    pub precision_at_1: Option<f64>,
    /// Test MAP@R.
    pub map_at_r: Option<f64>,
    /// Kinds of the diagnosis' warnings and errors (empty: healthy).
    pub findings: Vec<String>,
}

/// Progress of a sweep.
#[derive(Debug)]
pub enum SweepEvent<'a> {
    /// A trial starts.
    Started(&'a Trial),
    /// A trial finished (or failed).
    Finished(&'a SweepRow),
}

/// Runs `trials` of `base`, `jobs` at a time over `threads` cores, into `out` (which must not
/// exist or be empty). Returns the rows in grid order and writes `out/sweep.json`.
pub fn sweep(
    base: &TrainConfig,
    trials: &[Trial],
    out: &Path,
    jobs: usize,
    threads: usize,
    on: &(dyn Fn(SweepEvent<'_>) + Sync),
) -> Result<Vec<SweepRow>> {
    if trials.is_empty() {
        return Err(TrainError::Config("sweep: no trials".into()));
    }
    // Check every trial's config before running any.
    let mut cfgs = Vec::new();
    for t in trials {
        let mut c = base.clone();
        if let Some(m) = t.margin {
            c.set_margin(m)?;
        }
        if let Some(l) = t.lr {
            c.set_lr(l);
        }
        c.validate()
            .map_err(|e| TrainError::Config(format!("trial {}: {e}", t.name)))?;
        cfgs.push(c);
    }
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(TrainError::run(
            out,
            "the sweep folder exists and is not empty; choose another --out",
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::run(out, e.to_string()))?;
    let jobs = jobs.clamp(1, trials.len());
    let per_job = (threads / jobs).max(1);
    let next = Mutex::new(0usize);
    let rows: Mutex<Vec<Option<SweepRow>>> = Mutex::new(vec![None; trials.len()]);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(per_job).build();
                loop {
                    let i = {
                        let mut n = next.lock().expect("sweep queue");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= trials.len() {
                        break;
                    }
                    let t = &trials[i];
                    on(SweepEvent::Started(t));
                    let run = || run_trial(&cfgs[i], t, &out.join(&t.name));
                    let row = match &pool {
                        Ok(p) => p.install(run),
                        Err(_) => run(),
                    };
                    on(SweepEvent::Finished(&row));
                    rows.lock().expect("sweep rows")[i] = Some(row);
                }
            });
        }
    });
    let rows: Vec<SweepRow> = rows
        .into_inner()
        .expect("sweep rows")
        .into_iter()
        .flatten()
        .collect();
    let json =
        serde_json::to_string_pretty(&rows).map_err(|e| TrainError::run(out, e.to_string()))?;
    siam_model::model::write_atomic(&out.join("sweep.json"), json.as_bytes())
        .map_err(|e| TrainError::run(out.join("sweep.json"), e.to_string()))?;
    Ok(rows)
}

fn run_trial(cfg: &TrainConfig, trial: &Trial, dir: &Path) -> SweepRow {
    let start = Instant::now();
    let mut row = SweepRow {
        trial: trial.clone(),
        run_dir: dir.to_path_buf(),
        wall_s: 0.0,
        error: None,
        roc_auc: None,
        eer: None,
        precision_at_1: None,
        map_at_r: None,
        findings: Vec::new(),
    };
    match train(cfg, dir, &TrainOptions::default(), &mut |_| {}) {
        Ok(s) => {
            row.roc_auc = Some(s.test.verification.roc_auc);
            row.eer = Some(s.test.verification.eer);
            row.precision_at_1 = Some(s.test.retrieval.precision_at_1);
            row.map_at_r = Some(s.test.retrieval.map_at_r);
            let opts = DiagnoseOptions {
                data: cfg.data.source.clone(),
                run: None,
                pairs: 2000,
                seed: cfg.seed,
                max_images: 1000,
                baselines: false,
            };
            match diagnose(&s.model, &candle_core::Device::Cpu, &opts) {
                Ok((d, _, _)) => {
                    row.findings = d
                        .findings
                        .iter()
                        .filter(|f| f.severity != siam_eval::Severity::Info)
                        .map(|f| f.kind.name().to_string())
                        .collect()
                }
                Err(e) => row.findings = vec![format!("diagnosis failed: {e}")],
            }
        }
        Err(e) => {
            row.error = Some(e.to_string());
            if matches!(e, TrainError::Diverged(_)) {
                row.findings = vec!["non-finite".into()];
            }
        }
    }
    row.wall_s = start.elapsed().as_secs_f64();
    row
}
