//! AdamW's update on the CPU: one pass over fixed chunks spread over rayon, the parameter
//! written in place through candle's in-place op, the moments kept as plain vectors.

use candle_core::{DType, Result, Tensor};

/// One AdamW update's hyper-parameters.
pub(super) struct AdamwStep {
    pub(super) lr: f64,
    pub(super) weight_decay: f64,
    pub(super) beta1: f64,
    pub(super) beta2: f64,
    pub(super) eps: f64,
    /// The step number, from 1.
    pub(super) t: i32,
}

/// Whether the fused pass can use `t` in place: f32, contiguous, on the CPU.
pub(super) fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// Values per parallel chunk of the fused update: element-wise, so the result does not depend
/// on how the chunks are spread over threads.
const CHUNK: usize = 1 << 14;

impl AdamwStep {
    /// The update in one pass over θ, g, m and v on the CPU, spread over rayon in fixed chunks:
    /// θ is written in place (no new buffer, no copy into the variable), and so are the
    /// moments, held as plain vectors.
    pub(super) fn fused(
        &self,
        theta: &Tensor,
        g: &Tensor,
        moments: &mut (Vec<f32>, Vec<f32>),
    ) -> Result<()> {
        let n = theta.elem_count();
        if g.elem_count() != n || moments.0.len() != n || moments.1.len() != n {
            candle_core::bail!(
                "gradient of {} values and moments of {} for {n} parameters",
                g.elem_count(),
                moments.0.len()
            )
        }
        theta.inplace_op2(
            g,
            &InPlace {
                step: self,
                moments: std::cell::RefCell::new(moments),
            },
        )
    }
}

/// The fused AdamW update as candle's in-place operation on θ, with g as its source.
struct InPlace<'a> {
    step: &'a AdamwStep,
    moments: std::cell::RefCell<&'a mut (Vec<f32>, Vec<f32>)>,
}

impl candle_core::InplaceOp2 for InPlace<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<()> {
        use rayon::prelude::*;
        let (Some((a1, b1)), Some((a2, b2))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("fused AdamW needs contiguous parameters and gradients")
        };
        let candle_core::CpuStorage::F32(th) = s1 else {
            candle_core::bail!("fused AdamW needs f32 parameters")
        };
        let gv = &s2.as_slice::<f32>()?[a2..b2];
        let th = &mut th[a1..b1];
        let mut moments = self.moments.borrow_mut();
        let (mv, vv) = &mut **moments;
        let h = self.step;
        let (be1, be2) = (h.beta1 as f32, h.beta2 as f32);
        let (c1, c2) = ((1.0 - h.beta1) as f32, (1.0 - h.beta2) as f32);
        let h1 = (1.0 / (1.0 - h.beta1.powi(h.t))) as f32;
        let h2 = (1.0 / (1.0 - h.beta2.powi(h.t))) as f32;
        let decay = (1.0 - h.lr * h.weight_decay) as f32;
        let (lr, eps) = (h.lr as f32, h.eps as f32);
        th.par_chunks_mut(CHUNK)
            .zip(mv.par_chunks_mut(CHUNK))
            .zip(vv.par_chunks_mut(CHUNK))
            .zip(gv.par_chunks(CHUNK))
            .for_each(|(((to, mo), vo), gv)| {
                for i in 0..to.len() {
                    let mi = mo[i] * be1 + gv[i] * c1;
                    let vi = vo[i] * be2 + gv[i] * gv[i] * c2;
                    let update = (mi * h1) / ((vi * h2).sqrt() + eps);
                    mo[i] = mi;
                    vo[i] = vi;
                    to[i] = to[i] * decay - update * lr;
                }
            });
        Ok(())
    }
}
