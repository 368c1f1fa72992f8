//! Pictures of a diagnosis, drawn with plotters in SVG and PNG: the embedding space in 2-D
//! (PCA, or t-SNE) coloured by class, same/different distance histograms with the margin and
//! the threshold, the ROC curve, training curves from the run log, and the learning-rate range
//! test's curve. Text is set in an
//! embedded DejaVu Sans, so no system font library is needed.
//!
//! - this file: the font, the palette, [`Chart`] and its rendering, [`charts`];
//! - `evaluation.rs`: the embedding map, the distance histograms, the ROC curve;
//! - `training.rs`: the training curves and the learning-rate range test's curve.

use std::io::Cursor;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::diagnose::{Evidence, History};
use crate::error::{EvalError, Result};

mod evaluation;
mod training;

pub use evaluation::{distance_histogram, embedding_map, roc_curve};
pub use training::{lr_find_chart, training_curves};

/// DejaVu Sans (Bitstream Vera license, see `assets/DejaVuSans-LICENSE.txt`).
static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

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
