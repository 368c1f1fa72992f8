//! The data measurement's searches: exact k-nearest neighbours, exact and near copies
//! between two image sets, the neighbours' label shares, image hashes and thumbnails.

use super::*;

pub(super) fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= c.len() {
                o.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                o.push('=');
            }
        }
    }
    o
}

/// An image (CHW, 1 or 3 channels) as a PNG data URI.
pub(super) fn thumbnail(px: &[u8], (c, h, w): (usize, usize, usize)) -> Option<String> {
    let img: image::DynamicImage = match c {
        1 => image::GrayImage::from_raw(w as u32, h as u32, px.to_vec())?.into(),
        3 => {
            let plane = h * w;
            let hwc: Vec<u8> = (0..plane)
                .flat_map(|j| (0..3).map(move |k| px[k * plane + j]))
                .collect();
            image::RgbImage::from_raw(w as u32, h as u32, hwc)?.into()
        }
        _ => return None,
    };
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .ok()?;
    Some(format!("data:image/png;base64,{}", base64(&png)))
}

/// FNV-1a of an image's bytes: the exact-duplicate key.
pub fn image_hash(px: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in px {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The `k` nearest other rows of each row of `x` (n × d), by squared Euclidean distance,
/// nearest first, with the distances; chunked products through candle.
pub(super) fn knn(x: &[f32], n: usize, d: usize, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    if n == 0 || d == 0 {
        return Ok(vec![Vec::new(); n]);
    }
    let dev = Device::Cpu;
    let all = Tensor::from_slice(x, (n, d), &dev)?;
    let sq: Vec<f32> = all.sqr()?.sum(1)?.to_vec1()?;
    let at = all.t()?.contiguous()?;
    let mut out = Vec::with_capacity(n);
    let chunk = 512;
    let mut s = 0;
    while s < n {
        let m = chunk.min(n - s);
        let dots: Vec<f32> = all.narrow(0, s, m)?.matmul(&at)?.flatten_all()?.to_vec1()?;
        for r in 0..m {
            let i = s + r;
            let row = &dots[r * n..(r + 1) * n];
            let mut best: Vec<(usize, f32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, (sq[i] + sq[j] - 2.0 * row[j]).max(0.0)))
                .collect();
            let kk = k.min(best.len());
            if kk > 0 && kk < best.len() {
                best.select_nth_unstable_by(kk - 1, |a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                best.truncate(kk);
            }
            best.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            out.push(best);
        }
        s += m;
    }
    Ok(out)
}

/// Squared distance of two images' raw pixels, exactly.
pub(super) fn sq_distance(a: &[u8], b: &[u8]) -> u64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = i64::from(x) - i64::from(y);
            (d * d) as u64
        })
        .sum()
}

/// The images of `a` that have an exact or near copy (root-mean-square difference of at most
/// 2 intensity levels) among the images of `b`: `(i in a, nearest j in b, exact)`, in the
/// order of `a`. Distances through chunked candle products of centred pixels, each candidate
/// then confirmed on the integer pixels, so rounding can neither add nor drop a pair.
pub(super) fn copies_in(a: &[u8], b: &[u8], numel: usize) -> Result<Vec<(usize, usize, bool)>> {
    if numel == 0 || a.is_empty() || b.is_empty() {
        return Ok(Vec::new());
    }
    let (n, m) = (a.len() / numel, b.len() / numel);
    let near = 4 * numel as u64;
    // f32 rounding of |x|² + |y|² − 2x·y on centred values stays far below this slack.
    let slack = near as f32 * 1.5 + 64.0;
    let dev = Device::Cpu;
    let centred = |px: &[u8]| -> Vec<f32> { px.iter().map(|&v| f32::from(v) - 127.5).collect() };
    let xa = Tensor::from_vec(centred(a), (n, numel), &dev)?;
    let sa: Vec<f32> = xa.sqr()?.sum(1)?.to_vec1()?;
    let mut best: Vec<Option<(u64, usize)>> = vec![None; n];
    let chunk = 4096;
    let mut s = 0;
    while s < m {
        let c = chunk.min(m - s);
        let xb = Tensor::from_vec(centred(&b[s * numel..(s + c) * numel]), (c, numel), &dev)?;
        let sb: Vec<f32> = xb.sqr()?.sum(1)?.to_vec1()?;
        let dots: Vec<f32> = xa.matmul(&xb.t()?)?.flatten_all()?.to_vec1()?;
        for i in 0..n {
            let row = &dots[i * c..(i + 1) * c];
            for (r, &dot) in row.iter().enumerate() {
                if sa[i] + sb[r] - 2.0 * dot <= slack {
                    let j = s + r;
                    let dist = sq_distance(
                        &a[i * numel..(i + 1) * numel],
                        &b[j * numel..(j + 1) * numel],
                    );
                    if dist <= near && best[i].is_none_or(|(bd, _)| dist < bd) {
                        best[i] = Some((dist, j));
                    }
                }
            }
        }
        s += c;
    }
    Ok(best
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| b.map(|(dist, j)| (i, j, dist == 0)))
        .collect())
}

/// Share of `nb`'s labels unlike `own`, and the most common other label.
pub(super) fn disagreement(nb: &[(usize, f32)], labels: &[u32], own: u32) -> (f64, Option<u32>) {
    if nb.is_empty() {
        return (0.0, None);
    }
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &(j, _) in nb {
        if labels[j] != own {
            *counts.entry(labels[j]).or_default() += 1;
        }
    }
    let other: usize = counts.values().sum();
    let top = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(l, _)| l);
    (other as f64 / nb.len() as f64, top)
}

/// Share of `nb`'s labels equal to `label`.
pub(super) fn share_of(nb: &[(usize, f32)], labels: &[u32], label: u32) -> f64 {
    if nb.is_empty() {
        return 0.0;
    }
    nb.iter().filter(|&&(j, _)| labels[j] == label).count() as f64 / nb.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        // RFC 4648 section 10's test vectors.
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn neighbours_are_exact_and_exclude_the_image_itself() {
        // Points on a line: each one's nearest are its neighbours on the line.
        let x: Vec<f32> = (0..6).map(|i| i as f32 * 1.5).collect();
        let nb = knn(&x, 6, 1, 2).unwrap();
        assert_eq!(nb[0].iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(nb[3].iter().map(|p| p.0).collect::<Vec<_>>(), [2, 4]);
        assert!((nb[0][0].1 - 2.25).abs() < 1e-4, "{:?}", nb[0]);
        assert_eq!(disagreement(&nb[0], &[0, 1, 1, 0, 0, 0], 0), (1.0, Some(1)));
        assert_eq!(share_of(&nb[3], &[0, 1, 1, 0, 0, 0], 0), 0.5);
    }

    #[test]
    fn copies_across_splits_are_exact_or_near_and_nothing_else() {
        // Noise images (an LCG), 784 values each; split b holds an exact copy of a[2], a copy
        // of a[5] off by one level everywhere (RMS 1: near), a copy of a[7] off by two at every
        // pixel plus one (just beyond RMS 2: not near), and two copies of a[9], one exact.
        let numel = 784;
        let mut state = 12345u64;
        let mut noise = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (state >> 56) as u8
                })
                .collect()
        };
        let a = noise(12 * numel);
        let mut b = noise(40 * numel);
        let img = |v: &[u8], i: usize| v[i * numel..(i + 1) * numel].to_vec();
        let put = |b: &mut Vec<u8>, j: usize, px: Vec<u8>| {
            b[j * numel..(j + 1) * numel].copy_from_slice(&px);
        };
        put(&mut b, 3, img(&a, 2));
        let off1: Vec<u8> = img(&a, 5)
            .iter()
            .enumerate()
            .map(|(k, &v)| {
                if (k % 2 == 0 && v < 255) || v == 0 {
                    v + 1
                } else {
                    v - 1
                }
            })
            .collect();
        put(&mut b, 30, off1);
        let mut off2: Vec<u8> = img(&a, 7)
            .iter()
            .map(|&v| if v < 128 { v + 2 } else { v - 2 })
            .collect();
        off2[0] = if off2[0] < 128 {
            off2[0] + 1
        } else {
            off2[0] - 1
        };
        put(&mut b, 10, off2);
        let mut near9 = img(&a, 9);
        near9[100] ^= 1;
        put(&mut b, 4, near9);
        put(&mut b, 39, img(&a, 9));
        let got = copies_in(&a, &b, numel).unwrap();
        assert_eq!(got, [(2, 3, true), (5, 30, false), (9, 39, true)]);
        // Chunking does not change the answer: the same search with b split at 4096 rows is
        // the one above, so check the boundary by putting a copy in a longer split's last row.
        let mut long = noise(4100 * numel);
        put(&mut long, 4099, img(&a, 0));
        assert_eq!(copies_in(&a, &long, numel).unwrap(), [(0, 4099, true)]);
    }
}
