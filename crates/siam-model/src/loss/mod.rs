//! Metric-learning losses as free functions that check shapes up front.
//!
//! Pair labels are always called `same`: 1.0 for a same-class pair, 0.0 otherwise.
//! The contrastive loss is Hadsell et al. 2006 without a ½ factor, averaged over pairs:
//! `mean( same·d² + (1−same)·max(0, m−d)² )`.
//!
//! The map:
//! - this file: losses on pair distances — contrastive, triplet (precomputed distances), BCE;
//! - [`triplet`]: triplet loss with online mining over a labelled batch;
//! - `similarity.rs`: losses on the cosine similarities of a labelled batch —
//!   multi-similarity (with its miner), NT-Xent, supervised contrastive (SupCon);
//! - `proxy.rs`: normalised-softmax losses against learned class proxies — CosFace, ArcFace.
//!
//! The batch losses follow pytorch-metric-learning 2.9's definitions (its defaults, cosine
//! similarity, its reductions); the tests hold its values.

mod proxy;
mod similarity;
mod triplet;

pub use proxy::{arcface, cosface, init_proxies};
pub use similarity::{MsConfig, multi_similarity, nt_xent, supcon, uniformity};
pub use triplet::{MinedLoss, Mining, mined_triplet};

use candle_core::{DType, Result, Tensor};

pub(crate) fn check_vec(name: &str, t: &Tensor) -> Result<usize> {
    match t.dims() {
        [n] => Ok(*n),
        other => candle_core::bail!("{name} must have shape (N,), got {other:?}"),
    }
}

/// Checks that `same` holds only 0.0 and 1.0 (a flipped or soft label is a silent bug).
fn check_same(same: &Tensor, n: usize) -> Result<()> {
    let m = check_vec("same", same)?;
    if m != n {
        candle_core::bail!("same has {m} entries for {n} distances")
    }
    let v: Vec<f32> = same.to_dtype(DType::F32)?.to_vec1()?;
    if let Some(x) = v.iter().find(|x| **x != 0.0 && **x != 1.0) {
        candle_core::bail!("same must be 1.0 (same class) or 0.0 (different class), found {x}")
    }
    Ok(())
}

/// Contrastive loss `mean( same·d² + (1−same)·max(0, margin−d)² )`.
///
/// `distances` (N,) are pair distances (Euclidean for the usual form), `same` (N,) is 1.0 for
/// a same-class pair and 0.0 otherwise.
pub fn contrastive(distances: &Tensor, same: &Tensor, margin: f64) -> Result<Tensor> {
    contrastive_with(distances, same, margin, 0.0)
}

/// Contrastive loss with a positive margin: same pairs are only pulled in beyond `pos_margin`:
/// `mean( same·max(0, d−pos_margin)² + (1−same)·max(0, margin−d)² )`.
pub fn contrastive_with(
    distances: &Tensor,
    same: &Tensor,
    margin: f64,
    pos_margin: f64,
) -> Result<Tensor> {
    let n = check_vec("distances", distances)?;
    check_same(same, n)?;
    if !(margin > 0.0) || pos_margin < 0.0 || pos_margin >= margin {
        candle_core::bail!(
            "contrastive loss needs 0 ≤ pos-margin < margin, got {pos_margin} and {margin}"
        )
    }
    let same = same.to_dtype(distances.dtype())?;
    let pos = if pos_margin > 0.0 {
        (distances - pos_margin)?.relu()?.sqr()?
    } else {
        distances.sqr()?
    };
    let neg = (margin - distances)?.relu()?.sqr()?;
    let diff = (1.0 - &same)?;
    ((same * pos)? + (diff * neg)?)?.mean_all()
}

/// Triplet margin loss `mean( max(0, d(a,p) − d(a,n) + margin) )` from precomputed distances.
pub fn triplet(d_ap: &Tensor, d_an: &Tensor, margin: f64) -> Result<Tensor> {
    let n = check_vec("d_ap", d_ap)?;
    let m = check_vec("d_an", d_an)?;
    if n != m {
        candle_core::bail!("triplet loss: {n} anchor-positive and {m} anchor-negative distances")
    }
    ((d_ap - d_an)? + margin)?.relu()?.mean_all()
}

/// Binary cross-entropy with logits, `mean( max(x,0) − x·same + log(1 + e^−|x|) )`: the logit is
/// for "same class".
pub fn bce_with_logits(logits: &Tensor, same: &Tensor) -> Result<Tensor> {
    let n = check_vec("logits", logits)?;
    check_same(same, n)?;
    let same = same.to_dtype(logits.dtype())?;
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((logits.relu()? - (logits * same)?)? + softplus)?.mean_all()
}

#[cfg(test)]
mod reference {
    //! The batch losses against pytorch-metric-learning 2.9 (values and gradients, float64; the
    //! uniformity term against its authors' PyTorch expression) and
    //! against central finite differences. The numbers come from this snippet (torch 2.15):
    //!
    //! ```python
    //! import math, torch
    //! from pytorch_metric_learning import losses, miners
    //! torch.set_default_dtype(torch.float64)
    //! N, Dm, C = 8, 4, 3
    //! X0 = torch.tensor([[math.sin(1.3 * i + 0.7 * d + 0.1 * i * d) for d in range(Dm)] for i in range(N)])
    //! y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    //! W0 = torch.tensor([[math.cos(0.5 + 0.9 * c + 0.4 * d) for d in range(Dm)] for c in range(C)])  # (C, D)
    //! def run(name, f, proxies=False):
    //!     X = X0.clone().requires_grad_(True)
    //!     W = W0.clone().requires_grad_(True)
    //!     l = f(X, W)
    //!     l.backward()
    //!     g = [round(v, 10) for v in X.grad.flatten().tolist()]
    //!     print(f"// {name}\nloss {l.item():.10f}\ndx {g}")
    //!     if proxies:
    //!         print("dw", [round(v, 10) for v in W.grad.flatten().tolist()])
    //! def ms(X, W):
    //!     idx = miners.MultiSimilarityMiner(epsilon=0.1)(X, y)
    //!     return losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(X, y, idx)
    //! run("ms", ms)
    //! run("ms-nominer", lambda X, W: losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)(X, y))
    //! run("ntxent", lambda X, W: losses.NTXentLoss(temperature=0.1)(X, y))
    //! run("supcon", lambda X, W: losses.SupConLoss(temperature=0.1)(X, y))
    //! # Wang & Isola's uniformity (their code; PML has none), t = 2:
    //! run("uniformity", lambda X, W: torch.pdist(torch.nn.functional.normalize(X, dim=1)).pow(2).mul(-2).exp().mean().log())
    //! for name in ["cosface", "arcface"]:
    //!     X = X0.clone().requires_grad_(True); Wp = W0.clone().requires_grad_(True)
    //!     lfn = (losses.CosFaceLoss(num_classes=C, embedding_size=Dm, margin=0.35, scale=30) if name == "cosface"
    //!            else losses.ArcFaceLoss(num_classes=C, embedding_size=Dm, margin=28.6, scale=30))
    //!     with torch.no_grad(): lfn.W.copy_(W0.t())
    //!     l = lfn(X, y); l.backward()
    //!     print(f"// {name}\nloss {l.item():.10f}\ndx {[round(v, 10) for v in X.grad.flatten().tolist()]}")
    //!     print("dw", [round(v, 10) for v in lfn.W.grad.t().flatten().tolist()])
    //! ```

    use super::*;
    use candle_core::{Device, Var};

    const LABELS: [u32; 8] = [0, 0, 1, 1, 2, 2, 0, 1];
    const MS: (f64, [f64; 32]) = (
        0.9854825105,
        [
            -0.2297079044,
            -0.1469302863,
            0.0364939123,
            0.0679929753,
            -0.0673987473,
            0.0296628249,
            0.018907137,
            -0.0657068551,
            0.1116812236,
            0.1730421431,
            0.0491163134,
            -0.0599178108,
            -0.0391032974,
            0.0352153444,
            0.0819336543,
            0.0662758099,
            0.0594635459,
            -0.026965616,
            -0.0197779221,
            0.0886192417,
            0.1908808562,
            -0.0196048292,
            -0.1265327589,
            -0.0667222709,
            -0.0816126169,
            -0.1503297035,
            -0.0948069503,
            -0.0669043216,
            -0.0078934257,
            0.0017032494,
            0.0144100134,
            0.0193026706,
        ],
    );
    const MS_ALL: (f64, [f64; 32]) = (
        1.0684489789,
        [
            -0.2297079044,
            -0.1469302863,
            0.0364939123,
            0.0679929753,
            -0.0673987473,
            0.0296628249,
            0.018907137,
            -0.0657068551,
            0.1010460589,
            0.192220408,
            0.0585309055,
            -0.0853529054,
            -0.0544960859,
            0.0378983698,
            0.0841949686,
            0.0539923511,
            0.0594635459,
            -0.026965616,
            -0.0197779221,
            0.0886192417,
            0.1908808562,
            -0.0196048292,
            -0.1265327589,
            -0.0667222709,
            -0.0816126169,
            -0.1503297035,
            -0.0948069503,
            -0.0669043216,
            0.0004287655,
            0.0126440722,
            0.0377044429,
            0.0512159237,
        ],
    );
    const UNIFORMITY: (f64, [f64; 32]) = (
        -2.4800185683,
        [
            -0.1936537458,
            -0.0599200762,
            0.0565710086,
            -0.0198634456,
            -0.1667179728,
            0.0928918265,
            -0.0598445862,
            -0.1788763401,
            0.2544441239,
            0.2594363332,
            0.0147657852,
            0.0313712004,
            0.1869118499,
            -0.045392621,
            -0.0507333519,
            0.1123496924,
            0.1455296059,
            0.111340678,
            0.0540523923,
            0.0978342831,
            0.3978490914,
            -0.0015377998,
            -0.1056803573,
            0.0497825707,
            -0.031272669,
            -0.0823022969,
            0.0458148417,
            -0.1252210473,
            -0.2277040299,
            -0.0915792704,
            -0.0190436021,
            -0.0293822558,
        ],
    );
    const NTXENT: (f64, [f64; 32]) = (
        5.7225919964,
        [
            -2.1486460099,
            -1.4080229234,
            0.257943957,
            0.7563431234,
            -0.6200518275,
            0.1949728195,
            0.2558479983,
            -0.6944452433,
            1.0626373665,
            1.8785651873,
            0.5368606078,
            -0.7474229747,
            -0.5724707883,
            0.4465094027,
            1.0878943778,
            0.7808706167,
            0.3699330753,
            -0.4812786889,
            -0.3444191955,
            0.8070807641,
            1.483880792,
            -0.1439354239,
            -0.947598404,
            -0.4764046429,
            -0.8526751992,
            -1.6652323094,
            -1.1670274452,
            -0.546875088,
            -0.1433446348,
            0.0507731655,
            0.3049936559,
            0.4165867249,
        ],
    );
    const SUPCON: (f64, [f64; 32]) = (
        6.6287793814,
        [
            -2.1251938931,
            -1.3575893375,
            0.2729236827,
            0.7016032462,
            -0.6599156992,
            0.241212857,
            0.2292580269,
            -0.7036140387,
            0.8544821953,
            1.8584050655,
            0.5826233739,
            -0.9201804076,
            0.1929807642,
            0.128640231,
            0.413278844,
            0.7150682081,
            0.530365209,
            -0.6050804759,
            -0.3994382971,
            1.0491162527,
            2.0714705366,
            -0.2316346779,
            -1.5168877632,
            -0.8691365059,
            -0.7114853703,
            -1.353449574,
            -0.9292047615,
            -0.4896591418,
            -0.8912322075,
            -0.1580063061,
            0.567914215,
            0.741434487,
        ],
    );
    const COSFACE: (f64, [f64; 32]) = (
        14.9721757505,
        [
            -0.0,
            -0.0,
            0.0,
            0.0,
            -8.352e-07,
            -2.3999e-06,
            -5.2901e-06,
            -7.8175e-06,
            -1.0756068217,
            -0.9009201914,
            -0.4864067216,
            0.269644749,
            -0.6458710352,
            0.3331021206,
            0.3871168597,
            0.0480305289,
            2.9656501591,
            2.6826000283,
            1.9767922804,
            0.9998323475,
            2.8353175977,
            0.6018079824,
            1.0684328617,
            2.7835704163,
            -1.8378162374,
            -1.9700907995,
            -1.6642233803,
            -1.4253637217,
            -1.6847695107,
            -0.4416780591,
            0.242400318,
            0.4464083138,
        ],
    );
    const COSFACE_DW: [f64; 12] = [
        -3.018989387,
        2.3351863863,
        5.3202177259,
        1.7487336638,
        1.9889271303,
        6.3040327852,
        2.7962142392,
        -3.1973956772,
        2.8210325541,
        -2.7039233051,
        -2.3876044046,
        3.1507008427,
    ];
    const ARCFACE: (f64, [f64; 32]) = (
        16.3581676979,
        [
            -4e-10,
            -2e-10,
            0.0,
            1e-10,
            -1.433e-07,
            -1.234e-07,
            -3.647e-07,
            -6.262e-07,
            -0.2579110775,
            -0.543693545,
            -0.4372575237,
            0.569360526,
            -0.5973510943,
            0.1933576418,
            0.1106298374,
            -0.310336951,
            2.4472747184,
            2.2572134973,
            1.7079586322,
            0.7378296047,
            2.5309286857,
            0.4119022077,
            0.669155201,
            2.0585556848,
            -2.0426869029,
            -2.1824418261,
            -1.9227734979,
            -1.5018725531,
            -1.6386674785,
            -0.4999629763,
            0.0791852441,
            0.1971835409,
        ],
    );
    const ARCFACE_DW: [f64; 12] = [
        -3.1601084419,
        2.4023683524,
        5.7646653239,
        2.0344002748,
        1.5892031442,
        5.6478406056,
        2.5629112449,
        -2.9424648408,
        1.7559986402,
        -2.5298538169,
        -1.758476448,
        3.0691715282,
    ];

    /// The gradient of `v` in `g`, flattened.
    fn grad<T: candle_core::WithDType>(g: &candle_core::backprop::GradStore, v: &Var) -> Vec<T> {
        g.get(v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<T>()
            .unwrap()
    }

    fn inputs() -> (Vec<f64>, Vec<f64>) {
        let x = (0..8)
            .flat_map(|i| {
                (0..4).map(move |d| (1.3 * i as f64 + 0.7 * d as f64 + 0.1 * (i * d) as f64).sin())
            })
            .collect();
        let w = (0..3)
            .flat_map(|c| (0..4).map(move |d| (0.5 + 0.9 * c as f64 + 0.4 * d as f64).cos()))
            .collect();
        (x, w)
    }

    type Loss = fn(&Tensor, &Tensor) -> Result<Tensor>;
    /// PML's loss and gradient of the embeddings.
    type Expected = (f64, [f64; 32]);
    /// A case: its name, the loss, PML's figures, and PML's proxy gradient (proxy losses).
    type Case = (&'static str, Loss, Expected, Option<[f64; 12]>);

    /// The loss of each case, as a function of embeddings (8, 4) and proxies (3, 4).
    fn cases() -> Vec<Case> {
        vec![
            (
                "multi-similarity",
                |x, _| multi_similarity(x, &LABELS, &MsConfig::default()),
                MS,
                None,
            ),
            (
                "multi-similarity without the miner",
                |x, _| {
                    multi_similarity(
                        x,
                        &LABELS,
                        &MsConfig {
                            epsilon: None,
                            ..MsConfig::default()
                        },
                    )
                },
                MS_ALL,
                None,
            ),
            ("NT-Xent", |x, _| nt_xent(x, &LABELS, 0.1), NTXENT, None),
            ("SupCon", |x, _| supcon(x, &LABELS, 0.1), SUPCON, None),
            ("uniformity", |x, _| uniformity(x, 2.0), UNIFORMITY, None),
            (
                "CosFace",
                |x, w| cosface(x, &LABELS, w, 0.35, 30.0),
                COSFACE,
                Some(COSFACE_DW),
            ),
            (
                "ArcFace",
                |x, w| arcface(x, &LABELS, w, 28.6f64.to_radians(), 30.0),
                ARCFACE,
                Some(ARCFACE_DW),
            ),
        ]
    }

    fn value(f: Loss, x: &[f64], w: &[f64]) -> f64 {
        let dev = Device::Cpu;
        let x = Tensor::from_vec(x.to_vec(), (8, 4), &dev).unwrap();
        let w = Tensor::from_vec(w.to_vec(), (3, 4), &dev).unwrap();
        f(&x, &w).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn losses_match_pytorch_metric_learning() {
        let (x0, w0) = inputs();
        let dev = Device::Cpu;
        for (name, f, (loss, dx), dw) in cases() {
            let x = Var::from_vec(x0.clone(), (8, 4), &dev).unwrap();
            let w = Var::from_vec(w0.clone(), (3, 4), &dev).unwrap();
            let l = f(&x, &w).unwrap();
            let got = l.to_scalar::<f64>().unwrap();
            assert!(
                (got - loss).abs() < 1e-7 * loss.abs().max(1.0),
                "{name}: loss {got} vs PML {loss}"
            );
            let g = l.backward().unwrap();
            let gx = grad::<f64>(&g, &x);
            for (k, (a, b)) in gx.iter().zip(dx).enumerate() {
                assert!((a - b).abs() < 1e-7, "{name}: dx[{k}] {a} vs PML {b}");
            }
            if let Some(dw) = dw {
                let gw = grad::<f64>(&g, &w);
                for (k, (a, b)) in gw.iter().zip(dw).enumerate() {
                    assert!((a - b).abs() < 1e-7, "{name}: dW[{k}] {a} vs PML {b}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (x0, w0) = inputs();
        let dev = Device::Cpu;
        let h = 1e-6;
        for (name, f, _, dw) in cases() {
            let x = Var::from_vec(x0.clone(), (8, 4), &dev).unwrap();
            let w = Var::from_vec(w0.clone(), (3, 4), &dev).unwrap();
            let g = f(&x, &w).unwrap().backward().unwrap();
            let gx = grad::<f64>(&g, &x);
            for k in 0..x0.len() {
                let (mut p, mut m) = (x0.clone(), x0.clone());
                p[k] += h;
                m[k] -= h;
                let fd = (value(f, &p, &w0) - value(f, &m, &w0)) / (2.0 * h);
                assert!(
                    (fd - gx[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "{name}: dx[{k}] {} vs {fd}",
                    gx[k]
                );
            }
            if dw.is_some() {
                let gw = grad::<f64>(&g, &w);
                for k in 0..w0.len() {
                    let (mut p, mut m) = (w0.clone(), w0.clone());
                    p[k] += h;
                    m[k] -= h;
                    let fd = (value(f, &x0, &p) - value(f, &x0, &m)) / (2.0 * h);
                    assert!(
                        (fd - gw[k]).abs() < 1e-5 * (1.0 + fd.abs()),
                        "{name}: dW[{k}] {} vs {fd}",
                        gw[k]
                    );
                }
            }
        }
    }

    /// The uniformity term's log-mean-exp is stabilised: a sharp kernel in f32, where every
    /// `e^{−t‖zᵢ − zⱼ‖²}` underflows to zero, still gives a finite loss and gradient; a single
    /// embedding has no pair and gives 0.
    #[test]
    fn uniformity_survives_a_sharp_kernel_and_a_batch_of_one() {
        let (x0, _) = inputs();
        let x = Var::from_vec(
            x0.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (8, 4),
            &Device::Cpu,
        )
        .unwrap();
        let l = uniformity(&x, 500.0).unwrap();
        let v = l.to_scalar::<f32>().unwrap();
        assert!(v.is_finite() && v < -20.0, "{v}");
        let g = l.backward().unwrap();
        let gx = grad::<f32>(&g, &x);
        assert!(gx.iter().all(|v| v.is_finite()), "{gx:?}");
        let one = Tensor::new(&[[1.0f32, 2.0]], &Device::Cpu).unwrap();
        assert_eq!(
            uniformity(&one, 2.0).unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }

    /// No NaN anywhere: identical embeddings (cosines of exactly 1) and embeddings equal to
    /// their proxies (θ = 0 for ArcFace), in f32.
    #[test]
    fn degenerate_batches_give_finite_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![0.5f32; 32], (8, 4), &dev).unwrap();
        let w = Var::from_vec(vec![0.5f32; 12], (3, 4), &dev).unwrap();
        for (name, f, _, _) in cases() {
            let x32 = x.as_tensor().clone();
            let l = f(&x32, w.as_tensor()).unwrap();
            let g = l.backward().unwrap();
            let gx = grad::<f32>(&g, &x);
            assert!(l.to_scalar::<f32>().unwrap().is_finite(), "{name}: loss");
            assert!(gx.iter().all(|v| v.is_finite()), "{name}: gradient {gx:?}");
        }
    }
}
