//! Image folders: `root/<class>/*.{png,jpg,jpeg}` decoded in parallel, converted to gray or
//! RGB and resized to one size.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::image_set::{ImageSet, ImageShape};

/// Colour handling when reading images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorMode {
    /// One channel (luma).
    Gray,
    /// Three channels.
    Rgb,
}

impl ColorMode {
    /// Number of channels.
    pub fn channels(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::Rgb => 3,
        }
    }
}

/// How to read an image folder.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Gray or RGB.
    pub color: ColorMode,
    /// Target (height, width); `None` keeps the files' size, which must then be the same for all.
    pub size: Option<(usize, usize)>,
    /// Skip unreadable files with a warning instead of failing.
    pub skip_bad: bool,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            color: ColorMode::Gray,
            size: None,
            skip_bad: false,
        }
    }
}

/// An image folder read into memory, with the files that were skipped.
#[derive(Debug, Clone)]
pub struct FolderSet {
    /// The images.
    pub set: ImageSet,
    /// The file of each image, in set order.
    pub files: Vec<PathBuf>,
    /// Files that could not be read, with why (only with `skip_bad`).
    pub skipped: Vec<(PathBuf, String)>,
}

/// True for the extensions the folder reader takes.
pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The image files under `inputs`: files as given, folders searched recursively (sorted
/// within each folder), in the order of `inputs`. An input that does not exist is an error
/// naming it; so is finding no image at all.
pub fn list_images(inputs: &[impl AsRef<Path>]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for p in sorted_entries(dir)? {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_image_file(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in inputs {
        let p = p.as_ref();
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.to_path_buf());
        } else {
            return Err(DataError::format(p, "no such file or folder"));
        }
    }
    if out.is_empty() {
        return Err(DataError::Invalid(
            "no .png, .jpg or .jpeg image among the inputs".into(),
        ));
    }
    Ok(out)
}

/// Image paths listed one per line in a text file (blank lines and `#` comments skipped);
/// relative paths are taken from the list's folder. Every listed file must exist: the error
/// names the list and each missing line.
pub fn read_image_list(list: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(list).map_err(|e| DataError::io(list, e))?;
    let base = list.parent().unwrap_or(Path::new(""));
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let p = base.join(line);
        if !p.is_file() {
            missing.push(format!("line {}: {line}", i + 1));
        }
        out.push(p);
    }
    if !missing.is_empty() {
        return Err(DataError::format(
            list,
            format!(
                "{} listed image(s) not found: {}",
                missing.len(),
                missing.join(", ")
            ),
        ));
    }
    if out.is_empty() {
        return Err(DataError::format(list, "the list names no image"));
    }
    Ok(out)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut v = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        v.push(entry.path());
    }
    v.sort();
    Ok(v)
}

/// A decoded image: CHW u8 pixels, height, width.
pub type Decoded = (Vec<u8>, usize, usize);

/// Decodes one file into CHW u8 pixels of the requested colour and size.
pub fn decode_file(path: &Path, color: ColorMode, size: Option<(usize, usize)>) -> Result<Decoded> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if bytes.is_empty() {
        return Err(DataError::Decode {
            path: path.into(),
            msg: "the file is empty".into(),
        });
    }
    let img = image::load_from_memory(&bytes).map_err(|e| DataError::Decode {
        path: path.into(),
        msg: e.to_string(),
    })?;
    let img = match size {
        Some((h, w)) if (img.height() as usize, img.width() as usize) != (h, w) => {
            img.resize_exact(w as u32, h as u32, FilterType::Triangle)
        }
        _ => img,
    };
    let (h, w) = (img.height() as usize, img.width() as usize);
    let pixels = match color {
        ColorMode::Gray => img.to_luma8().into_raw(),
        ColorMode::Rgb => {
            // HWC interleaved -> CHW planar.
            let hwc = img.to_rgb8().into_raw();
            let mut chw = vec![0u8; hwc.len()];
            for (i, px) in hwc.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    chw[c * h * w + i] = px[c];
                }
            }
            chw
        }
    };
    Ok((pixels, h, w))
}

/// Reads `root/<class>/*.{png,jpg,jpeg}`; class names are the sub-folder names, sorted.
/// Files with other extensions are ignored; hidden entries too.
pub fn load_folder(root: impl AsRef<Path>, opts: &FolderOptions) -> Result<FolderSet> {
    let root = root.as_ref();
    if !root.is_dir() {
        return Err(DataError::format(root, "is not a directory"));
    }
    let mut class_names = Vec::new();
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for class_dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let label = class_names.len() as u32;
        let imgs: Vec<PathBuf> = sorted_entries(&class_dir)?
            .into_iter()
            .filter(|p| p.is_file() && is_image_file(p))
            .collect();
        if imgs.is_empty() {
            return Err(DataError::format(
                &class_dir,
                "class folder holds no .png, .jpg or .jpeg file",
            ));
        }
        class_names.push(
            class_dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
        files.extend(imgs.into_iter().map(|p| (p, label)));
    }
    if class_names.is_empty() {
        return Err(DataError::format(
            root,
            "holds no class sub-folder (expected root/<class>/*.png)",
        ));
    }
    let (set, kept, skipped) = decode_all(files, class_names, opts, root)?;
    let names = kept
        .iter()
        .map(|p| {
            p.strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let set = set.with_names(names)?;
    Ok(FolderSet {
        set,
        files: kept,
        skipped,
    })
}

/// Decodes the listed files (in parallel) into one set, in the given order, each with its
/// label; every image must have the same size after `opts.size`, and none may fail to
/// decode (`opts.skip_bad` is not used: the caller's indices must stay aligned).
pub fn load_files(
    files: &[PathBuf],
    labels: &[u32],
    class_names: Vec<String>,
    opts: &FolderOptions,
    origin: &Path,
) -> Result<ImageSet> {
    let strict = FolderOptions {
        skip_bad: false,
        ..opts.clone()
    };
    let files = files.iter().cloned().zip(labels.iter().copied()).collect();
    Ok(decode_all(files, class_names, &strict, origin)?.0)
}

type Decoded3 = (ImageSet, Vec<PathBuf>, Vec<(PathBuf, String)>);

fn decode_all(
    files: Vec<(PathBuf, u32)>,
    class_names: Vec<String>,
    opts: &FolderOptions,
    root: &Path,
) -> Result<Decoded3> {
    let decoded: Vec<(PathBuf, u32, Result<Decoded>)> = files
        .into_par_iter()
        .map(|(p, l)| {
            let r = decode_file(&p, opts.color, opts.size);
            (p, l, r)
        })
        .collect();
    let mut shape: Option<(ImageShape, PathBuf)> = None;
    let (mut pixels, mut labels, mut kept, mut skipped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (p, l, r) in decoded {
        let (px, h, w) = match r {
            Ok(v) => v,
            Err(e) if opts.skip_bad => {
                tracing::warn!(file = %p.display(), error = %e, "skipping unreadable image");
                skipped.push((p, e.to_string()));
                continue;
            }
            Err(e) => return Err(e),
        };
        let s = ImageShape {
            channels: opts.color.channels(),
            height: h,
            width: w,
        };
        match &shape {
            None => shape = Some((s, p.clone())),
            Some((first, fp)) if *first != s => {
                return Err(DataError::format(
                    &p,
                    format!(
                        "image is {h}x{w} but {} is {}x{}; pass a target size to resize",
                        fp.display(),
                        first.height,
                        first.width
                    ),
                ));
            }
            Some(_) => {}
        }
        pixels.extend_from_slice(&px);
        labels.push(l);
        kept.push(p);
    }
    let (shape, _) = shape.ok_or_else(|| DataError::format(root, "no image could be read"))?;
    let set = ImageSet::new(pixels, labels, shape, class_names)?;
    Ok((set, kept, skipped))
}

/// Writes image `i` of `set` as a PNG file (atomic).
pub fn save_png(set: &ImageSet, i: usize, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let s = set.shape();
    let (w, h) = (s.width as u32, s.height as u32);
    let px = set.image(i);
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut out);
    let (buf, ct) = match s.channels {
        1 => (px.to_vec(), image::ExtendedColorType::L8),
        3 => {
            let plane = s.height * s.width;
            let mut hwc = vec![0u8; px.len()];
            for j in 0..plane {
                for c in 0..3 {
                    hwc[j * 3 + c] = px[c * plane + j];
                }
            }
            (hwc, image::ExtendedColorType::Rgb8)
        }
        c => {
            return Err(DataError::Invalid(format!(
                "cannot write {c}-channel images as PNG"
            )));
        }
    };
    image::ImageEncoder::write_image(enc, &buf, w, h, ct).map_err(|e| DataError::Decode {
        path: path.into(),
        msg: e.to_string(),
    })?;
    crate::fsutil::write_atomic(path, &out)
}
