//! Saving the trainer's whole state into `output_dir/checkpoint-N` and resuming from it exactly
//! (transformers' `save_steps` / `resume_from_checkpoint`); the file format is `checkpoint.rs`'s.

use std::path::{Path, PathBuf};

use super::super::checkpoint::{read_checkpoint, rotate_checkpoints, write_checkpoint};
use super::*;

impl<M: Trainable> Trainer<M> {
    /// Writes `output_dir/checkpoint-{step}` (atomically) and applies `save_total_limit`.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let trainable = self
            .optimizer
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let model = &self.model;
        let path = write_checkpoint(
            &self.args.output_dir,
            &self.state,
            &trainable,
            &self.optimizer.state_tensors(),
            |dir| model.save_trained(dir),
        )?;
        if let Some(limit) = self.args.save_total_limit {
            rotate_checkpoints(&self.args.output_dir, limit)?;
        }
        self.last_checkpoint = Some(path.clone());
        Ok(path)
    }

    /// Continues from the checkpoint in `dir`: the trainable weights, AdamW's moments, the step,
    /// the data position and the history. The run must be the same one: seed, batches per
    /// epoch, gradient accumulation and total steps must agree (the error names the field).
    pub fn resume_from_checkpoint(&mut self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let ck = read_checkpoint(dir, &self.device)?;
        let s = &ck.state;
        let sp = dir.join("trainer_state.json");
        for (field, saved, now) in [
            ("seed", s.args.seed as usize, self.args.seed as usize),
            (
                "gradient_accumulation_steps",
                s.args.gradient_accumulation_steps,
                self.args.gradient_accumulation_steps,
            ),
            (
                "batches_per_epoch",
                s.batches_per_epoch,
                self.train.num_batches(),
            ),
            ("total_steps", s.total_steps, self.state.total_steps),
        ] {
            if saved != now {
                return Err(Error::format(
                    &sp,
                    format!(
                        "`{field}` is {saved} in the checkpoint but {now} in this run; resume \
                         with the same arguments and data"
                    ),
                ));
            }
        }
        let tp = dir.join("trainable.safetensors");
        let mut trainable = ck.trainable;
        for (name, var) in self.optimizer.vars() {
            let t = trainable.remove(name).ok_or_else(|| {
                Error::format(&tp, format!("no tensor `{name}` (a trainable parameter)"))
            })?;
            if t.dims() != var.dims() {
                return Err(Error::Shape {
                    name: format!("{} in {}", name, tp.display()),
                    expected: var.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        if let Some(extra) = trainable.keys().next() {
            return Err(Error::format(
                &tp,
                format!("tensor `{extra}` belongs to no trainable parameter of this model"),
            ));
        }
        self.optimizer.load_state(ck.optimizer, s.global_step)?;
        self.state = ck.state;
        self.state.args = self.args.clone();
        self.last_checkpoint = Some(dir.to_path_buf());
        Ok(())
    }
}
