//! BatchNorm helpers shared by the convnet and ResNet: γ and β, the running statistics folded
//! into a scale and shift for evaluation, the fused BatchNorm + ReLU in training, the running
//! statistics' update (candle's momentum and unbiased variance), and the fused block's call
//! with that update.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::BatchNorm;

use crate::kernels::BlockEnd;

/// BatchNorm's γ and β (ones and zeros, shaped as its running mean, for a BatchNorm without
/// them).
pub(super) fn bn_gamma_beta(bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    Ok(match bn.weight_and_bias() {
        Some((g, b)) => (g.clone(), b.clone()),
        None => {
            let mean = bn.running_mean();
            (mean.ones_like()?, mean.zeros_like()?)
        }
    })
}

/// BatchNorm in evaluation as a per-channel scale and shift, `s = γ/√(var + ε)` and
/// `t = β − mean·s` from the running statistics (γ and β keep their gradients).
pub(super) fn bn_folded(bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    let (gamma, beta) = bn_gamma_beta(bn)?;
    let scale = (gamma / (bn.running_var().detach() + bn.eps())?.sqrt()?)?;
    let shift = (beta - (bn.running_mean().detach() * &scale)?)?;
    Ok((scale, shift))
}

/// `relu(bn(x))`. In training, the fused kernel normalises with the batch statistics and the
/// running statistics are updated as candle's BatchNorm does (momentum, unbiased variance).
pub(super) fn bn_relu(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    let Some((gamma, beta)) = bn.weight_and_bias().filter(|_| train) else {
        return bn.forward_t(x, train)?.relu();
    };
    let (y, mean, var) = crate::kernels::batch_norm_relu_train(x, gamma, beta, bn.eps())?;
    let count = (x.elem_count() / x.dim(1)?) as f64;
    update_running(bn, &mean, &var, count)?;
    Ok(y)
}

/// Updates BatchNorm's running statistics from a batch's mean and biased variance over
/// `count` values per channel, as candle's BatchNorm does (momentum, unbiased variance).
pub(super) fn update_running(
    bn: &BatchNorm,
    mean: &Tensor,
    var: &Tensor,
    count: f64,
) -> Result<()> {
    let m = bn.momentum();
    let (rm, rv) = (bn.running_mean(), bn.running_var());
    let new_mean = ((rm.detach() * (1.0 - m))? + (mean * m)?)?;
    let unbiased = if count > 1.0 {
        count / (count - 1.0)
    } else {
        1.0
    };
    let new_var = ((rv.detach() * (1.0 - m))? + (var * (m * unbiased))?)?;
    // In place: the running statistics are variables shared with the model's VarMap.
    rm.slice_set(&new_mean.to_dtype(rm.dtype())?, 0, 0)?;
    rv.slice_set(&new_var.to_dtype(rv.dtype())?, 0, 0)?;
    Ok(())
}

/// `kernels::conv_block` on channel-last `x` (N, H, W, C): two 3×3 convolutions, each given as
/// its weights, its BatchNorm and that BatchNorm's (p, q) — (γ, β) in training, where the
/// batch statistics normalise, the folded scale and shift otherwise. In training both
/// BatchNorms' running statistics are updated from the batch's (over N·H·W values each).
pub(super) fn fused_block(
    x: &Tensor,
    convs: [(&Tensor, &BatchNorm, (Tensor, Tensor)); 2],
    end: BlockEnd,
    input_grad: bool,
    train: bool,
) -> Result<Tensor> {
    let [(w1, bn1, (p1, q1)), (w2, bn2, (p2, q2))] = convs;
    let (cout, cin) = (w1.dim(0)?, w1.dim(1)?);
    let params = Tensor::cat(
        &[&w1.flatten_all()?, &p1, &q1, &w2.flatten_all()?, &p2, &q2],
        0,
    )?;
    let eps = train.then(|| bn1.eps());
    let (y, stats) = crate::kernels::conv_block(x, &params, (cin, cout), end, input_grad, eps)?;
    if let Some(stats) = stats {
        let (n, h, w, _) = x.dims4()?;
        let dev = x.device();
        for (bn, (mean, var)) in [bn1, bn2].into_iter().zip(stats) {
            let (mean, var) = (Tensor::new(mean, dev)?, Tensor::new(var, dev)?);
            update_running(bn, &mean, &var, (n * h * w) as f64)?;
        }
    }
    Ok(y)
}
