//! Writing files so that a crash never leaves half of one: every file the library writes
//! (safetensors, `config.json`, tokenizer files, adapter configs, JSONL datasets, SVG figures)
//! goes through [`write_atomic`].
//!
//! The bytes go to a temporary file in the *same directory* (`.{name}.{pid}-{n}.tmp`), which is
//! then renamed over the final name. A rename within one file system is atomic on POSIX and on
//! Windows (`MoveFileEx` with replace), so a reader sees the old file or the new one, never a
//! prefix. A temporary file in another directory (`/tmp`) could sit on another file system,
//! where the rename would fail or become a copy. The counter `n` keeps two threads of one
//! process that write the same file from sharing a temporary name.
//!
//! Checkpoint *directories* (`train::checkpoint`) are made atomic the same way, one level up:
//! a temporary directory renamed into place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// The temporary name next to `path` that [`write_atomic`] writes first.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}

/// Writes `path` atomically: `write` is called with a temporary path in the same directory and
/// must create the file there; on success it is renamed over `path`. On any error the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result =
        write(&tmp).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic`] for bytes already in memory.
pub fn write_bytes_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes.as_ref()).map_err(|e| Error::io(tmp, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces_leaving_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes_atomic(&path, "one").unwrap();
        write_bytes_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(names(dir.path()), vec!["a.json"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes_atomic(&path, "old").unwrap();
        let err = write_atomic(&path, |tmp| {
            std::fs::write(tmp, "half").unwrap();
            Err(Error::Input("disk full".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(dir.path()), vec!["a.json"]);
    }

    #[test]
    fn a_missing_directory_names_the_temporary_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("a.json");
        let msg = write_bytes_atomic(&path, "x").unwrap_err().to_string();
        assert!(msg.contains("nope") && msg.contains(".a.json."), "{msg}");
    }

    #[test]
    fn temporaries_are_distinct() {
        let p = Path::new("d/x.bin");
        let (a, b) = (temp_path(p), temp_path(p));
        assert_ne!(a, b);
        assert_eq!(a.parent(), p.parent());
    }
}
