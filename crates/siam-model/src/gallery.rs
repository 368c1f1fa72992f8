//! Galleries: embeddings computed once, searched many times.
//!
//! A [`Gallery`] holds N embeddings of one model, the name of each item (an image path) and
//! the model's [`GalleryIdentity`] (the weights' [fingerprint](SiameseModel::fingerprint),
//! the distance, the dimension). [`Gallery::search`] ranks every item for a batch of queries
//! exactly (no approximate index), one matrix product per block of queries and block of
//! gallery rows, keeping only the top k per query: memory stays bounded (a 512 × 8,192 block
//! of dot products per thread) however large the gallery.
//!
//! On disk a gallery is a plain safetensors file, readable by any safetensors reader: the
//! tensor `embeddings` (N, D) in f32 and, in the metadata, `format` (`siam-gallery/1`),
//! `files` (a JSON list of the N names), `model` (the model file it was embedded with),
//! `model-fingerprint`, `distance` and `embedding-dim`. It is written atomically and read
//! straight into one buffer (peak memory about the size of the embeddings).
//!
//! ```
//! use candle_core::Device;
//! use siam_model::{EncoderConfig, Gallery, InputSpec, ModelConfig, SiameseModel};
//!
//! let config = ModelConfig {
//!     encoder: EncoderConfig::SeedCnn { embedding_dim: 8 },
//!     input: InputSpec::fashion_mnist(),
//!     normalize: true,
//!     distance: Default::default(),
//!     pair_head: false,
//!     test_time_flip: false,
//! };
//! let model = SiameseModel::new(&config, 1, &Device::Cpu)?;
//! let mut gallery = Gallery::for_model(&model, "model.safetensors")?;
//! gallery.add(vec!["a".into(), "b".into()], &[1.0; 8].iter().chain(&[0.0; 8]).copied().collect::<Vec<_>>())?;
//! let hits = gallery.search(&[1.0; 8], 1)?;
//! assert_eq!(gallery.item(hits[0][0].index), "a");
//! # Ok::<(), siam_model::ModelError>(())
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use rayon::prelude::*;

use crate::distance::{Distance, EPS};
use crate::error::{ModelError, Result};
use crate::kernels::gemm::{Mat, gemm_into};
use crate::model::{SiameseModel, write_atomic_with};

/// The `format` a gallery file declares in its metadata.
pub const GALLERY_FORMAT: &str = "siam-gallery/1";

/// Queries per block of [`Gallery::search`].
const QUERY_BLOCK: usize = 512;
/// Gallery rows per block of [`Gallery::search`].
const GALLERY_BLOCK: usize = 8192;
/// Largest safetensors header read (the names of 10⁶ long paths fit).
const MAX_HEADER: u64 = 512 << 20;

/// Which model a gallery's embeddings came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GalleryIdentity {
    /// [`SiameseModel::fingerprint`] of the model.
    pub fingerprint: String,
    /// The model file it was embedded with (for messages; the fingerprint decides).
    pub model: String,
    /// The model's distance.
    pub distance: Distance,
    /// The embedding dimension.
    pub embedding_dim: usize,
}

impl GalleryIdentity {
    /// The identity of `model`, loaded from `model_path`.
    pub fn of(model: &SiameseModel, model_path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            fingerprint: model.fingerprint()?,
            model: model_path.as_ref().display().to_string(),
            distance: model.distance_kind(),
            embedding_dim: model.meta().embedding_dim,
        })
    }
}

/// One search result: the gallery item's index and its distance to the query.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Hit {
    /// Row of the gallery ([`Gallery::item`] names it).
    pub index: usize,
    /// Distance under the gallery's distance, as [`Distance::pairwise`] computes it.
    pub distance: f32,
}

/// Embeddings of one model with the names of their items; see the [module](self) docs.
#[derive(Debug, Clone)]
pub struct Gallery {
    identity: GalleryIdentity,
    items: Vec<String>,
    /// Row-major N × D.
    embeddings: Vec<f32>,
    /// Σx² of each row.
    sq_norms: Vec<f32>,
    /// Row of each name, built on first use (searching never needs it).
    index: std::sync::OnceLock<HashMap<String, usize>>,
}

impl Gallery {
    /// An empty gallery with this identity.
    pub fn new(identity: GalleryIdentity) -> Self {
        Self {
            identity,
            items: Vec::new(),
            embeddings: Vec::new(),
            sq_norms: Vec::new(),
            index: std::sync::OnceLock::new(),
        }
    }

    fn index(&self) -> &HashMap<String, usize> {
        self.index.get_or_init(|| {
            self.items
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect()
        })
    }

    /// An empty gallery for `model`, loaded from `model_path`.
    pub fn for_model(model: &SiameseModel, model_path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(GalleryIdentity::of(model, model_path)?))
    }

    /// Which model the embeddings came from.
    pub fn identity(&self) -> &GalleryIdentity {
        &self.identity
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when the gallery holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.identity.embedding_dim
    }

    /// The name of item `i`.
    pub fn item(&self, i: usize) -> &str {
        &self.items[i]
    }

    /// Every item's name, in row order.
    pub fn items(&self) -> &[String] {
        &self.items
    }

    /// True when an item of this name is in the gallery.
    pub fn contains(&self, name: &str) -> bool {
        self.index().contains_key(name)
    }

    /// The embeddings, row-major N × D.
    pub fn embeddings(&self) -> &[f32] {
        &self.embeddings
    }

    /// Adds items with their embeddings (row-major, `names.len()` × D). A name already in
    /// the gallery, or given twice, is an error (nothing is added).
    pub fn add(&mut self, names: Vec<String>, embeddings: &[f32]) -> Result<()> {
        let d = self.dim();
        if embeddings.len() != names.len() * d {
            return Err(ModelError::Config(format!(
                "gallery add: {} names but {} values (dimension {d})",
                names.len(),
                embeddings.len()
            )));
        }
        let mut seen = HashSet::new();
        for n in &names {
            if self.index().contains_key(n) || !seen.insert(n.as_str()) {
                return Err(ModelError::Config(format!(
                    "gallery add: {n} is already in the gallery"
                )));
            }
        }
        if let Some(bad) = embeddings.iter().position(|x| !x.is_finite()) {
            return Err(ModelError::Config(format!(
                "gallery add: the embedding of {} is not finite",
                names[bad / d]
            )));
        }
        for (n, row) in names.into_iter().zip(embeddings.chunks_exact(d)) {
            let at = self.items.len();
            self.index();
            self.index
                .get_mut()
                .expect("built above")
                .insert(n.clone(), at);
            self.items.push(n);
            self.sq_norms.push(row.iter().map(|x| x * x).sum());
        }
        self.embeddings.extend_from_slice(embeddings);
        Ok(())
    }

    /// Embeds image files with `model` (256 at a time) and adds those not already in the
    /// gallery, named by their path as given; returns how many were added. The model must
    /// be the gallery's ([`check_model`](Self::check_model)).
    #[cfg(feature = "image")]
    pub fn add_images(
        &mut self,
        model: &SiameseModel,
        paths: &[impl AsRef<Path>],
    ) -> Result<usize> {
        self.check_fingerprint(&model.fingerprint()?, "this model")?;
        let mut seen = HashSet::new();
        let new: Vec<&Path> = paths
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| {
                let name = p.display().to_string();
                !self.index().contains_key(&name) && seen.insert(name)
            })
            .collect();
        for chunk in new.chunks(256) {
            let xs = chunk
                .iter()
                .map(|p| model.load_image(p))
                .collect::<Result<Vec<_>>>()?;
            let e: Vec<f32> = model
                .embed(&candle_core::Tensor::cat(&xs, 0)?)?
                .to_device(&candle_core::Device::Cpu)?
                .flatten_all()?
                .to_vec1()?;
            self.add(chunk.iter().map(|p| p.display().to_string()).collect(), &e)?;
        }
        Ok(new.len())
    }

    /// An error naming both models unless `model` (loaded from `model_path`) is the one the
    /// gallery was embedded with.
    pub fn check_model(&self, model: &SiameseModel, model_path: impl AsRef<Path>) -> Result<()> {
        self.check_fingerprint(
            &model.fingerprint()?,
            &model_path.as_ref().display().to_string(),
        )
    }

    fn check_fingerprint(&self, fingerprint: &str, model: &str) -> Result<()> {
        if fingerprint == self.identity.fingerprint {
            return Ok(());
        }
        Err(ModelError::Config(format!(
            "the gallery was embedded with {} (weights {}), not with {model} (weights {fingerprint}): \
             embeddings of different models cannot be compared; search with {} or re-embed the gallery with `siam embed`",
            self.identity.model, self.identity.fingerprint, self.identity.model
        )))
    }

    /// The `k` nearest items to each query (row-major, M × D), nearest first, ties by row:
    /// exact, under the gallery's distance.
    pub fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>> {
        let d = self.dim();
        if d == 0 || !queries.len().is_multiple_of(d) {
            return Err(ModelError::Config(format!(
                "gallery search: {} query values are not rows of dimension {d}",
                queries.len()
            )));
        }
        let k = k.min(self.len());
        let mut out = Vec::with_capacity(queries.len() / d);
        for qb in queries.chunks(QUERY_BLOCK * d) {
            out.extend(self.search_block(qb, k));
        }
        Ok(out)
    }

    fn search_block(&self, q: &[f32], k: usize) -> Vec<Vec<Hit>> {
        let d = self.dim();
        let m = q.len() / d;
        let qq: Vec<f32> = q
            .chunks_exact(d)
            .map(|r| r.iter().map(|x| x * x).sum())
            .collect();
        let cosine = self.identity.distance == Distance::Cosine;
        let starts: Vec<usize> = (0..self.len()).step_by(GALLERY_BLOCK).collect();
        // Each block of gallery rows gives its own top k per query; the blocks merge after.
        let partial: Vec<Vec<TopK>> = starts
            .par_iter()
            .map(|&g0| {
                let n = GALLERY_BLOCK.min(self.len() - g0);
                let g = &self.embeddings[g0 * d..(g0 + n) * d];
                let mut dot = vec![0f32; m * n];
                gemm_into(
                    &mut dot,
                    m,
                    n,
                    d,
                    Mat {
                        data: q,
                        rs: d,
                        cs: 1,
                    },
                    Mat {
                        data: g,
                        rs: 1,
                        cs: d,
                    },
                    false,
                );
                let gg = &self.sq_norms[g0..g0 + n];
                (0..m)
                    .map(|i| {
                        let mut top = TopK::new(k);
                        let row = &dot[i * n..(i + 1) * n];
                        if cosine {
                            let nq = (qq[i] + EPS as f32).sqrt();
                            for (j, (&ab, &bb)) in row.iter().zip(gg).enumerate() {
                                top.offer(-ab / (nq * (bb + EPS as f32).sqrt()), g0 + j);
                            }
                        } else {
                            // |a|² is the same for the whole row: rank on |b|² − 2a·b.
                            for (j, (&ab, &bb)) in row.iter().zip(gg).enumerate() {
                                top.offer(bb - 2.0 * ab, g0 + j);
                            }
                        }
                        top
                    })
                    .collect()
            })
            .collect();
        (0..m)
            .map(|i| {
                let mut top = TopK::new(k);
                for block in &partial {
                    for &(key, j) in &block[i].best {
                        top.offer(key, j);
                    }
                }
                top.best
                    .into_iter()
                    .map(|(key, index)| Hit {
                        index,
                        distance: self.key_to_distance(key, qq[i]),
                    })
                    .collect()
            })
            .collect()
    }

    /// The distance from a ranking key of [`search_block`](Self::search_block), with the
    /// clamping and ε of [`Distance::pairwise`].
    fn key_to_distance(&self, key: f32, qq: f32) -> f32 {
        match self.identity.distance {
            Distance::Cosine => 1.0 + key,
            Distance::SquaredEuclidean => (qq + key).max(0.0),
            Distance::Euclidean => ((qq + key).max(0.0) + EPS as f32).sqrt(),
        }
    }

    /// Writes the gallery as a safetensors file, atomically (streamed, not built in memory).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let metadata = BTreeMap::from([
            ("format", GALLERY_FORMAT.to_string()),
            (
                "files",
                serde_json::to_string(&self.items).expect("strings serialise"),
            ),
            ("model", self.identity.model.clone()),
            ("model-fingerprint", self.identity.fingerprint.clone()),
            ("distance", self.identity.distance.name().to_string()),
            ("embedding-dim", self.dim().to_string()),
        ]);
        let bytes = self.embeddings.len() * 4;
        let header = serde_json::json!({
            "__metadata__": metadata,
            "embeddings": {"dtype": "F32", "shape": [self.len(), self.dim()], "data_offsets": [0, bytes]},
        });
        let mut header = serde_json::to_string(&header).expect("JSON serialises");
        // safetensors pads the header with spaces to a multiple of 8 bytes.
        while !header.len().is_multiple_of(8) {
            header.push(' ');
        }
        write_atomic_with(path, |f| {
            f.write_all(&(header.len() as u64).to_le_bytes())?;
            f.write_all(header.as_bytes())?;
            let mut buf = Vec::with_capacity(1 << 16);
            for chunk in self.embeddings.chunks(1 << 14) {
                buf.clear();
                buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
                f.write_all(&buf)?;
            }
            Ok(())
        })
        .map_err(|e| ModelError::file(path, format!("cannot write the gallery: {e}")))
    }

    /// Reads a gallery file written by [`save`](Self::save) (or `siam embed`), checking its
    /// format, shapes, names and values; every error names the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |msg: String| ModelError::file(path, msg);
        let mut f = std::io::BufReader::new(
            std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?,
        );
        let file_len = f.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
        let mut len8 = [0u8; 8];
        f.read_exact(&mut len8).map_err(|_| {
            bad("not a safetensors file: shorter than its 8-byte header length".into())
        })?;
        let hlen = u64::from_le_bytes(len8);
        if hlen > MAX_HEADER || hlen + 8 > file_len {
            return Err(bad(format!(
                "not a safetensors file: a header of {hlen} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; hlen as usize];
        f.read_exact(&mut header)
            .map_err(|e| bad(format!("cannot read the header: {e}")))?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|e| {
            bad(format!(
                "not a safetensors file: the header is not JSON: {e}"
            ))
        })?;
        let meta = header.get("__metadata__").and_then(|m| m.as_object());
        let get = |key: &str| -> Result<&str> {
            meta.and_then(|m| m.get(key))
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    bad(format!(
                        "no `{key}` in the metadata: not a gallery written by `siam embed` \
                     (an older siam wrote galleries without the model's fingerprint: re-embed)"
                    ))
                })
        };
        let format = get("format")?;
        if format != GALLERY_FORMAT {
            return Err(bad(format!(
                "gallery format `{format}`, this build reads `{GALLERY_FORMAT}`"
            )));
        }
        let items: Vec<String> = serde_json::from_str(get("files")?).map_err(|e| {
            bad(format!(
                "`files` in the metadata is not a list of names: {e}"
            ))
        })?;
        let distance: Distance = serde_json::from_value(serde_json::Value::String(
            get("distance")?.into(),
        ))
        .map_err(|_| {
            bad(format!(
                "unknown distance `{}`",
                get("distance").unwrap_or("")
            ))
        })?;
        let dim: usize = get("embedding-dim")?
            .parse()
            .map_err(|_| bad("`embedding-dim` is not a number".into()))?;
        let identity = GalleryIdentity {
            fingerprint: get("model-fingerprint")?.to_string(),
            model: get("model")?.to_string(),
            distance,
            embedding_dim: dim,
        };
        let t = header
            .get("embeddings")
            .ok_or_else(|| bad("no tensor `embeddings`".into()))?;
        let shape: Vec<usize> = t
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad("tensor `embeddings` has no shape".into()))?;
        let offsets: Vec<u64> = t
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad("tensor `embeddings` has no data offsets".into()))?;
        if t.get("dtype").and_then(|v| v.as_str()) != Some("F32") {
            return Err(bad("tensor `embeddings` is not F32".into()));
        }
        if shape != [items.len(), dim] {
            return Err(bad(format!(
                "tensor `embeddings` has shape {shape:?}, but the metadata lists {} files of dimension {dim}",
                items.len()
            )));
        }
        let values = items.len() * dim;
        let want = values as u64 * 4;
        if offsets.len() != 2 || offsets[1].checked_sub(offsets[0]) != Some(want) {
            return Err(bad(format!(
                "tensor `embeddings` declares offsets {offsets:?} for {want} bytes"
            )));
        }
        if 8 + hlen + offsets[1] > file_len {
            return Err(bad(format!(
                "truncated: {file_len} bytes, the header declares {}",
                8 + hlen + offsets[1]
            )));
        }
        std::io::copy(&mut f.by_ref().take(offsets[0]), &mut std::io::sink())
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        let mut embeddings = Vec::with_capacity(values);
        let mut buf = vec![0u8; 1 << 16];
        while embeddings.len() < values {
            let n = (values - embeddings.len()).min(buf.len() / 4) * 4;
            f.read_exact(&mut buf[..n])
                .map_err(|e| bad(format!("cannot read the embeddings: {e}")))?;
            embeddings.extend(
                buf[..n]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Self::from_parts(identity, items, embeddings)
            .map_err(|e| bad(e.to_string().replace("gallery add: ", "")))
    }

    /// A gallery of these items and embeddings (row-major, moved in, not copied), with the
    /// checks of [`add`](Self::add).
    pub fn from_parts(
        identity: GalleryIdentity,
        items: Vec<String>,
        embeddings: Vec<f32>,
    ) -> Result<Self> {
        let mut g = Self::new(identity);
        let d = g.dim();
        if embeddings.len() != items.len() * d {
            return Err(ModelError::Config(format!(
                "gallery add: {} names but {} values (dimension {d})",
                items.len(),
                embeddings.len()
            )));
        }
        {
            let mut seen = HashSet::with_capacity(items.len());
            if let Some(n) = items.iter().find(|n| !seen.insert(n.as_str())) {
                return Err(ModelError::Config(format!(
                    "gallery add: {n} is listed twice"
                )));
            }
        }
        let sq: Vec<f32> = embeddings
            .par_chunks_exact(d.max(1))
            .map(|row| row.iter().map(|x| x * x).sum())
            .collect();
        // Σx² is finite exactly when every value is (and none beyond ±1.8e19).
        if let Some(i) = sq.iter().position(|v: &f32| !v.is_finite()) {
            return Err(ModelError::Config(format!(
                "gallery add: the embedding of {} is not finite",
                items[i]
            )));
        }
        g.items = items;
        g.sq_norms = sq;
        g.embeddings = embeddings;
        Ok(g)
    }
}

/// The k smallest (key, row) pairs seen, sorted; ties keep the earlier row.
struct TopK {
    k: usize,
    best: Vec<(f32, usize)>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            best: Vec::with_capacity(k + 1),
        }
    }

    #[inline]
    fn offer(&mut self, key: f32, row: usize) {
        if self.k == 0 {
            return;
        }
        if self.best.len() == self.k {
            let &(worst, wrow) = self.best.last().expect("k > 0");
            if key > worst || (key == worst && row > wrow) || key.is_nan() {
                return;
            }
            self.best.pop();
        }
        let at = self
            .best
            .partition_point(|&(b, r)| b < key || (b == key && r < row));
        self.best.insert(at, (key, row));
    }
}
