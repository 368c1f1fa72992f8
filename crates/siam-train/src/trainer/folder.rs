//! The run folder: its lock, `metrics.jsonl`, and the checkpoints.

use super::*;

/// A run folder in use: `.lock` holds the owner's process id while a trainer writes the
/// folder, so a second `train`/`resume` on it stops instead of interleaving writes. A lock left
/// by a killed process (its id no longer running) is taken over.
pub(super) struct RunLock(PathBuf);

impl RunLock {
    pub(super) fn acquire(dir: &Path) -> Result<Self> {
        let p = dir.join(".lock");
        for _ in 0..2 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(mut f) => {
                    let _ = f.write_all(std::process::id().to_string().as_bytes());
                    return Ok(Self(p));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(&p).unwrap_or_default();
                    let alive = owner.trim().parse::<u32>().is_ok_and(|pid| {
                        pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
                    });
                    if alive {
                        return Err(TrainError::run(
                            dir,
                            format!(
                                "the run folder is in use by process {} (or remove {} if that process is not siam)",
                                owner.trim(),
                                p.display()
                            ),
                        ));
                    }
                    let _ = std::fs::remove_file(&p);
                }
                Err(e) => {
                    return Err(TrainError::run(
                        &p,
                        format!("cannot lock the run folder: {e}"),
                    ));
                }
            }
        }
        Err(TrainError::run(&p, "cannot lock the run folder"))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn checkpoint_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

/// Checkpoint files of a run folder, oldest first.
pub fn checkpoints(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(checkpoint_dir(dir))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && n.ends_with(".safetensors"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(super) fn append_record(dir: &Path, kind: &str, rec: &impl serde::Serialize) -> Result<()> {
    let p = dir.join("metrics.jsonl");
    let mut v = serde_json::to_value(rec).map_err(|e| TrainError::run(&p, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), kind.into());
    }
    let mut line = v.to_string();
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(|e| TrainError::run(&p, e.to_string()))?;
    f.write_all(line.as_bytes())
        .map_err(|e| TrainError::run(&p, e.to_string()))
}

/// Temporary files a killed process left behind (`.NAME.PID.tmp`, never read by siam).
pub(super) fn remove_stale_temp_files(dir: &Path) {
    for d in [dir.to_path_buf(), checkpoint_dir(dir)] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// Sets `model`'s weights to those a checkpoint holds (its `model.*` tensors; the loss's
/// variables and the optimizer's state are left out), for looking at a run epoch by epoch.
pub fn load_checkpoint_weights(path: &Path, model: &SiameseModel) -> Result<()> {
    let tensors = candle_core::safetensors::load(path, model.device())
        .map_err(|e| TrainError::run(path, e.to_string()))?;
    set_model_weights(path, &tensors, model)
}

fn set_model_weights(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    model: &SiameseModel,
) -> Result<()> {
    for (name, var) in model.varmap().data().lock().expect("var map lock").iter() {
        let t = tensors
            .get(&format!("model.{name}"))
            .ok_or_else(|| TrainError::run(path, format!("missing tensor model.{name}")))?;
        var.set(t)?;
    }
    Ok(())
}

pub(super) fn load_checkpoint(
    path: &Path,
    model: &SiameseModel,
    loss_vars: &candle_nn::VarMap,
    opt: &mut Optimizer,
) -> Result<Progress> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::run(path, e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| TrainError::run(path, format!("not a checkpoint: {e}")))?;
    let meta = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(CHECKPOINT_KEY))
        .ok_or_else(|| TrainError::run(path, "not a siam checkpoint (no metadata)"))?;
    let progress: Progress = serde_json::from_str(meta)
        .map_err(|e| TrainError::run(path, format!("bad checkpoint metadata: {e}")))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, model.device())
        .map_err(|e| TrainError::run(path, e.to_string()))?;
    let mut opt_state = BTreeMap::new();
    set_model_weights(path, &tensors, model)?;
    for (name, var) in loss_vars.data().lock().expect("var map lock").iter() {
        let t = tensors
            .get(&format!("loss.{name}"))
            .ok_or_else(|| TrainError::run(path, format!("missing tensor loss.{name}")))?;
        var.set(t)?;
    }
    for (k, t) in tensors {
        if let Some(rest) = k.strip_prefix("opt.") {
            opt_state.insert(rest.to_string(), t);
        }
    }
    opt.load_state(&opt_state, progress.optimizer_steps)?;
    Ok(progress)
}
