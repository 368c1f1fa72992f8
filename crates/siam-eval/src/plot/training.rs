//! Charts of training: the curves of the run log, the learning-rate range test's curve.

use super::*;

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
