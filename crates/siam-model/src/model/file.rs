//! The model file: one safetensors file, weights plus the `siam` JSON metadata; loading
//! checks everything and names the file.

use super::*;

impl SiameseModel {
    /// Writes the model as one safetensors file with metadata, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self
            .to_bytes()
            .map_err(|e| ModelError::file(path, format!("cannot serialise: {e}")))?;
        write_atomic(path, &bytes).map_err(|e| ModelError::file(path, format!("cannot write: {e}")))
    }

    /// The bytes of the model file [`SiameseModel::save`] writes (for [`SiameseModel::from_bytes`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let json = serde_json::to_string(&self.meta)
            .map_err(|e| ModelError::Config(format!("metadata: {e}")))?;
        let mut tensors: BTreeMap<String, Tensor> = {
            let data = self.varmap.data().lock().expect("var map lock");
            data.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().to_device(&Device::Cpu)))
                .map(|(k, t)| t.map(|t| (k, t)))
                .collect::<candle_core::Result<_>>()?
        };
        if let Some(p) = self
            .meta
            .input_profile
            .as_ref()
            .filter(|p| p.reference_count > 0)
        {
            tensors.insert(REFERENCE_TENSOR.into(), p.reference_tensor(&Device::Cpu)?);
        }
        let meta = HashMap::from([(METADATA_KEY.to_string(), json)]);
        safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
            .map_err(|e| ModelError::Config(format!("cannot serialise: {e}")))
    }

    /// Loads a model file, checking the metadata, every tensor's presence and shape, and that
    /// every weight is finite.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::load_impl(path.as_ref(), device, true)?.0)
    }

    /// Loads a model file like [`SiameseModel::load`] but accepts NaN or infinite weights,
    /// returning the names of the tensors that hold them (for diagnosis; never for inference).
    pub fn load_allowing_non_finite(
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<(Self, Vec<String>)> {
        Self::load_impl(path.as_ref(), device, false)
    }

    /// Loads a model from the bytes of a model file (for instance `include_bytes!`), with
    /// every check of [`SiameseModel::load`]; `name` stands for the file in error messages.
    pub fn from_bytes(bytes: &[u8], name: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Ok(Self::from_bytes_impl(bytes, name.as_ref(), device, true)?.0)
    }

    fn load_impl(path: &Path, device: &Device, strict: bool) -> Result<(Self, Vec<String>)> {
        let bytes =
            std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
        Self::from_bytes_impl(&bytes, path, device, strict)
    }

    fn from_bytes_impl(
        bytes: &[u8],
        path: &Path,
        device: &Device,
        strict: bool,
    ) -> Result<(Self, Vec<String>)> {
        let mut meta = read_meta(path, bytes)?;
        check_sizes(&meta.config).map_err(|e| ModelError::file(path, e.to_string()))?;
        // Every value must be in the file (2 bytes each at the least, f16): a header that
        // declares a huge network is refused before anything is allocated for it.
        let declared = meta
            .config
            .encoder
            .parameter_count(&meta.config.input)
            .unwrap_or(u64::MAX);
        if declared.saturating_mul(2) > bytes.len() as u64 {
            return Err(ModelError::file(
                path,
                format!(
                    "the metadata declares a {} encoder with {declared} values but the file has {} bytes: truncated or not this model",
                    meta.config.encoder.kind(),
                    bytes.len()
                ),
            ));
        }
        let (encoder, head, varmap) =
            build(&meta.config, device).map_err(|e| ModelError::file(path, e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::file(path, format!("not a safetensors file: {e}")))?;
        let mut non_finite = Vec::new();
        {
            let data = varmap.data().lock().expect("var map lock");
            let mut problems = Vec::new();
            let mut expected: Vec<&String> = data.keys().collect();
            expected.sort();
            for name in &expected {
                match st.tensor(name) {
                    Err(_) => problems.push(format!("missing tensor {name}")),
                    Ok(view) => {
                        let want = data[*name].dims();
                        if view.shape() != want {
                            problems.push(format!(
                                "tensor {name} has shape {:?}, the model needs {want:?}",
                                view.shape()
                            ));
                        }
                    }
                }
            }
            if let Some(p) = meta.input_profile.as_mut() {
                match read_reference(&st, p, meta.embedding_dim) {
                    Ok(r) => p.reference = r,
                    Err(e) => problems.push(e),
                }
            }
            let mut extra: Vec<String> = st
                .names()
                .into_iter()
                .filter(|n| !data.contains_key(*n))
                .filter(|n| !(*n == REFERENCE_TENSOR && meta.input_profile.is_some()))
                .map(String::from)
                .collect();
            extra.sort();
            problems.extend(extra.into_iter().map(|n| format!("unexpected tensor {n}")));
            if !problems.is_empty() {
                return Err(ModelError::file(path, problems.join("; ")));
            }
            let loaded = candle_core::safetensors::load_buffer(bytes, device)
                .map_err(|e| ModelError::file(path, format!("cannot read tensors: {e}")))?;
            for name in expected {
                let t = loaded[name].to_dtype(DType::F32)?;
                let finite: f32 = t.abs()?.max_all()?.to_dtype(DType::F32)?.to_scalar()?;
                if !finite.is_finite() {
                    if !strict {
                        non_finite.push(name.clone());
                        data[name].set(&t)?;
                        continue;
                    }
                    return Err(ModelError::file(
                        path,
                        format!("tensor {name} holds NaN or infinite values"),
                    ));
                }
                data[name].set(&t)?;
            }
        }
        Ok((
            Self {
                backbone_frozen: Default::default(),
                encoder,
                head,
                varmap,
                meta,
                device: device.clone(),
            },
            non_finite,
        ))
    }
}

/// The reference embeddings of an input profile, checked against what the metadata says.
fn read_reference(
    st: &safetensors::SafeTensors<'_>,
    p: &InputProfile,
    dim: usize,
) -> std::result::Result<Vec<f32>, String> {
    if p.reference_count == 0 {
        return Ok(Vec::new());
    }
    let view = st
        .tensor(REFERENCE_TENSOR)
        .map_err(|_| format!("the input profile declares {} reference embeddings but there is no tensor {REFERENCE_TENSOR}", p.reference_count))?;
    if view.shape() != [p.reference_count, dim] || view.dtype() != safetensors::Dtype::F32 {
        return Err(format!(
            "tensor {REFERENCE_TENSOR} is {:?} {:?}, the input profile needs F32 [{}, {dim}]",
            view.dtype(),
            view.shape(),
            p.reference_count
        ));
    }
    let v: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if v.iter().any(|x| !x.is_finite()) {
        return Err(format!(
            "tensor {REFERENCE_TENSOR} holds NaN or infinite values"
        ));
    }
    Ok(v)
}

/// Reads and checks the metadata of a model file's bytes.
fn read_meta(path: &Path, bytes: &[u8]) -> Result<ModelMeta> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| ModelError::file(path, format!("not a safetensors file: {e}")))?;
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| ModelError::file(path, "a safetensors file without siam metadata: not a siam model (train one with `siam train`)"))?;
    let version: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ModelError::file(path, format!("siam metadata is not JSON: {e}")))?;
    let v = version
        .get("format-version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| ModelError::file(path, "siam metadata has no format-version"))?;
    if v > u64::from(FORMAT_VERSION) {
        return Err(ModelError::file(
            path,
            format!(
                "model format version {v} is newer than this build reads ({FORMAT_VERSION}); upgrade siam"
            ),
        ));
    }
    serde_json::from_value(version)
        .map_err(|e| ModelError::file(path, format!("invalid siam metadata: {e}")))
}

/// Reads only the metadata of a model file (fast; no weights are loaded).
pub fn read_model_meta(path: impl AsRef<Path>) -> Result<ModelMeta> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|e| ModelError::file(path, format!("cannot read: {e}")))?;
    read_meta(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Writes `path` through a temporary file in the same folder, fsync and rename: `write`
/// streams the contents (buffered); on any error the temporary file is removed and `path`
/// is left as it was.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let r = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        write(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced (where it can be opened).
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
