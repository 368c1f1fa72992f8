//! IDX files of the MNIST family (`train-images-idx3-ubyte[.gz]`, ...): a validating reader that
//! never allocates from a declared size, a writer, and a directory loader.
//!
//! Format: two zero bytes, a type code (`0x08` = u8), the number of dimensions, then one
//! big-endian u32 per dimension and the values. Images are `0x00000803` (N×H×W), labels
//! `0x00000801` (N). Files may be gzip-compressed; that is detected from the content.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::error::{DataError, Result};
use crate::fsutil::write_atomic;
use crate::image_set::{ImageSet, ImageShape};

/// Magic number of an IDX file of u8 images (N×H×W).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of u8 labels (N).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The class names of MNIST, in label order.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Which half of an IDX dataset directory to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxSplit {
    /// `train-*` files.
    Train,
    /// `t10k-*` files.
    Test,
}

impl IdxSplit {
    fn prefix(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Test => "t10k",
        }
    }
}

/// Images read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub height: usize,
    /// Columns per image.
    pub width: usize,
    /// `count·height·width` bytes, image after image.
    pub pixels: Vec<u8>,
}

/// Wraps `r` in a gzip decoder when its content starts with the gzip magic.
fn decompressing<'a>(r: impl Read + 'a, path: &Path) -> Result<Box<dyn Read + 'a>> {
    let mut r = BufReader::new(r);
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut r, &mut magic).map_err(|e| DataError::io(path, e))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(r);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(MultiGzDecoder::new(chained)))
    } else {
        Ok(Box::new(chained))
    }
}

/// Opens `path` and returns a reader over its decompressed content (gzip is detected).
fn open(path: &Path) -> Result<Box<dyn Read>> {
    decompressing(File::open(path).map_err(|e| DataError::io(path, e))?, path)
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn read_err(path: &Path, e: std::io::Error) -> DataError {
    // A corrupt gzip stream surfaces as InvalidInput/InvalidData/UnexpectedEof from flate2.
    DataError::format(path, format!("cannot read: {e}"))
}

/// Reads the header; returns the dimensions after checking the magic.
fn read_header(r: &mut dyn Read, path: &Path, expected_magic: u32) -> Result<Vec<usize>> {
    let mut magic = [0u8; 4];
    let got = read_up_to(r, &mut magic).map_err(|e| read_err(path, e))?;
    if got < 4 {
        return Err(DataError::format(
            path,
            format!("truncated at byte {got}: the 4-byte IDX magic number is incomplete"),
        ));
    }
    let m = u32::from_be_bytes(magic);
    if m != expected_magic {
        let what = match expected_magic {
            IMAGES_MAGIC => "u8 images (3 dimensions)",
            _ => "u8 labels (1 dimension)",
        };
        return Err(DataError::format(
            path,
            format!("magic 0x{m:08x}, expected 0x{expected_magic:08x} for IDX {what}"),
        ));
    }
    let ndims = (expected_magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndims);
    for d in 0..ndims {
        let mut b = [0u8; 4];
        let got = read_up_to(r, &mut b).map_err(|e| read_err(path, e))?;
        if got < 4 {
            return Err(DataError::format(
                path,
                format!(
                    "truncated at byte {}: header declares {ndims} dimensions but ends inside dimension {d}",
                    4 + 4 * d + got
                ),
            ));
        }
        dims.push(u32::from_be_bytes(b) as usize);
    }
    Ok(dims)
}

/// Reads exactly `len` payload bytes, growing the buffer only as data arrives, and checks
/// that nothing follows.
fn read_payload(r: &mut dyn Read, path: &Path, len: usize, header_len: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    (&mut *r)
        .take(len as u64)
        .read_to_end(&mut buf)
        .map_err(|e| read_err(path, e))?;
    if buf.len() < len {
        return Err(DataError::format(
            path,
            format!(
                "truncated at byte {}: the header declares {len} bytes of data, the file holds {}",
                header_len + buf.len(),
                buf.len()
            ),
        ));
    }
    let mut extra = [0u8; 1];
    if read_up_to(r, &mut extra).map_err(|e| read_err(path, e))? > 0 {
        return Err(DataError::format(
            path,
            format!(
                "trailing data after byte {}: the header declares {len} bytes of data",
                header_len + len
            ),
        ));
    }
    Ok(buf)
}

/// Reads an IDX image file (`0x00000803`, raw or gzip).
pub fn read_images(path: impl AsRef<Path>) -> Result<IdxImages> {
    let path = path.as_ref();
    images_from(open(path)?, path)
}

/// Parses IDX images (raw or gzip) from memory; `name` is used in error messages.
pub fn images_from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<IdxImages> {
    let name = name.as_ref();
    images_from(decompressing(bytes, name)?, name)
}

/// Parses IDX labels (raw or gzip) from memory; `name` is used in error messages.
pub fn labels_from_bytes(bytes: &[u8], name: impl AsRef<Path>) -> Result<Vec<u8>> {
    let name = name.as_ref();
    labels_from(decompressing(bytes, name)?, name)
}

fn images_from(mut r: Box<dyn Read + '_>, path: &Path) -> Result<IdxImages> {
    let dims = read_header(&mut *r, path, IMAGES_MAGIC)?;
    let (count, height, width) = (dims[0], dims[1], dims[2]);
    if count == 0 {
        return Err(DataError::format(path, "the file declares zero images"));
    }
    if height == 0 || width == 0 {
        return Err(DataError::format(
            path,
            format!("image dimensions {height}x{width} are empty"),
        ));
    }
    let len = count
        .checked_mul(height)
        .and_then(|v| v.checked_mul(width))
        .ok_or_else(|| {
            DataError::format(
                path,
                format!("declared size {count}x{height}x{width} overflows"),
            )
        })?;
    let pixels = read_payload(&mut *r, path, len, 16)?;
    Ok(IdxImages {
        count,
        height,
        width,
        pixels,
    })
}

/// Reads an IDX label file (`0x00000801`, raw or gzip).
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    let path = path.as_ref();
    labels_from(open(path)?, path)
}

fn labels_from(mut r: Box<dyn Read + '_>, path: &Path) -> Result<Vec<u8>> {
    let dims = read_header(&mut *r, path, LABELS_MAGIC)?;
    if dims[0] == 0 {
        return Err(DataError::format(path, "the file declares zero labels"));
    }
    read_payload(&mut *r, path, dims[0], 8)
}

fn encode(magic: u32, dims: &[usize], payload: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4 + 4 * dims.len() + payload.len());
    out.extend_from_slice(&magic.to_be_bytes());
    for &d in dims {
        let d = u32::try_from(d)
            .map_err(|_| DataError::Invalid(format!("IDX dimension {d} exceeds u32")))?;
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(payload);
    Ok(out)
}

fn write_maybe_gz(path: &Path, raw: Vec<u8>) -> Result<()> {
    let is_gz = path.extension().is_some_and(|e| e == "gz");
    let bytes = if is_gz {
        // mtime 0 and no file name: the same input always gives the same bytes.
        let mut enc = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::best());
        enc.write_all(&raw).map_err(|e| DataError::io(path, e))?;
        enc.finish().map_err(|e| DataError::io(path, e))?
    } else {
        raw
    };
    write_atomic(path, &bytes)
}

/// Writes the grayscale images of `set` as an IDX image file, gzip-compressed when the name
/// ends in `.gz`. The write is atomic.
pub fn write_images(path: impl AsRef<Path>, set: &ImageSet) -> Result<()> {
    let s = set.shape();
    if s.channels != 1 {
        return Err(DataError::Invalid(format!(
            "IDX holds grayscale images; this set has {} channels",
            s.channels
        )));
    }
    let raw = encode(IMAGES_MAGIC, &[set.len(), s.height, s.width], &set.pixels())?;
    write_maybe_gz(path.as_ref(), raw)
}

/// Writes the labels of `set` as an IDX label file (atomic, gzip for `.gz`).
pub fn write_labels(path: impl AsRef<Path>, set: &ImageSet) -> Result<()> {
    let labels = set
        .labels()
        .into_iter()
        .map(|l| u8::try_from(l).map_err(|_| DataError::Invalid(format!("label {l} exceeds u8"))))
        .collect::<Result<Vec<u8>>>()?;
    let raw = encode(LABELS_MAGIC, &[labels.len()], &labels)?;
    write_maybe_gz(path.as_ref(), raw)
}

/// Finds `<prefix>-<kind>-idx<k>-ubyte[.gz]` (or the `.idx` dotted variant) in `dir`.
fn find(dir: &Path, prefix: &str, kind: &str, k: u8) -> Result<PathBuf> {
    let stems = [
        format!("{prefix}-{kind}-idx{k}-ubyte"),
        format!("{prefix}-{kind}.idx{k}-ubyte"),
    ];
    for stem in &stems {
        for ext in ["", ".gz"] {
            let p = dir.join(format!("{stem}{ext}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(DataError::format(
        dir,
        format!("no IDX file {}[.gz] in this directory", stems[0]),
    ))
}

/// True when `dir` holds the image file of `split` under any name [`load_dir`] accepts (a
/// missing label file is then [`load_dir`]'s error to report, naming it).
pub fn has_split(dir: impl AsRef<Path>, split: IdxSplit) -> bool {
    let dir = dir.as_ref();
    find(dir, split.prefix(), "images", 3).is_ok()
}

/// Reads `classes.txt` (one name per line) from `dir` when present.
fn read_class_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let p = dir.join("classes.txt");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| DataError::io(&p, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(DataError::format(&p, "lists no class name"));
    }
    Ok(Some(names))
}

/// Loads one split of an IDX dataset directory (MNIST file names, raw or gzip).
///
/// Class names come from `class_names` when given, else from `classes.txt` in the directory,
/// else they are the label numbers. Every label must index a class name.
pub fn load_dir(
    dir: impl AsRef<Path>,
    split: IdxSplit,
    class_names: Option<Vec<String>>,
) -> Result<ImageSet> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(DataError::format(dir, "is not a directory"));
    }
    let ip = find(dir, split.prefix(), "images", 3)?;
    let lp = find(dir, split.prefix(), "labels", 1)?;
    let images = read_images(&ip)?;
    let labels = read_labels(&lp)?;
    let names = match class_names {
        Some(n) => Some(n),
        None => read_class_names(dir)?,
    };
    assemble(images, labels, names, &ip, &lp)
}

/// Builds an `ImageSet` from parsed images and labels, checking counts and label range.
/// Without class names, classes are named by their label numbers.
pub fn assemble(
    images: IdxImages,
    labels: Vec<u8>,
    class_names: Option<Vec<String>>,
    images_path: &Path,
    labels_path: &Path,
) -> Result<ImageSet> {
    let (ip, lp) = (images_path, labels_path);
    if labels.len() != images.count {
        return Err(DataError::format(
            lp,
            format!(
                "{} labels for {} images in {}",
                labels.len(),
                images.count,
                ip.display()
            ),
        ));
    }
    let names = match class_names {
        Some(n) => n,
        None => {
            let k = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
            (0..k).map(|c| c.to_string()).collect()
        }
    };
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= names.len())
    {
        return Err(DataError::format(
            lp,
            format!(
                "label {l} at index {i} is out of range: {} classes are named",
                names.len()
            ),
        ));
    }
    ImageSet::new(
        images.pixels,
        labels.into_iter().map(u32::from).collect(),
        ImageShape {
            channels: 1,
            height: images.height,
            width: images.width,
        },
        names,
    )
}

/// Writes `set` as one split of an IDX directory: `<prefix>-images-idx3-ubyte.gz` and
/// `<prefix>-labels-idx1-ubyte.gz`.
pub fn write_dir(dir: impl AsRef<Path>, split: IdxSplit, set: &ImageSet) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let p = split.prefix();
    write_images(dir.join(format!("{p}-images-idx3-ubyte.gz")), set)?;
    write_labels(dir.join(format!("{p}-labels-idx1-ubyte.gz")), set)
}
