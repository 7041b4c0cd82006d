//! Checkpoints: everything a run needs to continue exactly where it stopped, in
//! `output_dir/checkpoint-{step}/` as transformers lays it out:
//!
//! | file | what |
//! |---|---|
//! | `adapter_config.json`, `adapter_model.safetensors` (or `model.safetensors`) | what was trained, in the format users load (PEFT adapter / HF model) |
//! | `trainable.safetensors` | the trainable tensors under their exact names, for resuming |
//! | `optimizer.safetensors` | AdamW's moments (`{name}.exp_avg`, `{name}.exp_avg_sq`) |
//! | `trainer_state.json` | step, epoch and position in the data, the schedule, the seed, the history |
//!
//! The data order and the dropout masks are functions of the seed and the position (see
//! `data::batch::Batcher` and `peft::DropoutRng`), so seed + position is the whole RNG state.
//! A checkpoint is written into a temporary directory beside the final one and renamed into
//! place: a crash never leaves a half-written `checkpoint-{step}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::args::TrainingArgs;
use super::history::History;
use crate::model::load::save_safetensors;
use crate::{Error, Result};

/// Where a run is and how it got there (`trainer_state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// The current epoch (from 0).
    pub epoch: u64,
    /// Micro-batches of the current epoch already consumed.
    pub batch_in_epoch: usize,
    /// Micro-batches per epoch (checked on resume).
    pub batches_per_epoch: usize,
    /// Non-padding tokens seen.
    pub tokens_seen: usize,
    /// The run's arguments.
    pub args: TrainingArgs,
    /// The log so far.
    pub history: History,
}

/// The name of the checkpoint directory of `step`.
pub fn checkpoint_name(step: usize) -> String {
    format!("checkpoint-{step}")
}

/// Writes a checkpoint into `output_dir/checkpoint-{step}` atomically; `save_trained` writes the
/// user-facing files into the directory it is given. Returns the final path.
pub fn write_checkpoint(
    output_dir: &Path,
    state: &TrainerState,
    trainable: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    save_trained: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
    let name = checkpoint_name(state.global_step);
    let fin = output_dir.join(&name);
    let tmp = output_dir.join(format!(".{name}.tmp{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_trained(&tmp)?;
        save_safetensors(trainable, &tmp.join("trainable.safetensors"))?;
        save_safetensors(optimizer, &tmp.join("optimizer.safetensors"))?;
        let json = serde_json::to_string_pretty(state)
            .map_err(|e| Error::Input(format!("trainer_state.json: {e}")))?;
        let p = tmp.join("trainer_state.json");
        std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
        if fin.exists() {
            // Saving the same step again: move the old one aside, then drop it.
            let old = output_dir.join(format!(".{name}.old{}", std::process::id()));
            std::fs::rename(&fin, &old).map_err(|e| Error::io(&fin, e))?;
            std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, &fin).map_err(|e| Error::io(&fin, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|_| fin)
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// `trainer_state.json`.
    pub state: TrainerState,
    /// `trainable.safetensors`.
    pub trainable: BTreeMap<String, Tensor>,
    /// `optimizer.safetensors`.
    pub optimizer: BTreeMap<String, Tensor>,
}

/// Reads the checkpoint in `dir` onto `device`; errors name the file.
pub fn read_checkpoint(dir: &Path, device: &Device) -> Result<Checkpoint> {
    let sp = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: TrainerState = serde_json::from_str(&text)
        .map_err(|e| Error::format(&sp, format!("not a trainer state: {e}")))?;
    let load = |file: &str| -> Result<BTreeMap<String, Tensor>> {
        let p = dir.join(file);
        if !p.exists() {
            return Err(Error::NotFound(format!("{}: missing", p.display())));
        }
        let map = candle_core::safetensors::load(&p, device)
            .map_err(|e| Error::format(&p, format!("cannot read safetensors: {e}")))?;
        Ok(map.into_iter().collect())
    };
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        trainable: load("trainable.safetensors")?,
        optimizer: load("optimizer.safetensors")?,
    })
}

/// The checkpoints in `output_dir`, by step.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(output_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(output_dir, e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if entry.path().join("trainer_state.json").exists() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest checkpoint in `output_dir`, if any (transformers' `get_last_checkpoint`).
pub fn latest_checkpoint(output_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list_checkpoints(output_dir)?.pop().map(|(_, p)| p))
}

/// Deletes the oldest checkpoints so that at most `limit` remain.
pub fn rotate_checkpoints(output_dir: &Path, limit: usize) -> Result<()> {
    let all = list_checkpoints(output_dir)?;
    if all.len() > limit {
        for (_, p) in &all[..all.len() - limit] {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

/// Checks early that `dir` can be created and written, so that a run does not fail at its
/// first save; the error names the directory.
pub fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(e.kind(), format!("output_dir is not writable: {e}")),
    })?;
    let probe = dir.join(format!(".write-test{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(e.kind(), format!("output_dir is not writable: {e}")),
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
