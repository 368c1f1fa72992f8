//! The forward pass a few images at a time: each group's input transform, its 36 products and
//! its output transform run one after the other on one thread, so `V` and `M` of the group
//! stay in cache instead of going to memory and back between three batch-wide passes (a
//! ResNet-18's stage 1 at 112×112 writes and reads 14 MB of each). Where the backward pass
//! needs `V`, the group's is copied into the batch's.

use rayon::prelude::*;

use crate::kernels::gemm::Mat;
use crate::kernels::scratch::Buf;

use super::{Act, P, Saved, Wino, input_image, output_image, per_image, per_position_here};

/// Rows of each product (tiles of a group of images) aimed at: the group is the fewest images
/// with at least this many tiles.
const ROWS: usize = 64;

/// Values of `U` (36·C·O) below which the forward pass goes by groups of images: every group
/// reads the whole of `U`, which at 256 channels (9.4 MB, a ResNet-18's stage 3) costs what the
/// groups save — at 112×112, 128 tiles of 32 images, no faster in training and slower in
/// inference (64 images, four groups).
const MAX_TRANSFORM: usize = P * 256 * 256;

/// Whether the forward pass of `g` goes by groups of images: `U` under [`MAX_TRANSFORM`].
pub(super) fn worth_it(g: &Wino) -> bool {
    P * g.c * g.o < MAX_TRANSFORM
}

/// Images per group for `g`: at least [`ROWS`] tiles, at most the batch.
fn group(g: &Wino) -> usize {
    ROWS.div_ceil(g.t()).clamp(1, g.n.max(1))
}

/// [`super::forward_act`] by groups of images, with the weights' transform `u`
/// (`[36][C][O]`).
pub(super) fn forward(
    g: &Wino,
    (x, act): (&[f32], Act<'_>),
    u: &[f32],
    y: &mut [f32],
    keep: bool,
) -> Saved {
    let (t, c, o) = (g.t(), g.c, g.o);
    let k = group(g);
    let (img_in, img_out) = (g.h * g.w * c, g.ho * g.wo * o);
    let mut v = if keep {
        Buf::scratch(g.v_len())
    } else {
        Buf::default()
    };
    // Each group's 36 pieces of the batch's `V` (rows of its tiles in every position block).
    let groups = g.n.div_ceil(k);
    let mut dests: Vec<Vec<&mut [f32]>> = (0..groups).map(|_| Vec::with_capacity(P)).collect();
    if keep {
        for block in v.chunks_exact_mut(g.nt() * c) {
            for (j, piece) in block.chunks_mut(k * t * c).enumerate() {
                dests[j].push(piece);
            }
        }
    }
    let (ph, pw) = g.padded();
    y.par_chunks_mut(k * img_out)
        .zip(dests.into_par_iter())
        .enumerate()
        .for_each_init(
            || {
                (
                    vec![0f32; ph * pw * c],
                    vec![0f32; super::M4 * g.th * super::M4 * g.tw * o],
                    Buf::scratch(P * k * t * c),
                    Buf::scratch(P * k * t * o),
                )
            },
            |(plane_in, plane_out, vb, mb), (j, (yg, dest))| {
                let kk = yg.len() / img_out;
                let gg = Wino { n: kk, ..*g };
                let (vb, mb) = (&mut vb[..P * kk * t * c], &mut mb[..P * kk * t * o]);
                for (i, mut pieces) in per_image(vb, &gg, c).into_iter().enumerate() {
                    let xn = &x[(j * k + i) * img_in..][..img_in];
                    input_image(&gg, xn, act, plane_in, &mut pieces);
                }
                let rows = kk * t;
                per_position_here(
                    mb,
                    (rows, o, c),
                    |pos| Mat::block(vb, pos, (rows, c)),
                    |pos| Mat::block(u, pos, (c, o)),
                );
                for (i, yn) in yg.chunks_exact_mut(img_out).enumerate() {
                    output_image(&gg, mb, o, i, yn, plane_out);
                }
                for (d, s) in dest.into_iter().zip(vb.chunks_exact(rows * c)) {
                    d.copy_from_slice(s);
                }
            },
        );
    if keep { Saved { v } } else { Saved::default() }
}
