//! `ImageSet`: u8 pixels (N×C×H×W), class labels and class names, with cheap subsets that
//! share the pixel buffer.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use crate::error::{DataError, Result};

/// Channels, height and width of every image in a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ImageShape {
    /// 1 for grayscale, 3 for RGB.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

impl ImageShape {
    /// Values per image (C·H·W).
    pub fn numel(&self) -> usize {
        self.channels * self.height * self.width
    }
}

impl std::fmt::Display for ImageShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

#[derive(Debug)]
struct Storage {
    pixels: Vec<u8>,
    labels: Vec<u32>,
}

/// A labelled set of images. Cloning and subsetting share the pixels; only indices are copied.
#[derive(Debug, Clone)]
pub struct ImageSet {
    storage: Arc<Storage>,
    /// Rows of `storage` this view exposes; `None` for all, in order.
    rows: Option<Arc<[u32]>>,
    shape: ImageShape,
    class_names: Arc<[String]>,
    /// Each stored image's name (its file, relative to the folder), by storage row.
    names: Option<Arc<[String]>>,
}

impl ImageSet {
    /// Builds a set from raw CHW pixels (image after image), one label per image and the
    /// class names that labels index into.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u32>,
        shape: ImageShape,
        class_names: Vec<String>,
    ) -> Result<Self> {
        if shape.numel() == 0 {
            return Err(DataError::Invalid(format!("image shape {shape} is empty")));
        }
        if pixels.len() != labels.len() * shape.numel() {
            return Err(DataError::Invalid(format!(
                "{} pixel values for {} images of {shape} (expected {})",
                pixels.len(),
                labels.len(),
                labels.len() * shape.numel()
            )));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= class_names.len())
        {
            return Err(DataError::Invalid(format!(
                "label {l} of image {i} is out of range for {} classes",
                class_names.len()
            )));
        }
        Ok(Self {
            storage: Arc::new(Storage { pixels, labels }),
            rows: None,
            shape,
            class_names: class_names.into(),
            names: None,
        })
    }

    /// The set with a name for each image (the file it came from), in the order of
    /// [`ImageSet::new`]'s images; views taken later keep them.
    pub fn with_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.storage.labels.len() {
            return Err(DataError::Invalid(format!(
                "{} names for {} images",
                names.len(),
                self.storage.labels.len()
            )));
        }
        self.names = Some(names.into());
        Ok(self)
    }

    /// Image `i`'s name (its file) when the set was built with names.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names.as_ref().map(|n| n[self.row(i)].as_str())
    }

    /// Where image `i` sits in the set this view was taken from (its index in an IDX file).
    pub fn source_index(&self, i: usize) -> usize {
        self.row(i)
    }

    /// Image `i` for a person: its file name, else `#N` with its index in the source.
    pub fn describe(&self, i: usize) -> String {
        self.name(i)
            .map_or_else(|| format!("#{}", self.row(i)), str::to_string)
    }

    /// Number of images in this view.
    pub fn len(&self) -> usize {
        match &self.rows {
            Some(r) => r.len(),
            None => self.storage.labels.len(),
        }
    }

    /// True when the view holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape shared by every image.
    pub fn shape(&self) -> ImageShape {
        self.shape
    }

    /// Class names; labels index into them.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Number of classes (present or not in this view).
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    fn row(&self, i: usize) -> usize {
        match &self.rows {
            Some(r) => r[i] as usize,
            None => i,
        }
    }

    /// Pixels of image `i` (C·H·W bytes). Panics when `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.shape.numel();
        let r = self.row(i);
        &self.storage.pixels[r * n..(r + 1) * n]
    }

    /// Class label of image `i`.
    pub fn label(&self, i: usize) -> u32 {
        self.storage.labels[self.row(i)]
    }

    /// All labels of this view, in order.
    pub fn labels(&self) -> Vec<u32> {
        (0..self.len()).map(|i| self.label(i)).collect()
    }

    /// Image indices of this view grouped by class: `result[c]` lists the images of class `c`.
    pub fn indices_by_class(&self) -> Vec<Vec<usize>> {
        let mut by = vec![Vec::new(); self.num_classes()];
        for i in 0..self.len() {
            by[self.label(i) as usize].push(i);
        }
        by
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        self.indices_by_class().iter().map(Vec::len).collect()
    }

    /// A view of the images at `indices` (indices into this view), sharing the pixels.
    pub fn subset(&self, indices: &[usize]) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DataError::Invalid(format!(
                "subset index {bad} is out of range for a set of {} images",
                self.len()
            )));
        }
        let rows: Arc<[u32]> = indices.iter().map(|&i| self.row(i) as u32).collect();
        Ok(Self {
            storage: Arc::clone(&self.storage),
            rows: Some(rows),
            shape: self.shape,
            class_names: Arc::clone(&self.class_names),
            names: self.names.clone(),
        })
    }

    /// The first `n` images of each class (fewer where a class has fewer), in original order.
    pub fn take_per_class(&self, n: usize) -> Result<Self> {
        let mut left = vec![n; self.num_classes()];
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let l = &mut left[self.label(i) as usize];
                let keep = *l > 0;
                *l = l.saturating_sub(1);
                keep
            })
            .collect();
        self.subset(&idx)
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.shape.channels;
        let plane = self.shape.height * self.shape.width;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for i in 0..self.len() {
            for (ch, px) in self.image(i).chunks_exact(plane).enumerate() {
                for &p in px {
                    let v = f64::from(p) / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| ((q / n - (s / n) * (s / n)).max(0.0).sqrt() as f32).max(1e-3))
            .collect();
        (mean, std)
    }

    /// Writes image `i` into `out` as f32 in [0, 1].
    pub fn write_f32(&self, i: usize, out: &mut [f32]) {
        for (o, &p) in out.iter_mut().zip(self.image(i)) {
            *o = f32::from(p) / 255.0;
        }
    }

    /// The images at `indices` as an (N, C, H, W) f32 tensor in [0, 1], unnormalised.
    pub fn to_tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let n = self.shape.numel();
        let mut buf = vec![0f32; indices.len() * n];
        for (chunk, &i) in buf.chunks_exact_mut(n).zip(indices) {
            self.write_f32(i, chunk);
        }
        let s = self.shape;
        Ok(Tensor::from_vec(
            buf,
            (indices.len(), s.channels, s.height, s.width),
            device,
        )?)
    }

    /// All pixels of this view, image after image (copies when the view is a subset).
    pub fn pixels(&self) -> std::borrow::Cow<'_, [u8]> {
        match &self.rows {
            None => std::borrow::Cow::Borrowed(&self.storage.pixels),
            Some(_) => {
                let mut v = Vec::with_capacity(self.len() * self.shape.numel());
                for i in 0..self.len() {
                    v.extend_from_slice(self.image(i));
                }
                std::borrow::Cow::Owned(v)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ImageSet {
        let shape = ImageShape {
            channels: 1,
            height: 1,
            width: 2,
        };
        ImageSet::new(
            vec![0, 1, 2, 3, 4, 5, 6, 7],
            vec![0, 1, 0, 1],
            shape,
            vec!["a".into(), "b".into()],
        )
        .unwrap()
    }

    #[test]
    fn subset_of_subset_shares_pixels() {
        let s = tiny();
        let sub = s.subset(&[3, 1, 2]).unwrap();
        assert_eq!(sub.image(0), &[6, 7]);
        let sub2 = sub.subset(&[2]).unwrap();
        assert_eq!(sub2.image(0), &[4, 5]);
        assert_eq!(sub2.label(0), 0);
        assert!(Arc::ptr_eq(&s.storage, &sub2.storage));
        assert_eq!(sub.indices_by_class(), vec![vec![2], vec![0, 1]]);
        assert!(sub.subset(&[3]).is_err());
    }

    #[test]
    fn rejects_inconsistent_inputs() {
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        assert!(ImageSet::new(vec![0; 7], vec![0, 0], shape, vec!["a".into()]).is_err());
        let e = ImageSet::new(vec![0; 8], vec![0, 1], shape, vec!["a".into()]).unwrap_err();
        assert!(e.to_string().contains("label 1 of image 1"), "{e}");
    }

    #[test]
    fn tensor_is_scaled() {
        let t = tiny().to_tensor(&[1], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 1, 1, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![2.0 / 255.0, 3.0 / 255.0]);
    }

    #[test]
    fn take_per_class_is_stratified() {
        let s = tiny().take_per_class(1).unwrap();
        assert_eq!(s.labels(), vec![0, 1]);
    }
}
