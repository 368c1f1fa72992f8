//! One function per command: resolve inputs, call the libraries, render.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use siam_model::SiameseModel;
use siam_train::TrainOptions;
use siam_train::evaluate::{EvalSpec, eval_pairs, evaluate};

use crate::cli::{
    Cli, Command, CompareArgs, ConfigArgs, DiagnoseArgs, EvalArgs, InfoArgs, LrFindArgs, ModelArg,
    SweepArgs, TrainArgs,
};
use crate::render;

/// The model shipped with siam (trained on Fashion-MNIST by `cargo xtask fixtures`).
pub const SHIPPED_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../fixtures/models/fashion-mnist.safetensors"
);

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train(a),
        Command::Compare(a) => compare(a),
        Command::Embed(a) => crate::gallery::embed(a),
        Command::Search(a) => crate::gallery::search(a),
        Command::Eval(a) => eval(a),
        Command::Info(a) => info(a),
        Command::Diagnose(a) => diagnose(a),
        Command::Calibrate(a) => crate::pairs::calibrate(a),
        Command::Sweep(a) => sweep(a),
        Command::Config(a) => config(a),
        Command::LrFind(a) => lr_find(a),
    }
}

fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The config from `source` (the default preset when it names none), with `--data` applied as
/// the first override, so that the resolved config is validated with it (a pair list is only
/// valid with the pair-list sampler).
fn resolve_with_data(
    source: &crate::cli::ConfigSourceArgs,
    data: Option<&str>,
) -> Result<(siam_train::TrainConfig, String)> {
    let mut src = source.source("default");
    let mut sets = Vec::new();
    if let Some(d) = data {
        sets.push(format!("data.source={}", serde_json::to_string(d)?));
    }
    sets.extend(src.sets.iter().cloned());
    src.sets = &sets;
    Ok(siam_train::config::resolve(&src)?)
}

fn train(a: TrainArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    // A second Ctrl-C is not caught: the default handler ends the process.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (a checkpoint is written); Ctrl-C again to abort");
    });
    let opts = TrainOptions {
        stop: Some(stop),
        ..Default::default()
    };
    let mut progress = render::Progress::new();
    let summary = if let Some(dir) = &a.resume {
        siam_train::resume(dir, &opts, &mut |e| progress.on(e))?
    } else {
        let (mut cfg, name) = resolve_with_data(&a.source, a.data.as_deref())?;
        if let Some(v) = a.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = a.steps_per_epoch {
            cfg.steps_per_epoch = v;
        }
        if let Some(v) = a.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = a.seed {
            cfg.seed = v;
        }
        if let Some(v) = &a.device {
            cfg.device = v.clone();
        }
        if let Some(m) = a.margin {
            cfg.set_margin(m)?;
        }
        if let Some(v) = a.lr {
            cfg.set_lr(v);
        }
        if let Some(p) = &a.pretrained {
            cfg.set_pretrained(p)?;
        }
        cfg.validate()?;
        let out = a
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(format!("{name}-{}", utc_stamp())));
        siam_train::train(&cfg, &out, &opts, &mut |e| progress.on(e))?
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "test metrics of the best model (step {}, {} steps run, {:.0}s of training, {:.0}s in all):",
            summary.best_step, summary.steps, summary.train_s, summary.wall_s
        );
        print!("{}", render::table(&summary.test));
        println!("model: {}", summary.model.display());
        println!("run folder: {}", summary.run_dir.display());
    }
    Ok(())
}

/// Finds the model to use, and says where it came from.
fn resolve_model(m: &ModelArg) -> Result<(PathBuf, &'static str)> {
    if let Some(p) = &m.model {
        return Ok((p.clone(), "--model"));
    }
    if let Some(p) = std::env::var_os("SIAM_MODEL") {
        return Ok((PathBuf::from(p), "$SIAM_MODEL"));
    }
    let newest = std::fs::read_dir("runs").ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| e.path().join("model.safetensors"))
            .filter(|p| p.is_file())
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    });
    if let Some(p) = newest {
        return Ok((p, "the newest run in runs/"));
    }
    let shipped = PathBuf::from(SHIPPED_MODEL);
    if shipped.is_file() {
        let shipped = std::fs::canonicalize(&shipped).unwrap_or(shipped);
        return Ok((shipped, "the shipped Fashion-MNIST model"));
    }
    bail!("no model given: pass --model FILE, set SIAM_MODEL, or train one with `siam train`")
}

pub(crate) fn load(m: &ModelArg) -> Result<(SiameseModel, PathBuf, &'static str)> {
    let (path, source) = resolve_model(m)?;
    let device = siam_model::parse_device(&m.device)?;
    let model = SiameseModel::load(&path, &device)?;
    Ok((model, path, source))
}

fn compare(a: CompareArgs) -> Result<()> {
    let (model, path, source) = load(&a.model)?;
    let (Some(pa), Some(pb)) = (&a.a, &a.b) else {
        return crate::pairs::compare_list(&a, &model, &path);
    };
    if a.images.is_some() || a.format.is_some() {
        bail!("--images and --format need a pair list: --pairs LIST");
    }
    let (c, notes) = model.compare_paths_noted(pa, pb)?;
    let ranks = model.meta().distance_quantiles.as_ref().map(|q| {
        (
            siam_eval::stats::rank_in(&q.same, c.distance),
            siam_eval::stats::rank_in(&q.different, c.distance),
        )
    });
    if a.json {
        let mut o = serde_json::json!({
            "distance": c.distance,
            "threshold": c.threshold,
            "same": c.same,
            "model": path,
            "model_source": source,
        });
        if let Some((s, d)) = ranks {
            o["same_pairs_closer"] = s.into();
            o["different_pairs_closer"] = d.into();
        }
        // What preprocessing did to each input that does not match the model's input spec,
        // and how each is unlike the training data (the model's input profile).
        o["inputs"] = serde_json::json!([
            { "path": pa, "adjustments": notes[0].adjustments, "warnings": notes[0].warnings },
            { "path": pb, "adjustments": notes[1].adjustments, "warnings": notes[1].warnings },
        ]);
        o["input_check"] = model.meta().input_profile.is_some().into();
        println!("{o}");
        return Ok(());
    }
    println!("model: {} ({source})", path.display());
    for (p, n) in [pa, pb].into_iter().zip(&notes) {
        for x in &n.adjustments {
            eprintln!("warning: {}: {}", p.display(), x.detail);
        }
        for x in &n.warnings {
            eprintln!(
                "warning: {}: unlike the training data: {}",
                p.display(),
                x.detail
            );
        }
    }
    match (c.threshold, c.same) {
        (Some(t), Some(same)) => println!(
            "distance {:.4}  threshold {t:.4}  →  {}",
            c.distance,
            if same { "same" } else { "different" }
        ),
        _ => println!(
            "distance {:.4}  (the model has no calibrated threshold: no verdict)",
            c.distance
        ),
    }
    if let Some((s, d)) = ranks {
        println!(
            "{:.0}% of validation same-class pairs and {:.0}% of different-class pairs are closer than this",
            100.0 * s,
            100.0 * d
        );
    }
    Ok(())
}

fn eval(a: EvalArgs) -> Result<()> {
    let (model, path, source) = load(&a.model)?;
    let count = match a.pairs.as_deref().map(str::parse::<usize>) {
        None => 10000,
        Some(Ok(n)) => n,
        Some(Err(_)) => return crate::pairs::eval_list(&a, &model, &path, source),
    };
    if a.folds.is_some() || a.images.is_some() {
        bail!("--folds and --images need a pair list: --pairs LIST");
    }
    let data = a
        .data
        .as_deref()
        .context("--data is needed without a pair list")?;
    let input = model.config().input.clone();
    let (description, set) = siam_train::data::eval_set(data, &input)?;
    let pairs = eval_pairs(&set, count, a.seed)?;
    let transform = siam_train::evaluate::eval_transform(&input);
    let threshold = model.meta().threshold;
    let spec = EvalSpec {
        loss: None,
        calibration: Default::default(),
        threshold,
    };
    let r = evaluate(&model, &set, &pairs, &transform, &spec)?;
    let classes = siam_train::evaluate::seen_classes(&model, &set);
    let check = siam_train::evaluate::input_check(&model, &set, &transform)?;
    let tsource = if threshold.is_some() {
        "model"
    } else {
        "calibrated-on-this-data"
    };
    if a.json {
        let mut v = render::eval_json(&r, &path.display().to_string(), tsource);
        if let Some(c) = &classes {
            v["classes"] = serde_json::json!({ "seen": c.seen, "unseen": c.unseen });
        }
        if let Some(c) = &check {
            v["input_check"] = serde_json::to_value(c)?;
        }
        println!("{v}");
    } else {
        println!("model: {} ({source})", path.display());
        println!("data: {description}");
        if let Some(c) = &classes {
            println!(
                "classes: {} seen in training ({}), {} never seen ({})",
                c.seen.len(),
                c.seen.join(", "),
                c.unseen.len(),
                c.unseen.join(", ")
            );
        }
        print!("{}", render::table(&r));
        if let Some(c) = &check {
            println!(
                "  input check: {} of {} images ({:.1}%) unlike the training data (training-like images: {:.1}%)",
                c.flagged,
                c.images,
                100.0 * c.rate,
                100.0 * c.expected_rate
            );
        }
        if threshold.is_none() {
            println!(
                "  (no stored threshold: accuracies use the best threshold on this data, an optimistic figure)"
            );
        }
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let m = siam_model::read_model_meta(&a.model)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    let c = &m.config;
    let i = &c.input;
    println!("file:          {}", a.model.display());
    println!("format:        {}", m.format_version);
    println!(
        "encoder:       {} ({})",
        c.encoder.kind(),
        serde_json::to_string(&c.encoder)?
    );
    println!(
        "input:         {}x{}x{}, mean {:?}, std {:?}",
        i.channels, i.height, i.width, i.mean, i.std
    );
    println!(
        "embedding:     {} dimensions{}",
        m.embedding_dim,
        if c.normalize { ", L2-normalised" } else { "" }
    );
    println!("distance:      {}", c.distance.name());
    match m.threshold {
        Some(t) => println!("threshold:     {t:.4} (same when distance ≤ threshold)"),
        None => println!("threshold:     none (not calibrated)"),
    }
    match &m.input_profile {
        Some(p) => println!(
            "input check:   mean intensity {:.3}–{:.3}, spread {:.3}–{:.3}, nearest of {} references ≤ {:.3} ({:.1}% of held-out images flagged)",
            p.intensity_mean[0],
            p.intensity_mean[1],
            p.intensity_spread[0],
            p.intensity_spread[1],
            p.reference_count,
            p.nearest_limit,
            100.0 * p.false_alarm_rate
        ),
        None => println!("input check:   none (train, or `siam calibrate`, to fit one)"),
    }
    if let Some(t) = &m.training {
        println!("training:      {t}");
    }
    Ok(())
}

fn diagnose(a: DiagnoseArgs) -> Result<()> {
    let (path, source) = match (&a.model.model, &a.run) {
        (None, Some(run)) if std::env::var_os("SIAM_MODEL").is_none() => {
            (run.join("model.safetensors"), "the run folder")
        }
        _ => resolve_model(&a.model)?,
    };
    let device = siam_model::parse_device(&a.model.device)?;
    let opts = siam_train::diagnose::DiagnoseOptions {
        data: a.data.clone(),
        run: a.run.clone(),
        pairs: a.pairs,
        seed: a.seed,
        max_images: a.max_images,
        baselines: !a.no_baselines,
    };
    let (d, evidence, history) = siam_train::diagnose::diagnose(&path, &device, &opts)?;
    let lr_found = match (&a.run, a.lr_find) {
        (Some(run), true) => {
            let cfg = siam_train::TrainConfig::from_file(&run.join("config.toml"))?;
            Some(siam_train::lr_find(&cfg, &Default::default())?)
        }
        _ => None,
    };
    let mut written = Vec::new();
    if a.report.is_some() || a.plots.is_some() {
        let m = &d.measurements;
        let mut charts = siam_eval::plot::charts(
            &evidence,
            m.context.margin,
            m.stored_threshold,
            history.as_ref(),
            if a.tsne {
                siam_eval::plot::Projection::Tsne
            } else {
                siam_eval::plot::Projection::Pca
            },
            if a.tsne { 1500 } else { 3000 },
        )?;
        if let Some(r) = &lr_found {
            charts.push(siam_train::trainer::lr_find_chart(r)?);
        }
        if let Some(dir) = &a.plots {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create the plots folder", dir.display()))?;
            for c in &charts {
                for (ext, bytes) in [("svg", c.svg.as_bytes()), ("png", c.png.as_slice())] {
                    let p = dir.join(format!("{}.{ext}", c.name));
                    siam_model::model::write_atomic(&p, bytes)
                        .with_context(|| format!("{}: cannot write", p.display()))?;
                    written.push(p);
                }
            }
        }
        if let Some(p) = &a.report {
            let html = siam_eval::report::html(&d, &charts);
            siam_model::model::write_atomic(p, html.as_bytes())
                .with_context(|| format!("{}: cannot write the report", p.display()))?;
            written.push(p.clone());
        }
    }
    if a.json {
        let mut v = serde_json::to_value(&d)?;
        v["healthy"] = d.healthy().into();
        if let Some(r) = &lr_found {
            v["lr_find"] = serde_json::to_value(r)?;
        }
        v["files"] = written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .into();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("model: {} ({source})", path.display());
        print!("{}", render::diagnosis(&d));
        if let Some(r) = &lr_found {
            println!("learning-rate range test on the run's config:");
            print!("{}", render::lr_find(r));
        }
        for p in &written {
            println!("wrote {}", p.display());
        }
    }
    if a.strict && !d.healthy() {
        std::process::exit(3);
    }
    Ok(())
}

fn config(a: ConfigArgs) -> Result<()> {
    let (cfg, _) = siam_train::config::resolve(&a.source.source("default"))?;
    print!("{}", cfg.to_toml());
    Ok(())
}

fn lr_find(a: LrFindArgs) -> Result<()> {
    let (cfg, _) = resolve_with_data(&a.source, a.data.as_deref())?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("lr-find-{}", utc_stamp())));
    let opts = siam_train::LrFindOptions {
        start: a.start,
        end: a.end,
        steps: a.steps,
        ..Default::default()
    };
    eprintln!(
        "lr-find: {} steps from {:.1e} to {:.1e} on {}",
        opts.steps, opts.start, opts.end, cfg.data.source
    );
    let r = siam_train::lr_find(&cfg, &opts)?;
    let files = siam_train::write_lr_find(&r, &out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render::lr_find(&r));
        for f in files {
            println!("wrote {}", f.display());
        }
    }
    Ok(())
}

fn sweep(a: SweepArgs) -> Result<()> {
    if a.margin.is_empty() && a.lr.is_empty() {
        bail!(
            "nothing to sweep: give --margin and/or --lr, comma-separated (for example --margin 0.5,1,2)"
        );
    }
    let (mut cfg, _) = siam_train::config::resolve(&a.source.source("quick"))?;
    if let Some(d) = &a.data {
        cfg.data.source = d.clone();
    }
    if let Some(v) = a.epochs {
        cfg.epochs = v;
    }
    if let Some(v) = a.steps_per_epoch {
        cfg.steps_per_epoch = v;
    }
    let trials = siam_train::sweep::grid(&a.margin, &a.lr);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let jobs = a.jobs.unwrap_or(threads).max(1);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("sweep-{}", utc_stamp())));
    eprintln!(
        "sweep: {} trials, {} at a time on {threads} cores, into {}",
        trials.len(),
        jobs.min(trials.len()),
        out.display()
    );
    let rows = siam_train::sweep::sweep(&cfg, &trials, &out, jobs, threads, &|e| match e {
        siam_train::sweep::SweepEvent::Started(t) => eprintln!("  started  {}", t.name),
        siam_train::sweep::SweepEvent::Finished(r) => eprintln!(
            "  finished {} in {:.0}s{}",
            r.trial.name,
            r.wall_s,
            r.error.as_ref().map_or(String::new(), |e| format!(": {e}"))
        ),
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render::sweep_table(&rows));
        println!(
            "sweep folder: {} (sweep.json, one run folder per trial)",
            out.display()
        );
    }
    Ok(())
}
