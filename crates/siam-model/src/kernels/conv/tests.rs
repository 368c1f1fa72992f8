use super::*;
use crate::kernels::tests::{grads_of, max_diff, rand};
use candle_core::Var;

/// Forward and every gradient against candle's own conv2d + broadcast bias.
#[test]
fn conv2d_matches_candle_with_gradients() {
    // (N, C, H, W, O, K, padding)
    for (i, &(n, c, h, w, o, k, pad)) in [
        (3, 2, 9, 7, 4, 3, 0),
        (2, 1, 28, 28, 5, 5, 0),
        (4, 3, 8, 8, 6, 3, 1),
        (1, 1, 5, 6, 2, 1, 0),
        (5, 4, 6, 5, 3, 3, 1),
        (2, 2, 4, 4, 3, 5, 2),
        // Small maps: the weight gradient over the whole batch (two parts of images), in
        // two blocks of output channels, the second partial.
        (11, 5, 3, 3, 40, 3, 1),
    ]
    .iter()
    .enumerate()
    {
        let x = Var::from_tensor(&rand(&[n, c, h, w], i as u64)).unwrap();
        let wt = Var::from_tensor(&rand(&[o, c, k, k], 100 + i as u64)).unwrap();
        let b = Var::from_tensor(&rand(&[o], 200 + i as u64)).unwrap();
        let up = rand(
            &[n, o, h + 2 * pad - k + 1, w + 2 * pad - k + 1],
            300 + i as u64,
        );
        let ours = conv2d(&x, &wt, Some(&b), pad, true).unwrap();
        let theirs = x
            .conv2d(&wt, pad, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, o, 1, 1)).unwrap())
            .unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5, "case {i}: forward");
        let g1 = grads_of(&ours, &up);
        let g2 = grads_of(&theirs, &up);
        for (name, v) in [
            ("x", x.as_tensor()),
            ("w", wt.as_tensor()),
            ("b", b.as_tensor()),
        ] {
            let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(d < 1e-4, "case {i}: d{name} differs by {d}");
        }
        // Without bias, and without the input's gradient.
        let nb = conv2d(&x, &wt, None, pad, false).unwrap();
        assert!(max_diff(&nb, &x.conv2d(&wt, pad, 1, 1, 1).unwrap()) < 1e-5);
        let g = nb.sum_all().unwrap().backward().unwrap();
        assert!(
            g.get(x.as_tensor()).is_none(),
            "no input gradient was asked for"
        );
        assert!(g.get(wt.as_tensor()).is_some());
    }
}

/// Checks every `step`-th value of `grad` (the gradient of `f` at `at`) against central
/// differences with a step of 0.01.
fn central_differences(
    what: &str,
    at: &Tensor,
    grad: &Tensor,
    step: usize,
    f: impl Fn(&Tensor) -> f64,
) {
    let g: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
    let v: Vec<f32> = at.flatten_all().unwrap().to_vec1().unwrap();
    let e = 1e-2f32;
    for j in (0..v.len()).step_by(step) {
        let bumped = |d: f32| {
            let mut u = v.clone();
            u[j] += d;
            f(&Tensor::from_vec(u, at.dims(), at.device()).unwrap())
        };
        let fd = (bumped(e) - bumped(-e)) / (2.0 * f64::from(e));
        assert!(
            (fd - f64::from(g[j])).abs() < 2e-3,
            "{what}[{j}]: {fd} vs {}",
            g[j]
        );
    }
}

/// Stride 2 (and 3): ResNet's 7×7 stem, its 3×3 and 1×1 downsampling convolutions and odd
/// sides, forward and every gradient against candle's conv2d (whose input gradient is a
/// transposed convolution), and the input gradient against central differences.
#[test]
fn strided_conv2d_matches_candle_and_finite_differences() {
    type Conv = fn(&Tensor, &Tensor, Option<&Tensor>, usize, usize, bool) -> Result<Tensor>;
    // conv2d_strided sends small maps to the tap products: im2col is checked on
    // every case through conv2d_im2col.
    let routes: [(&str, Conv); 2] = [("strided", conv2d_strided), ("im2col", conv2d_im2col)];
    for ((route, conv), (i, (n, c, h, w, o, k, pad, stride))) in routes.into_iter().flat_map(|r| {
        // (N, C, H, W, O, K, padding, stride)
        [
            (2, 3, 11, 10, 4, 7, 3, 2),
            (3, 4, 9, 8, 5, 3, 1, 2),
            (2, 4, 8, 7, 6, 1, 0, 2),
            (1, 2, 7, 6, 3, 3, 0, 3),
            (2, 3, 10, 10, 4, 7, 3, 2),
            // Maps smaller than the stride: phases with one row or none.
            (2, 2, 3, 2, 3, 7, 3, 2),
            (2, 2, 1, 2, 3, 3, 1, 3),
            // Two parts of images, the second partial; and a stride-1 one packed by part.
            (11, 2, 6, 6, 3, 3, 1, 2),
            (10, 3, 6, 6, 4, 3, 1, 1),
        ]
        .into_iter()
        .enumerate()
        .map(move |case| (r, case))
    }) {
        let x = Var::from_tensor(&rand(&[n, c, h, w], 50 + i as u64)).unwrap();
        let wt = Var::from_tensor(&rand(&[o, c, k, k], 150 + i as u64)).unwrap();
        let ours = conv(&x, &wt, None, pad, stride, true).unwrap();
        let theirs = x.conv2d(&wt, pad, stride, 1, 1).unwrap();
        assert_eq!(ours.dims(), theirs.dims(), "{route} case {i}");
        assert!(max_diff(&ours, &theirs) < 1e-5, "{route} case {i}: forward");
        let up = rand(ours.dims(), 250 + i as u64);
        let g1 = grads_of(&ours, &up);
        // candle's own backward fails when the height and width differ in parity (it
        // sizes the transposed convolution's output padding from the height alone): there
        // only the differences below check the gradient.
        if h % 2 == w % 2 {
            let g2 = grads_of(&theirs, &up);
            for (name, v) in [("x", x.as_tensor()), ("w", wt.as_tensor())] {
                let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-4, "{route} case {i}: d{name} differs by {d}");
            }
        }
        // Both gradients against central differences (Σ up·y is linear in x and in w: exact
        // up to rounding).
        let loss = |x: &Tensor, w: &Tensor| -> f64 {
            let y = conv(x, w, None, pad, stride, false).unwrap();
            f64::from(
                (y * &up)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        central_differences(
            &format!("{route} case {i}, w"),
            wt.as_tensor(),
            g1.get(wt.as_tensor()).unwrap(),
            5,
            |t| loss(x.as_tensor(), t),
        );
        central_differences(
            &format!("{route} case {i}, x"),
            x.as_tensor(),
            g1.get(x.as_tensor()).unwrap(),
            7,
            |t| loss(t, wt.as_tensor()),
        );
    }
}
