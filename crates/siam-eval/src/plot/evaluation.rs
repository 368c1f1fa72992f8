//! Charts of an evaluation: the embedding map coloured by class, same/different distance
//! histograms with the margin and the threshold, the ROC curve.

use super::*;

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
