//! Residual encoders with torchvision's ResNet layout (BasicBlock: ResNet-18 and ResNet-34),
//! and siam's projection head.
//!
//! The variables carry torchvision's names under the encoder's prefix (`conv1`, `bn1`,
//! `layer1.0.conv1`, `layer2.0.downsample.0`, …), so a torchvision or timm state dict maps onto
//! them one to one ([`crate::pretrained`]); the head (`head.hidden`, `head.out`) replaces
//! torchvision's classifier `fc`. On the CPU the 3×3 stride-1 convolutions run by Winograd
//! (`kernels::conv3x3`), the others on `kernels::conv2d_strided` (im2col and gemm), the 3×3/2
//! max-pooling on `kernels::max_pool2d`, the residual add and ReLU on `kernels::add_relu`.

use candle_core::{D, Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::batchnorm::{self, bn_folded, bn_gamma_beta, fused_block, update_running};
use crate::kernels::BlockEnd;

/// The first layers of a ResNet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stem {
    /// torchvision's: a 7×7 stride-2 convolution, BatchNorm, ReLU and 3×3 stride-2
    /// max-pooling (the input shrinks 4×): for 112–224-pixel photos, and pretrained weights.
    #[default]
    Imagenet,
    /// A 3×3 stride-1 convolution, BatchNorm and ReLU, no pooling: for inputs of 28–64 pixels,
    /// which the ImageNet stem would shrink to almost nothing.
    Small,
}

impl Stem {
    /// The stem convolution's kernel side and stride (padded by half the kernel).
    fn conv(self) -> (usize, usize) {
        match self {
            Self::Imagenet => (7, 2),
            Self::Small => (3, 1),
        }
    }
}

/// The settings of a ResNet encoder (`kind = "resnet18"` or `"resnet34"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ResnetConfig {
    /// Channels of the four stages (torchvision's: 64, 128, 256, 512; narrower for tests and
    /// small data).
    #[serde(default = "default_widths")]
    pub widths: Vec<usize>,
    /// `imagenet` (7×7/2 convolution and 3×3/2 max-pooling) or `small` (3×3/1, no pooling).
    #[serde(default)]
    pub stem: Stem,
    /// Width of the projection head's hidden layer (0: a single linear layer).
    #[serde(default)]
    pub hidden: usize,
    /// Embedding dimension.
    #[serde(default = "super::default_dim")]
    pub embedding_dim: usize,
    /// A torchvision or timm state dict saved as safetensors, loaded into the backbone when a
    /// model is first built for training ([`crate::pretrained`]); the model file holds the
    /// weights afterwards, so it is not needed to load a trained model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
}

fn default_widths() -> Vec<usize> {
    vec![64, 128, 256, 512]
}

impl Default for ResnetConfig {
    fn default() -> Self {
        Self {
            widths: default_widths(),
            stem: Stem::Imagenet,
            hidden: 0,
            embedding_dim: super::default_dim(),
            pretrained: None,
        }
    }
}

/// BasicBlocks per stage.
pub fn stage_depths(depth: usize) -> Option<[usize; 4]> {
    match depth {
        18 => Some([2, 2, 2, 2]),
        34 => Some([3, 4, 6, 3]),
        _ => None,
    }
}

impl ResnetConfig {
    /// Checks the widths.
    pub fn validate(&self) -> Result<()> {
        if self.widths.len() != 4 || self.widths.contains(&0) {
            candle_core::bail!(
                "resnet widths must be four positive numbers (one per stage), got {:?}",
                self.widths
            )
        }
        Ok(())
    }

    /// Stored values (weights, biases, BatchNorm statistics) of a ResNet of `depth` on
    /// `channels`-channel input, without allocating; `None` on overflow or a bad config.
    pub fn parameter_count(&self, depth: usize, channels: usize) -> Option<u64> {
        let depths = stage_depths(depth)?;
        if self.widths.len() != 4 {
            return None;
        }
        let bn = |c: u64| c.checked_mul(4);
        let conv = |i: u64, o: u64, k: u64| i.checked_mul(o)?.checked_mul(k * k);
        let w0 = self.widths[0] as u64;
        let (k, _) = self.stem.conv();
        let mut total = conv(channels as u64, w0, k as u64)?.checked_add(bn(w0)?)?;
        let mut cin = w0;
        for (s, (&w, &n)) in self.widths.iter().zip(&depths).enumerate() {
            let w = w as u64;
            for b in 0..n {
                let mut block = conv(cin, w, 3)?
                    .checked_add(bn(w)?)?
                    .checked_add(conv(w, w, 3)?)?
                    .checked_add(bn(w)?)?;
                if b == 0 && (s > 0 || cin != w) {
                    block = block.checked_add(conv(cin, w, 1)?)?.checked_add(bn(w)?)?;
                }
                total = total.checked_add(block)?;
                cin = w;
            }
        }
        let lin = |i: u64, o: u64| i.checked_mul(o)?.checked_add(o);
        let d = self.embedding_dim as u64;
        let head = if self.hidden > 0 {
            lin(cin, self.hidden as u64)?.checked_add(lin(self.hidden as u64, d)?)?
        } else {
            lin(cin, d)?
        };
        total.checked_add(head)
    }
}

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// BatchNorm on the batch statistics, which update the running ones; gradients tracked.
    Train,
    /// BatchNorm on the running statistics; gradients tracked (γ and β keep theirs).
    Eval,
    /// As `Eval`, on detached weights: no graph is built, so every activation is freed as soon
    /// as the next layer has read it and BatchNorm writes over the convolution's output.
    Inference,
}

impl Pass {
    fn train(self) -> bool {
        self == Self::Train
    }

    /// A layer's weight as this pass uses it (detached in inference).
    fn weight(self, w: &Tensor) -> Tensor {
        match self {
            Self::Inference => w.detach(),
            _ => w.clone(),
        }
    }
}

/// BatchNorm without ReLU: in training the batch statistics (siam's fused kernel on the CPU),
/// with the running statistics updated as PyTorch does (momentum, unbiased variance); in
/// evaluation [`bn_eval`].
fn bn_plain(bn: &BatchNorm, x: Tensor, pass: Pass) -> Result<Tensor> {
    let Some((gamma, beta)) = bn.weight_and_bias().filter(|_| pass.train()) else {
        return bn_eval(bn, x, false, None, pass);
    };
    let (y, mean, var) = crate::kernels::batch_norm_train(&x, gamma, beta, bn.eps(), false)?;
    let count = (x.elem_count() / x.dim(1)?) as f64;
    update_running(bn, &mean, &var, count)?;
    Ok(y)
}

/// BatchNorm in evaluation, `[relu](γ·(x − mean)/√(var + ε) + β [+ residual])` with the running
/// statistics, folded into a per-channel scale and shift and applied in one pass (with the ReLU
/// and a residual block's add) instead of candle's four broadcast passes; γ and β keep their
/// gradients outside [`Pass::Inference`]. In inference the pass writes over `x`, a
/// convolution's fresh output.
fn bn_eval(
    bn: &BatchNorm,
    x: Tensor,
    relu: bool,
    residual: Option<&Tensor>,
    pass: Pass,
) -> Result<Tensor> {
    let (scale, shift) = folded(bn, pass)?;
    crate::kernels::scale_shift_owned(x, &scale, &shift, relu, residual)
}

/// BatchNorm's running statistics as a scale and shift ([`bn_folded`]), as `pass` uses them
/// (detached in inference).
fn folded(bn: &BatchNorm, pass: Pass) -> Result<(Tensor, Tensor)> {
    let (scale, shift) = bn_folded(bn)?;
    Ok((pass.weight(&scale), pass.weight(&shift)))
}

/// `relu(bn(x))`: siam's fused training kernel, or [`bn_eval`].
fn bn_relu(bn: &BatchNorm, x: Tensor, pass: Pass) -> Result<Tensor> {
    if pass.train() {
        batchnorm::bn_relu(bn, &x, true)
    } else {
        bn_eval(bn, x, true, None, pass)
    }
}

/// A convolution without bias at `stride`, padded by half its kernel (siam's kernels on the
/// CPU: Winograd for 3×3 at stride 1, im2col otherwise; candle's elsewhere).
fn conv(c: &Conv2d, x: &Tensor, stride: usize, pass: Pass) -> Result<Tensor> {
    let w = pass.weight(c.weight());
    let k = w.dim(2)?;
    if k == 3 && stride == 1 {
        return crate::kernels::conv3x3(x, &w, 1, true);
    }
    crate::kernels::conv2d_strided(x, &w, None, k / 2, stride, true)
}

/// `[relu](bn(conv(x)) [+ residual])`: in inference a 3×3 stride-1 convolution by Winograd
/// applies the BatchNorm (and the add and ReLU) to each image's output while it is in cache
/// ([`crate::kernels::conv3x3_affine_inference`]); otherwise the convolution, then the
/// BatchNorm pass of `pass`.
fn conv_bn(
    (c, bn): (&Conv2d, &BatchNorm),
    x: &Tensor,
    stride: usize,
    pass: Pass,
    relu: bool,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    if !pass.train() {
        let (scale, shift) = folded(bn, pass)?;
        if pass == Pass::Inference && stride == 1 && c.weight().dim(2)? == 3 {
            let w = pass.weight(c.weight());
            let fused = crate::kernels::conv3x3_affine_inference(
                x,
                &w,
                1,
                (&scale, &shift),
                relu,
                residual,
            )?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        let y = conv(c, x, stride, pass)?;
        return crate::kernels::scale_shift_owned(y, &scale, &shift, relu, residual);
    }
    let y = conv(c, x, stride, pass)?;
    match (relu, residual) {
        (true, None) => batchnorm::bn_relu(bn, &y, true),
        (true, Some(r)) => crate::kernels::add_relu(&bn_plain(bn, y, pass)?, r),
        (false, None) => bn_plain(bn, y, pass),
        (false, Some(r)) => bn_plain(bn, y, pass)? + r,
    }
}

/// torchvision's BasicBlock: two 3×3 convolutions with BatchNorm, the input added back
/// (through a 1×1 convolution and BatchNorm when the shape changes), ReLU.
#[derive(Debug)]
struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    downsample: Option<(Conv2d, BatchNorm)>,
    stride: usize,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let c3 = Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let bn = BatchNormConfig::default();
        let downsample = if stride != 1 || cin != cout {
            let c1 = Conv2dConfig {
                stride,
                ..Default::default()
            };
            Some((
                candle_nn::conv2d_no_bias(cin, cout, 1, c1, vb.pp("downsample.0"))?,
                candle_nn::batch_norm(cout, bn, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: candle_nn::conv2d_no_bias(cin, cout, 3, c3, vb.pp("conv1"))?,
            bn1: candle_nn::batch_norm(cout, bn, vb.pp("bn1"))?,
            conv2: candle_nn::conv2d_no_bias(
                cout,
                cout,
                3,
                Conv2dConfig {
                    padding: 1,
                    ..Default::default()
                },
                vb.pp("conv2"),
            )?,
            bn2: candle_nn::batch_norm(cout, bn, vb.pp("bn2"))?,
            downsample,
            stride,
        })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let y = conv_bn((&self.conv1, &self.bn1), x, self.stride, pass, true, None)?;
        let identity = match &self.downsample {
            Some((c, bn)) => conv_bn((c, bn), x, self.stride, pass, false, None)?,
            None => x.clone(),
        };
        // Outside training one pass: the second BatchNorm, the add and the ReLU.
        conv_bn((&self.conv2, &self.bn2), &y, 1, pass, true, Some(&identity))
    }

    /// Whether the block runs as one fused operation ([`Self::forward_fused`]) on input of
    /// `x`'s shape: it keeps the shape (stride 1, no downsampling), both BatchNorms share ε,
    /// and its convolutions would run by Winograd (`kernels::conv3x3`'s choice, the same in
    /// every pass).
    fn fuses(&self, x: &Tensor) -> bool {
        self.downsample.is_none()
            && self.stride == 1
            && self.bn1.eps() == self.bn2.eps()
            && crate::kernels::conv3x3_by_winograd(x, self.conv1.weight(), 1)
    }

    /// The block as one CPU operation on channel-last `x` (N, H, W, C), output channel-last:
    /// `kernels::conv_block` with the residual end — each BatchNorm and ReLU applied by what
    /// reads it next, no transposes around the convolutions, and a backward pass that sees only
    /// the block's input, output and parameters. The same computation as [`Self::forward`]
    /// (within rounding); the running statistics are updated the same way in training.
    fn forward_fused(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        // Training: γ and β, the batch statistics normalise; otherwise the running statistics
        // folded into a scale and shift.
        let bn_params = |bn: &BatchNorm| -> Result<(Tensor, Tensor)> {
            if pass.train() {
                bn_gamma_beta(bn)
            } else {
                folded(bn, pass)
            }
        };
        let (w1, w2) = (
            pass.weight(self.conv1.weight()),
            pass.weight(self.conv2.weight()),
        );
        fused_block(
            x,
            [
                (&w1, &self.bn1, bn_params(&self.bn1)?),
                (&w2, &self.bn2, bn_params(&self.bn2)?),
            ],
            BlockEnd::Residual,
            true,
            pass.train(),
        )
    }

    /// The block's ReLU outputs in evaluation (`bn1`'s and the block's own), for the probe.
    fn relu_layers(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let a = self
            .bn1
            .forward_t(&x.conv2d(self.conv1.weight(), 1, self.stride, 1, 1)?, false)?
            .relu()?;
        let y = self
            .bn2
            .forward_t(&a.conv2d(self.conv2.weight(), 1, 1, 1, 1)?, false)?;
        let identity = match &self.downsample {
            Some((c, bn)) => bn.forward_t(&x.conv2d(c.weight(), 0, self.stride, 1, 1)?, false)?,
            None => x.clone(),
        };
        Ok((a, (y + identity)?.relu()?))
    }
}

/// A ResNet backbone (torchvision's layout) with global average pooling and siam's head.
#[derive(Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    stem: Stem,
    stages: Vec<Vec<BasicBlock>>,
    hidden: Option<Linear>,
    out: Linear,
}

impl ResNet {
    /// A ResNet of `depth` (18 or 34) for `channels`-channel input under `vb`.
    pub fn new(
        depth: usize,
        cfg: &ResnetConfig,
        channels: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        cfg.validate()?;
        let Some(depths) = stage_depths(depth) else {
            candle_core::bail!("no ResNet of depth {depth} (18 or 34)")
        };
        let w0 = cfg.widths[0];
        let (k, stride) = cfg.stem.conv();
        let conv1 = candle_nn::conv2d_no_bias(
            channels,
            w0,
            k,
            Conv2dConfig {
                padding: k / 2,
                stride,
                ..Default::default()
            },
            vb.pp("conv1"),
        )?;
        let bn1 = candle_nn::batch_norm(w0, BatchNormConfig::default(), vb.pp("bn1"))?;
        let mut stages = Vec::with_capacity(4);
        let mut cin = w0;
        for (s, (&w, &n)) in cfg.widths.iter().zip(&depths).enumerate() {
            let vs = vb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(cin, w, stride, vs.pp(b.to_string()))?);
                cin = w;
            }
            stages.push(blocks);
        }
        let dim = cfg.embedding_dim;
        let (hidden, out) = if cfg.hidden > 0 {
            (
                Some(candle_nn::linear(cin, cfg.hidden, vb.pp("head.hidden"))?),
                candle_nn::linear(cfg.hidden, dim, vb.pp("head.out"))?,
            )
        } else {
            (None, candle_nn::linear(cin, dim, vb.pp("head.out"))?)
        };
        Ok(Self {
            conv1,
            bn1,
            stem: cfg.stem,
            stages,
            hidden,
            out,
        })
    }

    fn stem_forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let (k, stride) = self.stem.conv();
        let w = pass.weight(self.conv1.weight());
        let y = crate::kernels::conv2d_strided(x, &w, None, k / 2, stride, false)?;
        let y = bn_relu(&self.bn1, y, pass)?;
        match self.stem {
            Stem::Imagenet => crate::kernels::max_pool2d(&y, 3, 2, 1),
            Stem::Small => Ok(y),
        }
    }

    /// The backbone's pooled features (N, `widths[3]`): torchvision's `model.fc = Identity()`
    /// output, before siam's head.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.features(x, if train { Pass::Train } else { Pass::Eval })
    }

    /// [`Self::features_t`] in evaluation without gradients (detached): no graph is kept, so
    /// each activation is freed once read, and BatchNorm writes over the convolutions' outputs.
    /// For embedding, and for a frozen backbone.
    pub fn features_inference(&self, x: &Tensor) -> Result<Tensor> {
        self.features(x, Pass::Inference)
    }

    fn features(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let mut y = self.stem_forward(x, pass)?;
        let blocks: Vec<&BasicBlock> = self.stages.iter().flatten().collect();
        let mut i = 0;
        while i < blocks.len() {
            if !blocks[i].fuses(&y) {
                y = blocks[i].forward(&y, pass)?;
                i += 1;
                continue;
            }
            // A run of fused blocks stays channel-last: one transpose each way for the run.
            // They keep the shape, so `y`'s (not yet updated) says whether the next one fuses.
            let mut z = crate::kernels::channels_last(&y)?;
            while i < blocks.len() && blocks[i].fuses(&y) {
                z = blocks[i].forward_fused(&z, pass)?;
                i += 1;
            }
            y = crate::kernels::channels_first(&z)?;
        }
        y.mean(D::Minus1)?.mean(D::Minus1)
    }

    /// Every ReLU layer's output in evaluation, named by its variables' prefix.
    pub(super) fn relu_layers(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let stem = self.stem_forward(x, Pass::Eval)?;
        out.push(("bn1".to_string(), stem.clone()));
        let mut y = stem;
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let (a, z) = block.relu_layers(&y)?;
                out.push((format!("layer{}.{b}.bn1", s + 1), a));
                out.push((format!("layer{}.{b}", s + 1), z.clone()));
                y = z;
            }
        }
        if let Some(h) = &self.hidden {
            let f = y.mean(D::Minus1)?.mean(D::Minus1)?;
            out.push(("head.hidden".to_string(), h.forward(&f)?.relu()?));
        }
        Ok(out)
    }
}

impl ResNet {
    /// siam's projection head on pooled features.
    pub fn head(&self, f: &Tensor) -> Result<Tensor> {
        let f = match &self.hidden {
            Some(h) => h.forward(f)?.relu()?,
            None => f.clone(),
        };
        self.out.forward(&f)
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features_t(x, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::tests::{max_diff, rand};
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// A BasicBlock that keeps its shape, with non-trivial γ, β and running statistics.
    fn block(c: usize) -> (VarMap, BasicBlock) {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let b = BasicBlock::new(c, c, 1, vb).unwrap();
        for (k, (name, v)) in vm.data().lock().unwrap().iter().enumerate() {
            if name.starts_with("bn") {
                let t = (rand(v.dims(), 40 + k as u64) + 1.0).unwrap();
                v.set(&t).unwrap();
            }
        }
        (vm, b)
    }

    /// The fused channel-last block computes what the per-layer path computes, in every pass:
    /// the output, the gradients of the input, the convolutions' weights, γ and β, and the
    /// running statistics after two training steps.
    #[test]
    fn fused_block_equals_the_per_layer_path() {
        let (n, c, h, w) = (3, 16, 8, 8);
        let (vm, b) = block(c);
        let x = rand(&[n, c, h, w], 1);
        assert!(b.fuses(&x), "this shape takes the fused block");
        let up = rand(&[n, c, h, w], 2);
        let stats = || -> Vec<Vec<f32>> {
            let d = vm.data().lock().unwrap();
            let mut names: Vec<&String> = d.keys().filter(|k| k.contains("running")).collect();
            names.sort();
            names
                .iter()
                .map(|k| d[*k].flatten_all().unwrap().to_vec1().unwrap())
                .collect()
        };
        let before = stats();
        for pass in [Pass::Train, Pass::Train, Pass::Eval, Pass::Inference] {
            let fused = |x: &Tensor| -> Tensor {
                let z = crate::kernels::channels_last(x).unwrap();
                crate::kernels::channels_first(&b.forward_fused(&z, pass).unwrap()).unwrap()
            };
            let xv = Var::from_tensor(&x).unwrap();
            // In inference the input is a plain tensor, as `embed` gets it.
            let xin = match pass {
                Pass::Inference => x.clone(),
                _ => xv.as_tensor().clone(),
            };
            // The per-layer path first: in training, its update of the running statistics is
            // undone before the fused block runs, and the fused block's compared with it.
            let saved = stats();
            let theirs = b.forward(&xin, pass).unwrap();
            let after_theirs = stats();
            {
                let d = vm.data().lock().unwrap();
                let mut names: Vec<&String> = d.keys().filter(|k| k.contains("running")).collect();
                names.sort();
                for (k, v) in names.iter().zip(&saved) {
                    d[*k]
                        .set(&Tensor::new(v.as_slice(), &Device::Cpu).unwrap())
                        .unwrap();
                }
            }
            let ours = fused(&xin);
            let scale = max_diff(&theirs, &theirs.zeros_like().unwrap());
            let d = max_diff(&ours, &theirs);
            assert!(d < 1e-5 * (1.0 + scale), "{pass:?}: output differs by {d}");
            for (s1, s2) in stats().iter().zip(&after_theirs) {
                let d = s1
                    .iter()
                    .zip(s2)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d < 1e-5, "{pass:?}: running statistics differ by {d}");
            }
            if pass == Pass::Train {
                assert_ne!(stats(), saved, "training updates the running statistics");
            } else {
                assert_eq!(stats(), saved, "{pass:?} leaves the running statistics");
            }
            if pass == Pass::Inference {
                assert!(!ours.track_op(), "no graph in inference");
                continue;
            }
            let g1 = (&ours * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&theirs * &up)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let d = max_diff(g1.get(&xv).unwrap(), g2.get(&xv).unwrap());
            assert!(d < 1e-4, "{pass:?}: dx differs by {d}");
            let d = vm.data().lock().unwrap();
            for (name, v) in d.iter().filter(|(k, _)| !k.contains("running")) {
                let (a, e) = (g1.get(v).unwrap(), g2.get(v).unwrap());
                let scale = max_diff(e, &e.zeros_like().unwrap());
                let diff = max_diff(a, e);
                assert!(
                    diff < 1e-4 * (1.0 + scale),
                    "{pass:?}: gradient of {name} differs by {diff} (scale {scale})"
                );
            }
        }
        assert_ne!(stats(), before);
    }

    /// The network takes the fused block where it applies and gives what the per-layer path
    /// gives (a narrow ResNet-18 on 32×32: stages 1 and 2 fused, 3 and 4 not).
    #[test]
    fn resnet_features_equal_with_and_without_fused_blocks() {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cfg = ResnetConfig {
            widths: vec![8, 16, 16, 32],
            stem: Stem::Small,
            ..Default::default()
        };
        let net = ResNet::new(18, &cfg, 3, vb).unwrap();
        let x = rand(&[4, 3, 16, 16], 3);
        let stem = net.stem_forward(&x, Pass::Eval).unwrap();
        assert!(net.stages[0][0].fuses(&stem), "stage 1 fuses");
        let ours = net.features(&x, Pass::Eval).unwrap();
        let mut y = stem;
        for b in net.stages.iter().flatten() {
            y = b.forward(&y, Pass::Eval).unwrap();
        }
        let theirs = y.mean(D::Minus1).unwrap().mean(D::Minus1).unwrap();
        let d = max_diff(&ours, &theirs);
        assert!(d < 1e-5, "features differ by {d}");
    }
}
