//! A diagnosis as one self-contained HTML page: the findings with their evidence and fixes,
//! the key figures, and every picture inline as SVG (no external files, scripts or fonts).

use std::fmt::Write as _;

use crate::diagnose::{Diagnosis, Severity};
use crate::plot::Chart;

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A figure as reports print it: integers whole, moderate values to 4 decimals, others in
/// scientific notation, non-finite as a dash.
pub fn format_figure(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v == v.trunc() && v.abs() < 1e9 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 && v.abs() < 1e4 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}\
.finding{border-left:5px solid #999;padding:.5em 1em;margin:1em 0;background:#fafafa}\
.error{border-color:#d62728}.warning{border-color:#ff7f0e}.info{border-color:#1f77b4}\
.badge{font-weight:bold;text-transform:uppercase;font-size:.8em;margin-right:.5em}\
.error .badge{color:#d62728}.warning .badge{color:#c45f00}.info .badge{color:#1f77b4}\
code{background:#eee;padding:0 .2em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.healthy{border-left:5px solid #2ca02c;padding:.5em 1em;background:#f3fbf3}\
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}svg{max-width:100%;height:auto}";

/// The HTML page for `diagnosis` with `charts` inline.
pub fn html(diagnosis: &Diagnosis, charts: &[Chart]) -> String {
    let m = &diagnosis.measurements;
    let mut h = String::new();
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>siam diagnose: {}</title><style>{STYLE}</style></head><body>",
        escape(&diagnosis.model)
    );
    let _ = writeln!(
        h,
        "<h1>siam diagnose</h1><p>Model <code>{}</code> on {}.</p>",
        escape(&diagnosis.model),
        escape(&diagnosis.data)
    );
    h.push_str("<h2 id=\"findings\">Findings</h2>\n");
    if diagnosis.healthy() {
        let _ = writeln!(
            h,
            "<div class=\"healthy\" id=\"healthy\">No problems found: the checks below all passed.</div>"
        );
    }
    for f in &diagnosis.findings {
        let class = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        let _ = write!(
            h,
            "<div class=\"finding {class}\" data-kind=\"{}\"><p><span class=\"badge\">{class}</span><code>{}</code> {}</p>",
            f.kind.name(),
            f.kind.name(),
            escape(&f.summary)
        );
        h.push_str("<table><tr><th>evidence</th><th>value</th></tr>");
        for e in &f.evidence {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
                escape(&e.name),
                format_figure(e.value)
            );
        }
        let _ = writeln!(
            h,
            "</table><p><b>Why:</b> {}</p><p><b>Fix:</b> {}</p></div>",
            escape(&f.explanation),
            escape(&f.fix)
        );
    }
    let _ = write!(h, "<h2>Figures</h2><table>");
    let v = &m.verification;
    let rows: Vec<(&str, f64)> = vec![
        ("ROC-AUC (balanced pairs)", v.roc_auc),
        ("EER", v.eer),
        ("TAR @ FAR 1e-2", v.tar_at_far_1e2),
        ("threshold used", f64::from(v.threshold)),
        ("balanced accuracy at it", v.balanced_accuracy),
        ("best threshold here", f64::from(m.best_threshold)),
        ("best balanced accuracy", m.best_balanced_accuracy),
        ("precision@1", m.retrieval.precision_at_1),
        ("MAP@R", m.retrieval.map_at_r),
        (
            "raw pixels precision@1",
            m.pixels_precision_at_1.unwrap_or(f64::NAN),
        ),
        (
            "untrained encoder precision@1",
            m.untrained_precision_at_1.unwrap_or(f64::NAN),
        ),
        ("same pairs: mean distance", m.stats.same_mean),
        ("different pairs: mean distance", m.stats.different_mean),
        (
            "input check: share unlike the training data",
            m.input_check.as_ref().map_or(f64::NAN, |c| c.rate),
        ),
        ("effective rank", m.geometry.effective_rank),
        ("mean pairwise distance", m.geometry.mean_pairwise_distance),
    ];
    for (k, val) in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td></tr>",
            escape(k),
            format_figure(val)
        );
    }
    h.push_str("</table>\n");
    if !m.relu_activity.is_empty() {
        h.push_str(
            "<h2 id=\"relu\">ReLU units</h2><table><tr><th>layer</th><th>units</th><th>dead</th><th>share of activations positive</th></tr>",
        );
        for l in &m.relu_activity {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                escape(&l.layer),
                l.units,
                l.dead,
                format_figure(l.active_share)
            );
        }
        h.push_str("</table>\n");
    }
    if let Some(q) = &m.data_quality {
        data_quality_section(&mut h, q);
    }
    h.push_str("<h2>Pictures</h2>\n");
    for c in charts {
        let _ = writeln!(
            h,
            "<figure id=\"fig-{}\">{}<figcaption>{}</figcaption></figure>",
            c.name,
            strip_xml_declaration(&c.svg),
            escape(&c.title)
        );
    }
    h.push_str("</body></html>\n");
    h
}

fn thumb(q: &crate::diagnose::DataQuality, name: &str) -> String {
    q.thumbnails.get(name).map_or_else(String::new, |uri| {
        format!("<img src=\"{uri}\" width=\"56\" alt=\"{}\">", escape(name))
    })
}

/// Suspected wrong labels, duplicates and degenerate images, the first of each with thumbnails.
fn data_quality_section(h: &mut String, q: &crate::diagnose::DataQuality) {
    let shown = || crate::diagnose::SHOWN;
    let _ = write!(
        h,
        "<h2 id=\"data-quality\">Data quality</h2><p>{} of {} images sit among another class's images in the embedding \
         ({} also in pixel space); duplicate pairs: {} with conflicting labels, {} images also in the run's other splits, \
         {} within a class; {} degenerate images.</p>",
        q.suspects,
        q.images,
        q.confident_suspects,
        q.duplicates_conflicting,
        q.duplicates_across_splits,
        q.duplicates_same_class,
        q.degenerate
    );
    if !q.suspect_list.is_empty() {
        h.push_str("<h3>Suspected wrong labels</h3><table><tr><th></th><th>image</th><th>labelled</th><th>its neighbours</th><th>embedding</th><th>pixels</th></tr>");
        for s in q.suspect_list.iter().take(shown()) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{:.0} %</td><td class=\"num\">{:.0} %</td></tr>",
                thumb(q, &s.name),
                escape(&s.name),
                escape(&s.class),
                escape(&s.neighbours_class),
                100.0 * s.embedding_disagreement,
                100.0 * s.pixel_disagreement
            );
        }
        h.push_str("</table>\n");
    }
    if !q.duplicate_list.is_empty() {
        h.push_str("<h3>Duplicates</h3><table><tr><th></th><th>image</th><th></th><th>and</th><th>kind</th><th>how</th><th>classes</th></tr>");
        for x in q.duplicate_list.iter().take(shown()) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                thumb(q, &x.a),
                escape(&x.a),
                thumb(q, &x.b),
                escape(&x.b),
                escape(&x.kind),
                escape(&x.how),
                escape(&x.classes.join(" / "))
            );
        }
        h.push_str("</table>\n");
    }
    if !q.degenerate_list.is_empty() {
        h.push_str("<h3>Degenerate images</h3><table><tr><th></th><th>image</th><th>kind</th><th>figure</th></tr>");
        for x in q.degenerate_list.iter().take(shown()) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                thumb(q, &x.name),
                escape(&x.name),
                escape(&x.kind),
                format_figure(x.value)
            );
        }
        h.push_str("</table>\n");
    }
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}
