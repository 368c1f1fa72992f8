//! The candle plumbing every kernel shares: contiguous f32 views of CPU storage, read access to
//! tensors held during a backward pass, and the op traits of convolution-like operations.

use candle_core::{CpuStorage, Layout, Result, Tensor};

pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("siam kernels take contiguous tensors"),
    }
}

/// Read access to tensors' storage, held while their values are in use.
pub(super) type Held<'a> = (candle_core::StorageRef<'a>, &'a Layout);

pub(super) fn hold<const N: usize>(ts: [&Tensor; N]) -> [Held<'_>; N] {
    ts.map(|t| t.storage_and_layout())
}

/// The contiguous f32 values of held CPU tensors (the backward passes' inputs); `what` names
/// the operation in the error for other devices.
pub(super) fn cpu_values<'a, const N: usize>(
    held: &'a [Held<'_>; N],
    what: &str,
) -> Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for (o, (s, l)) in out.iter_mut().zip(held) {
        let candle_core::Storage::Cpu(s) = &**s else {
            candle_core::bail!("{what} runs on the CPU")
        };
        *o = slice(s, l)?;
    }
    Ok(out)
}

/// The candle op traits for a convolution-like op with an optional bias: `forward` makes the
/// output from (geometry, x, w, bias), `backward` the gradients of x, w and the bias.
macro_rules! conv_ops {
    ($op:ty, $name:literal, $name_bias:literal) => {
        impl CustomOp2 for $op {
            fn name(&self) -> &'static str {
                $name
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let g = self.geom(l1.dims(), l2.dims())?;
                let (y, shape) = self.forward(&g, slice(s1, l1)?, slice(s2, l2)?, None);
                Ok((CpuStorage::F32(y), shape))
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                _res: &Tensor,
                gy: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>)> {
                let (gx, gw, _) = self.backward(x, w, gy, false)?;
                Ok((gx, Some(gw)))
            }
        }

        impl CustomOp3 for $op {
            fn name(&self) -> &'static str {
                $name_bias
            }
            fn cpu_fwd(
                &self,
                s1: &CpuStorage,
                l1: &Layout,
                s2: &CpuStorage,
                l2: &Layout,
                s3: &CpuStorage,
                l3: &Layout,
            ) -> Result<(CpuStorage, Shape)> {
                let g = self.geom(l1.dims(), l2.dims())?;
                let b = slice(s3, l3)?;
                if b.len() != g.o {
                    candle_core::bail!("conv2d bias has {} values for {} channels", b.len(), g.o)
                }
                let (y, shape) = self.forward(&g, slice(s1, l1)?, slice(s2, l2)?, Some(b));
                Ok((CpuStorage::F32(y), shape))
            }
            fn bwd(
                &self,
                x: &Tensor,
                w: &Tensor,
                _b: &Tensor,
                _res: &Tensor,
                gy: &Tensor,
            ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
                let (gx, gw, gb) = self.backward(x, w, gy, true)?;
                Ok((gx, Some(gw), gb))
            }
        }
    };
}

pub(super) use conv_ops;
