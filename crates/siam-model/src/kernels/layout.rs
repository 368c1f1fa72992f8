//! Channel-last ⇄ channel-first copies whose gradients come out contiguous.
//!
//! `x.permute(..).contiguous()` hands its gradient back as a permuted (strided) view, which
//! candle then adds into a zero-filled tensor element by element with strided indexing. The
//! convnet's last map (N × 128 × 7 × 7 floats) goes back to channel-first order before the
//! flattened head on every step, so that add cost a few percent of a training step. Here each
//! direction is one blocked copy, and its backward is the other direction.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::ops::slice;
use super::transpose::transpose_images;

/// Which way a [`Relayout`] copies.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Order {
    /// (N, C, H, W) → (N, H, W, C).
    ToLast,
    /// (N, H, W, C) → (N, C, H, W).
    ToFirst,
}

struct Relayout(Order);

impl CustomOp1 for Relayout {
    fn name(&self) -> &'static str {
        match self.0 {
            Order::ToLast => "siam-channels-last",
            Order::ToFirst => "siam-channels-first",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, a, b, c] = l.dims() else {
            candle_core::bail!("a channel relayout of shape {:?} (not 4-d)", l.dims())
        };
        let x = slice(s, l)?;
        let mut y = vec![0f32; x.len()];
        let shape = match self.0 {
            // (N, C=a, H=b, W=c): each image is a (C) × (H·W) matrix, transposed.
            Order::ToLast => {
                transpose_images(x, &mut y, a, b * c);
                Shape::from((n, b, c, a))
            }
            // (N, H=a, W=b, C=c): each image is a (H·W) × (C) matrix, transposed.
            Order::ToFirst => {
                transpose_images(x, &mut y, a * b, c);
                Shape::from((n, c, a, b))
            }
        };
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, gy: &Tensor) -> Result<Option<Tensor>> {
        let back = match self.0 {
            Order::ToLast => channels_first(gy)?,
            Order::ToFirst => channels_last(gy)?,
        };
        Ok(Some(back))
    }
}

/// (N, C, H, W) → contiguous (N, H, W, C), with a contiguous gradient (candle's permute and
/// copy off the CPU f32 path).
pub fn channels_last(x: &Tensor) -> Result<Tensor> {
    if super::fast_path(&[x]) && x.rank() == 4 {
        x.contiguous()?.apply_op1(Relayout(Order::ToLast))
    } else {
        x.permute((0, 2, 3, 1))?.contiguous()
    }
}

/// (N, H, W, C) → contiguous (N, C, H, W), with a contiguous gradient (candle's permute and
/// copy off the CPU f32 path).
pub fn channels_first(x: &Tensor) -> Result<Tensor> {
    if super::fast_path(&[x]) && x.rank() == 4 {
        x.contiguous()?.apply_op1(Relayout(Order::ToFirst))
    } else {
        x.permute((0, 3, 1, 2))?.contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{grads_of, max_diff, rand};
    use candle_core::Var;

    /// Both directions equal candle's permute, forward and backward, on shapes that are not
    /// multiples of the copy's block; the gradients are contiguous; a 3-d input is refused.
    #[test]
    fn relayouts_match_candle_with_contiguous_gradients() {
        for (dims, seed) in [
            ([3usize, 37, 5, 7], 1u64),
            ([2, 1, 40, 33], 2),
            ([1, 64, 1, 1], 3),
        ] {
            let x = Var::from_tensor(&rand(&dims, seed)).unwrap();
            let ours = channels_last(&x).unwrap();
            let theirs = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            assert_eq!(ours.dims(), theirs.dims());
            assert_eq!(max_diff(&ours, &theirs), 0.0);
            let up = rand(ours.dims(), seed + 10);
            let (g1, g2) = (grads_of(&ours, &up), grads_of(&theirs, &up));
            let (a, b) = (g1.get(&x).unwrap(), g2.get(&x).unwrap());
            assert!(a.is_contiguous());
            assert_eq!(max_diff(a, b), 0.0);

            let z = Var::from_tensor(&theirs).unwrap();
            let ours = channels_first(&z).unwrap();
            let theirs = z.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
            assert_eq!(ours.dims(), &dims);
            assert_eq!(max_diff(&ours, &theirs), 0.0);
            assert_eq!(max_diff(&ours, x.as_tensor()), 0.0);
            let up = rand(&dims, seed + 20);
            let (g1, g2) = (grads_of(&ours, &up), grads_of(&theirs, &up));
            let (a, b) = (g1.get(&z).unwrap(), g2.get(&z).unwrap());
            assert!(a.is_contiguous());
            assert_eq!(max_diff(a, b), 0.0);
        }
        let e = Tensor::zeros(
            (2, 3, 4),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
        .apply_op1(Relayout(Order::ToFirst))
        .unwrap_err();
        assert!(e.to_string().contains("not 4-d"), "{e}");
    }
}
