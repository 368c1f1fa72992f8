//! `cargo xtask photo-crops`: an instance-matching image folder from a few colour photographs.
//!
//! Each photograph becomes a class; its images are random crops of it (a share of its area,
//! an aspect ratio near square, mirrored at random, brightness and contrast jittered), resized
//! to a square side: "the same object, another shot", as in product matching. The crops are
//! drawn from siam's seeded RNG, so the same photographs and seed give the same folder.
//! docs/BENCHMARKS.md measures the `resnet` preset on the colour photographs that Debian's
//! `opencv-doc` and `python3-skimage` packages carry (`xtask/bench/debian-photos.txt`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;
use rand::Rng;

/// Arguments of `cargo xtask photo-crops`.
#[derive(clap::Args)]
pub struct Args {
    /// Photographs: a folder of PNG/JPEG files, or a text file listing one path per line.
    #[arg(long)]
    from: PathBuf,
    /// The image folder to write (root/<photo>/NN.png); it must not exist.
    #[arg(long)]
    out: PathBuf,
    /// Crops per photograph.
    #[arg(long, default_value_t = 32)]
    per_class: usize,
    /// Side of the square crops, in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Smallest and largest share of the photograph's area a crop covers.
    #[arg(long, num_args = 2, default_values_t = [0.2, 0.6])]
    scale: Vec<f64>,
    /// The seed of the crops' random draws (one stream per photograph).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The photographs `from` names, sorted by path.
fn photo_paths(from: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = if from.is_dir() {
        let mut v = Vec::new();
        for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
            let p = e?.path();
            if siam_data::folder::is_image_file(&p) {
                v.push(p);
            }
        }
        v
    } else {
        let text = std::fs::read_to_string(from)
            .with_context(|| format!("reading the photo list {}", from.display()))?;
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(PathBuf::from)
            .collect()
    };
    paths.sort();
    if paths.len() < 2 {
        bail!(
            "{}: {} photograph(s); a class split needs at least two",
            from.display(),
            paths.len()
        );
    }
    Ok(paths)
}

/// A class folder's name: the file stem, made unique with a number when two photographs share
/// it.
fn class_names(paths: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(paths.len());
    for p in paths {
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("photo")
            .replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "_",
            );
        let mut name = stem.clone();
        let mut n = 2;
        while names.contains(&name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

/// One random crop of `photo` as a `size`×`size` RGB image.
fn crop(photo: &image::RgbImage, a: &Args, rng: &mut impl Rng) -> image::RgbImage {
    let (w, h) = (photo.width() as f64, photo.height() as f64);
    let share = rng.random_range(a.scale[0]..=a.scale[1]);
    let ratio = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
    let area = share * w * h;
    let cw = (area * ratio).sqrt().clamp(1.0, w);
    let ch = (area / ratio).sqrt().clamp(1.0, h);
    let x = rng.random_range(0.0..=(w - cw));
    let y = rng.random_range(0.0..=(h - ch));
    let view = image::imageops::crop_imm(photo, x as u32, y as u32, cw as u32, ch as u32);
    let mut out = image::imageops::resize(&*view, a.size, a.size, FilterType::Triangle);
    if rng.random_bool(0.5) {
        image::imageops::flip_horizontal_in_place(&mut out);
    }
    let brightness = rng.random_range(-20.0..=20.0f32);
    let contrast = rng.random_range(0.8..=1.2f32);
    for p in out.pixels_mut() {
        for c in p.0.iter_mut() {
            let v = (f32::from(*c) - 128.0) * contrast + 128.0 + brightness;
            *c = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Writes the folder: into a temporary sibling first, renamed into place when complete.
pub fn run(a: &Args) -> Result<()> {
    let (lo, hi) = (a.scale[0], a.scale[1]);
    if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
        bail!("--scale {lo} {hi}: need 0 < smallest <= largest <= 1");
    }
    if a.per_class < 2 || a.size < 8 {
        bail!("--per-class needs at least 2 crops and --size at least 8 pixels");
    }
    if a.out.exists() {
        bail!("{} exists; give a new folder", a.out.display());
    }
    let paths = photo_paths(&a.from)?;
    let names = class_names(&paths);
    let parent = a
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".photo-crops-")
        .tempdir_in(parent)?;
    for (c, (path, name)) in paths.iter().zip(&names).enumerate() {
        let photo = image::open(path)
            .with_context(|| format!("{}: not a readable image", path.display()))?
            .to_rgb8();
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir)?;
        let mut rng = siam_data::rng::rng_for(a.seed, &[c as u64]);
        for k in 0..a.per_class {
            let img = crop(&photo, a, &mut rng);
            let file = dir.join(format!("{k:02}.png"));
            img.save(&file)
                .with_context(|| format!("writing {}", file.display()))?;
        }
    }
    std::fs::rename(tmp.path(), &a.out)
        .with_context(|| format!("moving {} to {}", tmp.path().display(), a.out.display()))?;
    // Renamed into place: nothing left for the guard to remove.
    let _ = tmp.keep();
    println!(
        "{} classes × {} crops of {}×{} in {}",
        paths.len(),
        a.per_class,
        a.size,
        a.size,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(from: &Path, out: &Path) -> Args {
        Args {
            from: from.into(),
            out: out.into(),
            per_class: 3,
            size: 16,
            scale: vec![0.2, 0.6],
            seed: 7,
        }
    }

    fn photo(path: &Path, tint: [u8; 3]) {
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([tint[0] ^ (x as u8 * 5), tint[1] ^ (y as u8 * 7), tint[2]])
        });
        img.save(path).unwrap();
    }

    #[test]
    fn crops_every_photo_into_its_class_the_same_way_each_time() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        photo(&src.join("red.png"), [200, 10, 10]);
        photo(&src.join("blue.jpg"), [10, 10, 200]);
        std::fs::write(src.join("notes.txt"), "not an image").unwrap();
        run(&args(&src, &d.path().join("a"))).unwrap();
        run(&args(&src, &d.path().join("b"))).unwrap();
        for class in ["red", "blue"] {
            for k in 0..3 {
                let rel = format!("{class}/{k:02}.png");
                let a = image::open(d.path().join("a").join(&rel))
                    .unwrap()
                    .to_rgb8();
                let b = std::fs::read(d.path().join("b").join(&rel)).unwrap();
                assert_eq!(a.dimensions(), (16, 16));
                assert_eq!(std::fs::read(d.path().join("a").join(&rel)).unwrap(), b);
            }
        }
        // Two crops of one photograph differ (they are random views, not copies).
        let c0 = std::fs::read(d.path().join("a/red/00.png")).unwrap();
        let c1 = std::fs::read(d.path().join("a/red/01.png")).unwrap();
        assert_ne!(c0, c1);
        // A folder that exists is refused, and nothing is written into it.
        let err = run(&args(&src, &d.path().join("a"))).unwrap_err();
        assert!(err.to_string().contains("exists"), "{err}");
    }

    #[test]
    fn a_list_file_names_the_photos_and_a_bad_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p1 = d.path().join("one.png");
        let p2 = d.path().join("two.png");
        photo(&p1, [0, 100, 0]);
        std::fs::write(&p2, b"not a png").unwrap();
        let list = d.path().join("list.txt");
        std::fs::write(
            &list,
            format!("# photos\n{}\n{}\n", p1.display(), p2.display()),
        )
        .unwrap();
        let out = d.path().join("out");
        let err = run(&args(&list, &out)).unwrap_err();
        assert!(format!("{err:#}").contains("two.png"), "{err:#}");
        assert!(!out.exists(), "a failed run leaves no folder");
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".photo-crops-"))
            .collect();
        assert!(leftovers.is_empty(), "the temporary folder is removed");
    }

    #[test]
    fn class_names_are_unique() {
        let names = class_names(&[
            PathBuf::from("a/x.png"),
            PathBuf::from("b/x.jpg"),
            PathBuf::from("c/y z.png"),
        ]);
        assert_eq!(names, ["x", "x-2", "y_z"]);
    }
}
