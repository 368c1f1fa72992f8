//! Learning-rate schedules: constant, step and cosine, with linear warmup.

use crate::config::{ScheduleConfig, ScheduleKind};

/// The learning rate at `step` (0-based) of a run of `total` steps, `steps_per_epoch` each.
pub fn learning_rate(
    s: &ScheduleConfig,
    peak: f64,
    step: u64,
    total: u64,
    steps_per_epoch: u64,
) -> f64 {
    let warm = s.warmup_steps as u64;
    if step < warm {
        return peak * (step + 1) as f64 / warm as f64;
    }
    match s.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::Step => {
            let epoch = step / steps_per_epoch.max(1);
            peak * s.gamma.powi((epoch / s.step_epochs.max(1) as u64) as i32)
        }
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(warm).max(1) as f64;
            let p = ((step - warm) as f64 / span).min(1.0);
            s.min_lr + (peak - s.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}
