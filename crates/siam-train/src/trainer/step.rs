//! One training step on a rayon worker, and the parallel norms it and the log records use.

use super::*;

/// Σ x² of a tensor. On the CPU (f32, contiguous) in one parallel pass over fixed chunks of
/// the values read in place, each summed in f32 lanes and the chunks combined in order in f64,
/// so the result is the same for any thread count; elsewhere candle's `sqr().sum_all()`.
/// Called on every gradient every step: candle's version is a single-threaded pass writing a
/// squared copy first.
pub(crate) fn sum_of_squares(t: &Tensor) -> Result<f64> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    if t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous() {
        let (s, l) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*s, l.contiguous_offsets())
        {
            let parts: Vec<f64> = v[a..b]
                .par_chunks(CHUNK)
                .map(|c| {
                    let mut lanes = [0f32; 16];
                    let mut it = c.chunks_exact(16);
                    for x in &mut it {
                        for (acc, x) in lanes.iter_mut().zip(x) {
                            *acc += x * x;
                        }
                    }
                    let rest: f32 = it.remainder().iter().map(|x| x * x).sum();
                    lanes.iter().map(|&x| f64::from(x)).sum::<f64>() + f64::from(rest)
                })
                .collect();
            return Ok(parts.iter().sum());
        }
    }
    Ok(f64::from(
        t.sqr()?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?,
    ))
}

/// The L2 norm of the weights, and `‖θ − before‖ / ‖θ‖` when `before` holds the weights
/// before this step (`None` when it is empty or the weights are all zero).
pub(super) fn weight_and_update_norms(
    vars: &[candle_core::Var],
    before: &[Tensor],
) -> Result<(f64, Option<f64>)> {
    let (mut w, mut d) = (0f64, 0f64);
    for (i, v) in vars.iter().enumerate() {
        w += sum_of_squares(v.as_tensor())?;
        if let Some(b) = before.get(i) {
            d += sum_of_squares(&(v.as_tensor() - b)?)?;
        }
    }
    let ratio = (!before.is_empty() && w > 0.0).then(|| (d / w).sqrt());
    Ok((w.sqrt(), ratio))
}

impl Run<'_> {
    /// One training step on `batch`: the loss, its gradients and their squared norm, and the
    /// update (skipped, with the reason, when the loss or a gradient is not finite). With
    /// `keep_before`, the weights before the update, for the update's size.
    pub(super) fn step_on_pool(
        &mut self,
        batch: &Batch,
        trainable: &[candle_core::Var],
        lr: f64,
        keep_before: bool,
    ) -> Result<StepOutcome> {
        let (l, active) = self.batch_loss(batch)?;
        let loss = f64::from(l.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !loss.is_finite() {
            return Ok(StepOutcome::LossNotFinite);
        }
        let grads = l.backward()?;
        let mut grad_sq = 0f64;
        for v in trainable {
            if let Some(g) = grads.get(v.as_tensor()) {
                grad_sq += sum_of_squares(g)?;
            }
        }
        if !grad_sq.is_finite() {
            return Ok(StepOutcome::GradNotFinite);
        }
        let before = if keep_before {
            Some(
                trainable
                    .iter()
                    .map(|v| v.as_tensor().copy())
                    .collect::<candle_core::Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        self.opt.step(&grads, lr)?;
        Ok(StepOutcome::Done {
            loss,
            active,
            grad_sq,
            before,
        })
    }
}

/// What [`Run::step_on_pool`] did.
pub(super) enum StepOutcome {
    /// The update was applied.
    Done {
        loss: f64,
        active: Option<f64>,
        grad_sq: f64,
        before: Option<Vec<Tensor>>,
    },
    LossNotFinite,
    GradNotFinite,
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    /// The parallel Σ x² against candle's `sqr().sum_all()` in f64, on lengths around the lane
    /// width and the chunk size, and on a strided view (candle's path).
    #[test]
    fn sum_of_squares_matches_candle() {
        for n in [
            0usize,
            1,
            15,
            16,
            17,
            1000,
            (1 << 14) + 3,
            3 * (1 << 14) + 100,
        ] {
            let v: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
                .collect();
            let t = Tensor::from_vec(v.clone(), n, &Device::Cpu).unwrap();
            let want: f64 = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let got = super::sum_of_squares(&t).unwrap();
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "n {n}: {got} vs {want}"
            );
        }
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            .t()
            .unwrap();
        assert!(!t.is_contiguous());
        let want: f64 = (0..12).map(|i| f64::from(i * i)).sum();
        assert_eq!(super::sum_of_squares(&t).unwrap(), want);
    }
}
