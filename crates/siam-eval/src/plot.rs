//! Pictures of a diagnosis, drawn with plotters in SVG and PNG: the embedding space in 2-D
//! (PCA, or t-SNE) coloured by class, same/different distance histograms with the margin and
//! the threshold, the ROC curve, training curves from the run log, and the learning-rate range
//! test's curve. Text is set in an
//! embedded DejaVu Sans, so no system font library is needed.

use std::io::Cursor;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::diagnose::{Evidence, History};
use crate::error::{EvalError, Result};

/// DejaVu Sans (Bitstream Vera license, see `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

fn ensure_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(EvalError::Invalid(
            "the embedded font could not be read".into(),
        ))
    }
}

/// Ten well-separated colours (matplotlib's tab10).
pub const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A rendered picture in both formats.
#[derive(Debug, Clone)]
pub struct Chart {
    /// File stem: `embedding`, `distances`, `roc`, `training`, `lr-find`.
    pub name: &'static str,
    /// What it shows.
    pub title: String,
    /// SVG text.
    pub svg: String,
    /// PNG bytes.
    pub png: Vec<u8>,
}

type DrawResult = std::result::Result<(), String>;

/// A named figure of a validation record, drawn as one line.
type ValidationSeries<'a> = (
    &'a str,
    Box<dyn Fn(&crate::diagnose::HistoryValidation) -> f64>,
    RGBColor,
);

/// Something that can draw itself on any plotters backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

fn e<E: std::fmt::Debug>(err: E) -> String {
    format!("{err:?}")
}

fn render(name: &'static str, title: String, size: (u32, u32), d: &impl Draw) -> Result<Chart> {
    ensure_font()?;
    let fail = |m: String| EvalError::Invalid(format!("cannot draw the {name} picture: {m}"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|x| fail(e(x)))?;
        d.draw(&root).map_err(fail)?;
        root.present().map_err(|x| fail(e(x)))?;
    }
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|x| fail(e(x)))?;
        d.draw(&root).map_err(fail)?;
        root.present().map_err(|x| fail(e(x)))?;
    }
    let img = image::RgbImage::from_raw(size.0, size.1, buf)
        .ok_or_else(|| fail("bitmap size mismatch".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|x| fail(x.to_string()))?;
    Ok(Chart {
        name,
        title,
        svg,
        png,
    })
}

fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let span = (hi - lo).max(1e-9);
    (lo - 0.05 * span)..(hi + 0.05 * span)
}

struct Scatter<'a> {
    points: &'a [[f32; 2]],
    labels: &'a [u32],
    names: &'a [String],
    method: &'a str,
}

impl Draw for Scatter<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (w, _) = root.dim_in_pixel();
        let (plot, legend) = root.split_horizontally(w.saturating_sub(150));
        let xs = self.points.iter().map(|p| f64::from(p[0]));
        let ys = self.points.iter().map(|p| f64::from(p[1]));
        let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                format!("Embeddings ({}), coloured by class", self.method),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(padded(x0, x1), padded(y0, y1))
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(format!("{} 1", self.method))
            .y_desc(format!("{} 2", self.method))
            .label_style(("sans-serif", 11))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(self.points.iter().zip(self.labels).map(|(p, &l)| {
                let c = PALETTE[l as usize % PALETTE.len()];
                Circle::new((f64::from(p[0]), f64::from(p[1])), 2, c.mix(0.75).filled())
            }))
            .map_err(e)?;
        let mut classes: Vec<u32> = self.labels.to_vec();
        classes.sort_unstable();
        classes.dedup();
        for (row, &l) in classes.iter().enumerate() {
            let y = 40 + 20 * row as i32;
            let c = PALETTE[l as usize % PALETTE.len()];
            legend
                .draw(&Circle::new((12, y), 5, c.filled()))
                .map_err(e)?;
            let name = self
                .names
                .get(l as usize)
                .cloned()
                .unwrap_or_else(|| l.to_string());
            legend
                .draw(&Text::new(name, (24, y - 7), ("sans-serif", 13)))
                .map_err(e)?;
        }
        Ok(())
    }
}

/// The embedding space in 2-D, coloured by class; `method` names the projection.
pub fn embedding_map(
    points: &[[f32; 2]],
    labels: &[u32],
    class_names: &[String],
    method: &str,
) -> Result<Chart> {
    render(
        "embedding",
        format!("Embedding space ({method})"),
        (760, 560),
        &Scatter {
            points,
            labels,
            names: class_names,
            method,
        },
    )
}

struct Histograms<'a> {
    distances: &'a [f32],
    same: &'a [f32],
    margin: Option<f64>,
    threshold: Option<f32>,
}

impl Draw for Histograms<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let mut sorted: Vec<f64> = self.distances.iter().map(|&d| f64::from(d)).collect();
        sorted.sort_by(f64::total_cmp);
        let top = sorted
            .get(((sorted.len() as f64 - 1.0) * 0.995) as usize)
            .copied()
            .unwrap_or(1.0);
        let mut hi = top;
        if let Some(m) = self.margin {
            hi = hi.max(m * 1.05);
        }
        if let Some(t) = self.threshold {
            hi = hi.max(f64::from(t) * 1.05);
        }
        let hi = if hi > 0.0 { hi } else { 1.0 };
        let bins = 40usize;
        let width = hi / bins as f64;
        let hist = |want: bool| {
            let mut h = vec![0f64; bins];
            let mut n = 0usize;
            for (&d, &s) in self.distances.iter().zip(self.same) {
                if (s == 1.0) == want {
                    n += 1;
                    let b = ((f64::from(d) / width) as usize).min(bins - 1);
                    h[b] += 1.0;
                }
            }
            h.iter_mut().for_each(|v| *v /= n.max(1) as f64);
            h
        };
        let (hs, hd) = (hist(true), hist(false));
        let ymax = hs.iter().chain(&hd).copied().fold(0.0, f64::max).max(1e-3) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption("Pair distances: same vs different", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..hi, 0.0..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("distance")
            .y_desc("share of pairs")
            .label_style(("sans-serif", 11))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(e)?;
        for (h, colour, label) in [
            (&hd, PALETTE[3], "different pairs"),
            (&hs, PALETTE[0], "same pairs"),
        ] {
            chart
                .draw_series(h.iter().enumerate().map(|(i, &v)| {
                    let x0 = i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, v)], colour.mix(0.45).filled())
                }))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], colour.mix(0.6).filled())
                });
        }
        let mut vline = |x: f64, colour: RGBColor, label: String| -> DrawResult {
            chart
                .draw_series(LineSeries::new(
                    [(x, 0.0), (x, ymax)],
                    colour.stroke_width(2),
                ))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                });
            Ok(())
        };
        if let Some(m) = self.margin {
            vline(m, BLACK, format!("margin {m}"))?;
        }
        if let Some(t) = self.threshold {
            vline(f64::from(t), PALETTE[2], format!("threshold {t:.3}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// Histograms of same and different pair distances with the margin and threshold marked.
pub fn distance_histogram(
    distances: &[f32],
    same: &[f32],
    margin: Option<f64>,
    threshold: Option<f32>,
) -> Result<Chart> {
    render(
        "distances",
        "Same and different pair distances".into(),
        (760, 460),
        &Histograms {
            distances,
            same,
            margin,
            threshold,
        },
    )
}

struct RocChart<'a> {
    fpr: &'a [f64],
    tpr: &'a [f64],
    auc: f64,
}

impl Draw for RocChart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("ROC curve (AUC {:.4})", self.auc),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("false-accept rate")
            .y_desc("true-accept rate")
            .label_style(("sans-serif", 11))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                self.fpr.iter().copied().zip(self.tpr.iter().copied()),
                PALETTE[0].stroke_width(2),
            ))
            .map_err(e)?;
        Ok(())
    }
}

/// The ROC curve.
pub fn roc_curve(fpr: &[f64], tpr: &[f64], auc: f64) -> Result<Chart> {
    render(
        "roc",
        "ROC curve".into(),
        (520, 480),
        &RocChart { fpr, tpr, auc },
    )
}

struct Curves<'a> {
    history: &'a History,
}

impl Draw for Curves<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let h = self.history;
        let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
        let steps: Vec<(f64, f64)> = h
            .steps
            .iter()
            .filter_map(|s| s.loss.filter(|l| l.is_finite()).map(|l| (s.step as f64, l)))
            .collect();
        let last = h
            .steps
            .iter()
            .map(|s| s.step)
            .chain(h.validations.iter().map(|v| v.step))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let lmax = steps.iter().map(|s| s.1).fold(0.0, f64::max).max(1e-6) * 1.05;
        let mut c1 = ChartBuilder::on(&top)
            .caption("Training loss", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..last, 0.0..lmax)
            .map_err(e)?;
        c1.configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 11))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(e)?;
        c1.draw_series(LineSeries::new(
            steps.iter().copied(),
            PALETTE[0].stroke_width(2),
        ))
        .map_err(e)?
        .label("training loss")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], PALETTE[0].stroke_width(2)));
        let vl: Vec<(f64, f64)> = h
            .validations
            .iter()
            .filter_map(|v| v.loss.map(|l| (v.step as f64, l)))
            .collect();
        if !vl.is_empty() {
            c1.draw_series(LineSeries::new(
                vl.iter().copied(),
                PALETTE[1].stroke_width(2),
            ))
            .map_err(e)?
            .label("validation loss")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], PALETTE[1].stroke_width(2)));
            c1.draw_series(vl.iter().map(|&p| Circle::new(p, 3, PALETTE[1].filled())))
                .map_err(e)?;
        }
        c1.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        let mut c2 = ChartBuilder::on(&bottom)
            .caption("Validation", ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..last, 0.0..1.0)
            .map_err(e)?;
        c2.configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 11))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(e)?;
        let series: [ValidationSeries<'_>; 3] = [
            ("ROC-AUC", Box::new(|v| v.roc_auc), PALETTE[0]),
            ("precision@1", Box::new(|v| v.precision_at_1), PALETTE[2]),
            (h.metric.as_str(), Box::new(|v| v.metric), PALETTE[4]),
        ];
        for (name, f, colour) in series {
            let pts: Vec<(f64, f64)> = h
                .validations
                .iter()
                .map(|v| (v.step as f64, f(v)))
                .collect();
            c2.draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(e)?
                .label(name.to_string())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                });
            c2.draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(e)?;
        }
        c2.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// Training loss and validation figures over the run.
pub fn training_curves(history: &History) -> Result<Chart> {
    render(
        "training",
        "Training curves".into(),
        (760, 620),
        &Curves { history },
    )
}

struct LrCurve<'a> {
    lr: &'a [f64],
    loss: &'a [f64],
    smoothed: &'a [f64],
    suggested: Option<f64>,
    config_lr: Option<f64>,
}

impl Draw for LrCurve<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let finite = |v: &[f64]| {
            v.iter()
                .copied()
                .filter(|x| x.is_finite())
                .collect::<Vec<_>>()
        };
        let lrs = finite(self.lr);
        let lo = lrs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = lrs.iter().copied().fold(0.0, f64::max);
        let (lo, hi) = if lo > 0.0 && hi > lo {
            (lo, hi)
        } else {
            (1e-7, 1.0)
        };
        // The y range follows the smoothed curve (raw losses spike past it at the end).
        let sm = finite(self.smoothed);
        let ymin = finite(self.loss)
            .iter()
            .chain(&sm)
            .copied()
            .fold(f64::INFINITY, f64::min);
        let ymax = sm.iter().copied().fold(ymin, f64::max);
        let y = padded(ymin.min(ymax), ymax);
        let mut c = ChartBuilder::on(root)
            .caption("Learning-rate range test", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), y.clone())
            .map_err(e)?;
        c.configure_mesh()
            .x_desc("learning rate")
            .y_desc("loss")
            .x_label_formatter(&|v| format!("{v:.0e}"))
            .label_style(("sans-serif", 11))
            .light_line_style(TRANSPARENT)
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(e)?;
        let clip = |v: f64| v.clamp(y.start, y.end);
        let raw: Vec<(f64, f64)> = self
            .lr
            .iter()
            .zip(self.loss)
            .filter(|(l, x)| l.is_finite() && x.is_finite())
            .map(|(&l, &x)| (l, clip(x)))
            .collect();
        c.draw_series(LineSeries::new(raw, PALETTE[7].mix(0.6).stroke_width(1)))
            .map_err(e)?
            .label("loss of the batch")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], PALETTE[7].stroke_width(1)));
        let smooth: Vec<(f64, f64)> = self
            .lr
            .iter()
            .zip(self.smoothed)
            .filter(|(l, x)| l.is_finite() && x.is_finite())
            .map(|(&l, &x)| (l, clip(x)))
            .collect();
        c.draw_series(LineSeries::new(smooth, PALETTE[0].stroke_width(2)))
            .map_err(e)?
            .label("smoothed")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 14, y)], PALETTE[0].stroke_width(2)));
        for (v, colour, name) in [
            (self.suggested, PALETTE[3], "suggested"),
            (self.config_lr, PALETTE[2], "the config's rate"),
        ] {
            if let Some(v) = v.filter(|v| *v >= lo && *v <= hi) {
                c.draw_series(LineSeries::new(
                    [(v, y.start), (v, y.end)],
                    colour.stroke_width(2),
                ))
                .map_err(e)?
                .label(format!("{name} {v:.1e}"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 14, y)], colour.stroke_width(2))
                });
            }
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

/// The learning-rate range test's loss against the rate (log scale), the raw batch losses
/// and the smoothed curve, with the suggested rate and the config's own rate marked.
pub fn lr_find_chart(
    lr: &[f64],
    loss: &[f64],
    smoothed: &[f64],
    suggested: Option<f64>,
    config_lr: Option<f64>,
) -> Result<Chart> {
    render(
        "lr-find",
        "Loss against the learning rate".into(),
        (720, 480),
        &LrCurve {
            lr,
            loss,
            smoothed,
            suggested,
            config_lr,
        },
    )
}

/// How to project embeddings to 2-D.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// Principal components.
    Pca,
    /// Exact t-SNE (perplexity 30, 750 iterations, seeded).
    Tsne,
}

/// Every picture of a diagnosis: the embedding map (on at most `max_points` embeddings), the
/// distance histograms, the ROC curve, and training curves when a history is given.
pub fn charts(
    evidence: &Evidence,
    margin: Option<f64>,
    threshold: Option<f32>,
    history: Option<&History>,
    projection: Projection,
    max_points: usize,
) -> Result<Vec<Chart>> {
    let d = evidence.dims;
    let n = evidence.labels.len().min(max_points);
    // Take points spread over the whole set, not its first classes.
    let idx: Vec<usize> = if n == 0 {
        Vec::new()
    } else {
        (0..n).map(|i| i * evidence.labels.len() / n).collect()
    };
    let x: Vec<f32> = idx
        .iter()
        .flat_map(|&i| evidence.embeddings[i * d..(i + 1) * d].iter().copied())
        .collect();
    let labels: Vec<u32> = idx.iter().map(|&i| evidence.labels[i]).collect();
    let (points, method) = match projection {
        Projection::Pca => (crate::project::pca_2d(&x, n, d), "PCA"),
        Projection::Tsne => (crate::project::tsne_2d(&x, n, d, 30.0, 750, 0), "t-SNE"),
    };
    let mut out = vec![
        embedding_map(&points, &labels, &evidence.class_names, method)?,
        distance_histogram(&evidence.distances, &evidence.same, margin, threshold)?,
        roc_curve(&evidence.roc.fpr, &evidence.roc.tpr, evidence.roc.auc())?,
    ];
    if let Some(h) = history
        && !h.steps.is_empty()
    {
        out.push(training_curves(h)?);
    }
    Ok(out)
}
