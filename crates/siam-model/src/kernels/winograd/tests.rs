//! Winograd: the transforms against their adjoints, the forward pass against a direct f64
//! convolution, the gradients against finite differences.

use super::tile::{a, at, b, bt, gk, gkt};
use super::*;

/// A direct convolution in f64 on channel-last data, the reference: the output (N, HO, WO,
/// O) and the scale Σ|w|·|x| per output that bounds the rounding error.
pub(in crate::kernels) fn direct(g: &Wino, x: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0f64; g.n * g.ho * g.wo * g.o];
    let mut s = y.clone();
    for n in 0..g.n {
        for i in 0..g.ho {
            for j in 0..g.wo {
                for o in 0..g.o {
                    let (mut acc, mut mag) = (0f64, 0f64);
                    for di in 0..3 {
                        for dj in 0..3 {
                            let (r, q) = (i + di, j + dj);
                            if r < g.pad || q < g.pad || r - g.pad >= g.h || q - g.pad >= g.w {
                                continue;
                            }
                            for c in 0..g.c {
                                let xv = f64::from(
                                    x[((n * g.h + r - g.pad) * g.w + q - g.pad) * g.c + c],
                                );
                                let wv = f64::from(w[((o * g.c + c) * 3 + di) * 3 + dj]);
                                acc += xv * wv;
                                mag += (xv * wv).abs();
                            }
                        }
                    }
                    let k = ((n * g.ho + i) * g.wo + j) * g.o + o;
                    y[k] = acc;
                    s[k] = mag;
                }
            }
        }
    }
    (y, s)
}

pub(in crate::kernels) fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// The 1-D transforms' adjoints are adjoint: ⟨f(x), y⟩ = ⟨x, f*(y)⟩.
#[test]
fn transforms_and_their_adjoints_agree() {
    let (x, y) = (values(6, 1), values(6, 2));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f32>();
    let x6: [f32; 6] = x.clone().try_into().unwrap();
    let y6: [f32; 6] = y.clone().try_into().unwrap();
    assert!((dot(&bt(x6), &y) - dot(&x, &b(y6))).abs() < 1e-5);
    let y4 = [y[0], y[1], y[2], y[3]];
    assert!((dot(&at(x6), &y4) - dot(&x, &a(y4))).abs() < 1e-5);
    let x3 = [x[0], x[1], x[2]];
    assert!((dot(&gk(x3), &y) - dot(&x3, &gkt(y6))).abs() < 1e-5);
}

/// Shapes for the tests: odd sizes, paddings 0–2, batch 1, channel counts that are not a
/// multiple of the vector widths (17 and 33: sixteen-lane groups and a tail; 25 and 26: a
/// sixteen-lane, an eight-lane group and a tail), partial tiles on both edges.
pub(in crate::kernels) const SHAPES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (2, 3, 5, 7, 9, 1),
    (1, 1, 1, 3, 3, 0),
    (3, 17, 6, 28, 28, 1),
    (1, 8, 9, 5, 6, 2),
    (2, 5, 3, 14, 14, 1),
    (1, 33, 7, 7, 7, 1),
    (1, 25, 26, 6, 6, 1),
];

/// Forward against a direct f64 convolution, within 1e-4 of Σ|w|·|x| per output.
#[test]
fn forward_matches_direct_convolution() {
    for (i, &(n, c, o, h, w, pad)) in SHAPES.iter().enumerate() {
        let g = Wino::new(n, c, o, h, w, pad).unwrap();
        let x = values(n * c * h * w, 10 + i as u64);
        let wt = values(o * c * 9, 20 + i as u64);
        let mut y = vec![0f32; n * g.ho * g.wo * o];
        forward(&g, &x, &Weights::new(&g, &wt), &mut y, false);
        let (r, s) = direct(&g, &x, &wt);
        for k in 0..y.len() {
            let err = (f64::from(y[k]) - r[k]).abs();
            assert!(
                err <= 1e-4 * s[k].max(1e-3),
                "case {i}, output {k}: {} vs {}",
                y[k],
                r[k]
            );
        }
    }
}

/// dX and dW against central finite differences of Σ up·conv(x, w) (the convolution in
/// f64), over every shape.
#[test]
fn gradients_match_finite_differences() {
    for (i, &(n, c, o, h, w, pad)) in SHAPES.iter().enumerate() {
        let g = Wino::new(n, c, o, h, w, pad).unwrap();
        let x = values(n * c * h * w, 71 + i as u64);
        let wt = values(o * c * 9, 72 + i as u64);
        let up = values(n * g.ho * g.wo * o, 73 + i as u64);
        let f = |x: &[f32], w: &[f32]| -> f64 {
            let (y, _) = direct(&g, x, w);
            y.iter().zip(&up).map(|(a, b)| a * f64::from(*b)).sum()
        };
        let mut y = vec![0f32; up.len()];
        let saved = forward(&g, &x, &Weights::new(&g, &wt), &mut y, true);
        let (gx, gw) = backward(&g, &saved, &up, &wt, true);
        let gx = gx.unwrap().to_vec();
        // The objective is linear in each value, so the difference quotient is exact up to
        // rounding; a sample of the positions keeps the test fast.
        let eps = 1e-2f32;
        for (vals, grads, what) in [(&x, &gx, "x"), (&wt, &gw, "w")] {
            for k in (0..vals.len()).step_by(1 + vals.len() / 97) {
                let (mut p, mut m) = (vals.clone(), vals.clone());
                p[k] += eps;
                m[k] -= eps;
                let fd = if what == "x" {
                    (f(&p, &wt) - f(&m, &wt)) / (2.0 * f64::from(eps))
                } else {
                    (f(&x, &p) - f(&x, &m)) / (2.0 * f64::from(eps))
                };
                let d = (fd - f64::from(grads[k])).abs();
                assert!(
                    d < 2e-4 * (1.0 + fd.abs()),
                    "case {i}: d{what}[{k}] {} vs finite difference {fd}",
                    grads[k]
                );
            }
        }
    }
}

/// `Uᵀ` made directly holds the bits of `U` transposed position by position, and the weight
/// gradient from `dUᵀ` is the adjoint of that transform: ⟨Uᵀ(w), d⟩ = ⟨w, grad(d)⟩ (channel
/// counts with sixteen-lane, eight-lane and single-lane groups on either side).
#[test]
fn transposed_kernel_transform_and_its_adjoint() {
    for (o, c) in [(17, 25), (4, 33), (26, 9), (1, 1)] {
        let w = values(o * c * 9, 81);
        let (u, ut) = (kernel_transform(&w, o, c), kernel_transform_t(&w, o, c));
        for pos in 0..P {
            for oo in 0..o {
                for cc in 0..c {
                    assert_eq!(
                        ut[(pos * o + oo) * c + cc].to_bits(),
                        u[(pos * c + cc) * o + oo].to_bits(),
                        "{o}x{c}: position {pos}, kernel ({oo}, {cc})"
                    );
                }
            }
        }
        let d = values(P * o * c, 82);
        let gw = kernel_grad_t(&d, o, c);
        let dot = |a: &[f32], b: &[f32]| -> f64 {
            a.iter()
                .zip(b)
                .map(|(p, q)| f64::from(*p) * f64::from(*q))
                .sum()
        };
        let (lhs, rhs) = (dot(&ut, &d), dot(&w, &gw));
        assert!(
            (lhs - rhs).abs() < 1e-5 * (1.0 + lhs.abs()),
            "{o}x{c}: {lhs} vs {rhs}"
        );
    }
}

/// The three forward paths — the whole batch, groups of images, blocks of channels — and the
/// backward pass by blocks compute what the whole-batch passes compute: each forward against
/// the direct f64 convolution, and the outputs, the kept `V`, dX and dW against the whole
/// batch's within rounding (`V` bit for bit), on shapes of one, two and four blocks, padding
/// 0 and 1, partial tiles, groups of images that do not divide the batch, through an
/// activation; the paths without blocks also on every shape of [`SHAPES`].
#[test]
fn forward_paths_and_backward_by_blocks_match_the_whole_batch() {
    use super::blocked::BLOCK;
    let blocky = [
        (2, 16, 32, 9, 7, 1),
        (1, 32, 16, 4, 4, 1),
        (3, 16, 16, 6, 5, 0),
        (2, 64, 48, 3, 3, 1),
        (7, 16, 16, 5, 5, 1),
    ];
    for (i, &(n, c, o, h, w, pad)) in blocky.iter().chain(SHAPES.iter()).enumerate() {
        let g = Wino::new(n, c, o, h, w, pad).unwrap();
        let x = values(n * c * h * w, 90 + i as u64);
        let wt = values(o * c * 9, 91 + i as u64);
        let up = values(n * g.ho * g.wo * o, 92 + i as u64);
        let (a, b) = (values(c, 93), values(c, 94));
        let act: Act<'_> = Some((&a, &b));
        let run = |path: Path| {
            let k = Weights::with(&wt, (o, c), path == Path::Blocks);
            let mut y = vec![0f32; up.len()];
            let plain = forward_by(&g, (&x, None), &k, (&mut y, false), path);
            assert_eq!(plain.v.len(), 0, "nothing kept");
            let mut ya = vec![0f32; up.len()];
            let saved = forward_by(&g, (&x, act), &k, (&mut ya, true), path);
            let blocks = path == Path::Blocks;
            let (gx, gw) = backward_in(&g, &saved, GradOut::Plain(&up), &wt, true, blocks);
            (y, ya, saved.v.to_vec(), gx.unwrap().to_vec(), gw)
        };
        let whole = run(Path::Whole);
        let whole_blocks = c % BLOCK == 0 && o % BLOCK == 0;
        let paths: &[Path] = if whole_blocks {
            &[Path::Images, Path::Blocks]
        } else {
            &[Path::Images]
        };
        let (r, s) = direct(&g, &x, &wt);
        for &path in paths {
            let other = run(path);
            for k in 0..r.len() {
                let err = (f64::from(other.0[k]) - r[k]).abs();
                assert!(
                    err <= 1e-4 * s[k].max(1e-3),
                    "case {i}, {path:?}, output {k}"
                );
            }
            assert!(
                other
                    .2
                    .iter()
                    .zip(&whole.2)
                    .all(|(p, q)| p.to_bits() == q.to_bits()),
                "case {i}, {path:?}: the kept V differs"
            );
            for (what, p, q) in [
                ("output", &other.0, &whole.0),
                ("output through the activation", &other.1, &whole.1),
                ("dX", &other.3, &whole.3),
                ("dW", &other.4, &whole.4),
            ] {
                let scale = q.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (k, (u, v)) in p.iter().zip(q.iter()).enumerate() {
                    assert!(
                        (u - v).abs() <= 1e-5 * scale,
                        "case {i}, {path:?}: {what}[{k}] {u} vs whole batch {v}"
                    );
                }
            }
        }
    }
}

/// Which convolutions go by blocks: a ResNet-18's stage 4 at 112×112 and stage 3 at 64×64
/// (32 images, or 64 in inference), not stage 3 at 112×112 (128 tiles for 256 channels), nor
/// stage 2 (128 channels), nor channel counts off the block.
#[test]
fn the_rule_for_products_by_blocks() {
    let blocks =
        |n, c, o, side| super::blocked::by_blocks(&Wino::new(n, c, o, side, side, 1).unwrap());
    assert!(blocks(32, 512, 512, 4) && blocks(64, 512, 512, 4) && blocks(32, 256, 256, 4));
    assert!(blocks(64, 256, 256, 4) && blocks(16, 256, 512, 7));
    assert!(!blocks(32, 256, 256, 7) && !blocks(65, 256, 256, 4) && !blocks(32, 128, 128, 4));
    assert!(!blocks(1, 520, 520, 4) && !blocks(1, 512, 260, 4) && !blocks(1, 64, 64, 4));
}
