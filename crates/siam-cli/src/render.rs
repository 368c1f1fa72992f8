//! Terminal rendering: training progress (a bar on a terminal, plain lines otherwise) and
//! result tables.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use siam_train::{EvalReport, Event};

/// Renders training events on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new() -> Self {
        Self { bar: None }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    pub fn on(&mut self, e: Event<'_>) {
        match e {
            Event::Started {
                run_dir,
                data,
                sizes,
                parameters,
                total_steps,
                start_step,
            } => {
                eprintln!("run folder: {}", run_dir.display());
                eprintln!(
                    "data: {data} ({} train, {} validation, {} test images)",
                    sizes[0], sizes[1], sizes[2]
                );
                eprintln!("model: {parameters} trainable parameters; {total_steps} steps");
                if start_step > 0 {
                    eprintln!("resuming at step {start_step}");
                }
                if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
                    let b = ProgressBar::new(total_steps);
                    b.set_style(
                        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b.set_position(start_step);
                    self.bar = Some(b);
                }
            }
            Event::Step(r) => {
                let msg = format!(
                    "epoch {} loss {:.4} lr {:.2e} {:.0} pairs/s",
                    r.epoch, r.loss, r.lr, r.pairs_per_s
                );
                match &self.bar {
                    Some(b) => {
                        b.set_position(r.step);
                        b.set_message(msg);
                    }
                    None => eprintln!("step {:>6}  {msg}  eta {:.0}s", r.step, r.eta_s),
                }
            }
            Event::Validation(v) => {
                let r = &v.report;
                self.line(format!(
                    "validation @ step {} ({:.0}s of training): ROC-AUC {:.4}  EER {:.4}  P@1 {:.4}  MAP@R {:.4}  threshold {:.4}{}",
                    v.step,
                    v.train_s,
                    r.verification.roc_auc,
                    r.verification.eer,
                    r.retrieval.precision_at_1,
                    r.retrieval.map_at_r,
                    r.verification.threshold,
                    if v.best { "  (best: saved)" } else { "" }
                ));
            }
            Event::Checkpoint { .. } => {}
            Event::Note(n) => self.line(format!("note: {n}")),
            Event::EarlyStop { step, best_step } => {
                self.line(format!(
                    "early stop at step {step}: no improvement since step {best_step}"
                ));
            }
            Event::Testing => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("testing the best model...");
            }
        }
    }
}

/// A metrics table.
pub fn table(r: &EvalReport) -> String {
    let v = &r.verification;
    let q = &r.retrieval;
    let s = &r.stats;
    let rows = [
        ("pairs", format!("{}", v.pairs)),
        ("images", format!("{}", r.images)),
        ("ROC-AUC", format!("{:.4}", v.roc_auc)),
        ("EER", format!("{:.4}", v.eer)),
        ("TAR @ FAR 1e-2", format!("{:.4}", v.tar_at_far_1e2)),
        ("TAR @ FAR 1e-3", format!("{:.4}", v.tar_at_far_1e3)),
        ("threshold", format!("{:.4}", v.threshold)),
        ("accuracy", format!("{:.4}", v.accuracy)),
        ("balanced accuracy", format!("{:.4}", v.balanced_accuracy)),
        ("precision@1", format!("{:.4}", q.precision_at_1)),
        ("R-precision", format!("{:.4}", q.r_precision)),
        ("MAP@R", format!("{:.4}", q.map_at_r)),
        (
            "same distance",
            format!("{:.4} ± {:.4}", s.same_mean, s.same_std),
        ),
        (
            "different distance",
            format!("{:.4} ± {:.4}", s.different_mean, s.different_std),
        ),
    ];
    rows.iter()
        .map(|(k, v)| format!("  {k:<20} {v}\n"))
        .collect()
}

/// The JSON object `siam eval --json` prints (stable keys).
pub fn eval_json(r: &EvalReport, model: &str, threshold_source: &str) -> serde_json::Value {
    let v = &r.verification;
    let q = &r.retrieval;
    serde_json::json!({
        "model": model,
        "roc_auc": v.roc_auc,
        "eer": v.eer,
        "tar_at_far_1e2": v.tar_at_far_1e2,
        "tar_at_far_1e3": v.tar_at_far_1e3,
        "accuracy": v.accuracy,
        "balanced_accuracy": v.balanced_accuracy,
        "threshold": v.threshold,
        "threshold_source": threshold_source,
        "precision_at_1": q.precision_at_1,
        "r_precision": q.r_precision,
        "map_at_r": q.map_at_r,
        "pairs": v.pairs,
        "images": r.images,
        "same_distance_mean": r.stats.same_mean,
        "different_distance_mean": r.stats.different_mean,
    })
}

/// A diagnosis for the terminal: key figures, then each finding with evidence and fix.
pub fn diagnosis(d: &siam_eval::Diagnosis) -> String {
    use std::fmt::Write as _;
    let m = &d.measurements;
    let mut o = String::new();
    let _ = writeln!(o, "data: {}", d.data);
    let _ = writeln!(
        o,
        "ROC-AUC {:.4}  EER {:.4}  balanced accuracy {:.4} at threshold {:.4}  precision@1 {:.4}{}",
        m.verification.roc_auc,
        m.verification.eer,
        m.verification.balanced_accuracy,
        m.verification.threshold,
        m.retrieval.precision_at_1,
        match (m.pixels_precision_at_1, m.untrained_precision_at_1) {
            (Some(p), Some(u)) => format!(" (raw pixels {p:.4}, untrained encoder {u:.4})"),
            _ => String::new(),
        }
    );
    match &m.input_check {
        Some(c) => {
            let _ = writeln!(
                o,
                "input check: {} of {} images ({:.1}%) unlike the training data (training-like images: {:.1}%){}",
                c.flagged,
                c.images,
                100.0 * c.rate,
                100.0 * c.expected_rate,
                if c.by_kind.is_empty() {
                    String::new()
                } else {
                    let k: Vec<String> =
                        c.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
                    format!(": {}", k.join(", "))
                }
            );
        }
        None => {
            let _ = writeln!(
                o,
                "input check: none in this model file (`siam calibrate` fits one)"
            );
        }
    }
    if !m.relu_activity.is_empty() {
        let layers: Vec<String> = m
            .relu_activity
            .iter()
            .map(|l| format!("{} {}/{}", l.layer, l.dead, l.units))
            .collect();
        let _ = writeln!(o, "dead ReLU units: {}", layers.join(", "));
    }
    if let Some(q) = &m.data_quality {
        let _ = writeln!(
            o,
            "data: {} of {} images among another class's ({} confident), duplicates: {} conflicting, {} across splits, {} within a class; {} degenerate",
            q.suspects,
            q.images,
            q.confident_suspects,
            q.duplicates_conflicting,
            q.duplicates_across_splits,
            q.duplicates_same_class,
            q.degenerate
        );
        for s in q.suspect_list.iter().take(5) {
            let _ = writeln!(
                o,
                "  suspect {}: labelled {}, its neighbours {} ({:.0} % in the embedding, {:.0} % in pixels)",
                s.name,
                s.class,
                s.neighbours_class,
                100.0 * s.embedding_disagreement,
                100.0 * s.pixel_disagreement
            );
        }
    }
    for n in &d.notes {
        let _ = writeln!(o, "note: {n}");
    }
    if d.findings.is_empty() {
        let _ = writeln!(o, "no problems found");
        return o;
    }
    let _ = writeln!(o, "{} finding(s):", d.findings.len());
    for f in &d.findings {
        let sev = match f.severity {
            siam_eval::Severity::Error => "ERROR",
            siam_eval::Severity::Warning => "WARNING",
            siam_eval::Severity::Info => "info",
        };
        let _ = writeln!(o, "\n{sev} [{}] {}", f.kind.name(), f.summary);
        let ev: Vec<String> = f
            .evidence
            .iter()
            .map(|e| format!("{} {}", e.name, siam_eval::report::format_figure(e.value)))
            .collect();
        let _ = writeln!(o, "  evidence: {}", ev.join(", "));
        let _ = writeln!(o, "  why: {}", f.explanation);
        let _ = writeln!(o, "  fix: {}", f.fix);
    }
    o
}

/// The sweep results side by side.
pub fn sweep_table(rows: &[siam_train::sweep::SweepRow]) -> String {
    use std::fmt::Write as _;
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}  findings",
        "trial", "ROC-AUC", "EER", "P@1", "MAP@R", "margin", "wall s"
    );
    for r in rows {
        let _ = writeln!(
            o,
            "{:<28} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.0}  {}",
            r.trial.name,
            opt(r.roc_auc),
            opt(r.eer),
            opt(r.precision_at_1),
            opt(r.map_at_r),
            r.trial.margin.map_or("-".into(), |m| m.to_string()),
            r.wall_s,
            match &r.error {
                Some(e) => format!("failed: {e}"),
                None if r.findings.is_empty() => "healthy".into(),
                None => r.findings.join(", "),
            }
        );
    }
    o
}

/// The learning-rate range test for the terminal: the curve at a few rates, the suggestion
/// beside the config's rate.
pub fn lr_find(r: &siam_train::LrFind) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "{:>10}  {:>10}  {:>10}", "lr", "loss", "smoothed");
    let n = r.points.len();
    let every = (n / 12).max(1);
    for (i, p) in r.points.iter().enumerate() {
        if i % every == 0 || i + 1 == n {
            let _ = writeln!(o, "{:>10.2e}  {:>10.4}  {:>10.4}", p.lr, p.loss, p.smoothed);
        }
    }
    if let Some(s) = &r.stopped {
        let _ = writeln!(o, "stopped early: {s}");
    }
    match r.suggested {
        Some(s) => {
            let _ = writeln!(
                o,
                "suggested lr {s:.1e} (steepest fall of the loss; the config has {:.1e}{})",
                r.config_lr,
                r.min_loss_lr.map_or(String::new(), |m| format!(
                    "; the loss was lowest at {m:.1e}, a tenth of which is {:.1e}",
                    m / 10.0
                ))
            );
        }
        None => {
            let _ = writeln!(
                o,
                "no suggestion: the loss never fell over this range (widen it with --start/--end, or add --steps)"
            );
        }
    }
    o
}
