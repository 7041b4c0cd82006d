//! Composing a training set from several datasets, as impruver's dataset configs do: each source
//! with its own limit, sampling and field mapping, merged in order, deduplicated, and split into
//! train and validation with a seed.
//!
//! ```text
//! for each source, in order:  read -> drop duplicates (of itself and of what earlier sources kept)
//!                             -> take `limit` (first, or a seeded random choice)
//! all kept records            -> validation = a seeded random choice of n_val, train = the rest
//! ```
//!
//! Deduplication comes before the limit, so a limit counts distinct records. The split draws
//! `n_val` indices without replacement (`rand::seq::index::sample`) from `StdRng::seed_from_u64(seed)`;
//! both parts keep the merged order. The same sources, options and rand version give the same
//! split. `validation_fraction` rounds up, as `datasets`' `train_test_split(test_size=0.1)` does.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::records::{
    load_records_with, save_jsonl, Conversation, LoadOptions, RecordFormat,
};
use crate::error::{Error, Result};

/// Which records of a source a limit keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// The first `limit` records.
    #[default]
    First,
    /// `limit` records chosen uniformly with this seed, kept in file order.
    Random {
        /// The seed of the choice.
        seed: u64,
    },
}

/// One dataset file and how much of it to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetSource {
    /// A `.json` or `.jsonl` file (see [`crate::data::records`]).
    pub path: PathBuf,
    /// At most this many records (after deduplication); `None` takes all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Which records the limit keeps.
    #[serde(default)]
    pub sample: Sampling,
    /// Field renames before format detection (`"question" -> "prompt"`).
    #[serde(default)]
    pub field_map: BTreeMap<String, String>,
    /// Forces the record format instead of detecting it.
    #[serde(default)]
    pub format: Option<RecordFormat>,
}

impl DatasetSource {
    /// All of `path`, formats detected.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            limit: None,
            sample: Sampling::First,
            field_map: BTreeMap::new(),
            format: None,
        }
    }

    /// Takes at most `limit` records.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Chooses which records the limit keeps.
    pub fn with_sampling(mut self, sample: Sampling) -> Self {
        self.sample = sample;
        self
    }

    /// Renames the field `from` to `to`.
    pub fn with_field(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.field_map.insert(from.into(), to.into());
        self
    }

    /// Forces `format`.
    pub fn with_format(mut self, format: RecordFormat) -> Self {
        self.format = Some(format);
        self
    }
}

/// How duplicates are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dedup {
    /// Keep everything.
    None,
    /// Drop records whose roles and contents are identical to an earlier one.
    #[default]
    Exact,
    /// As `Exact`, after collapsing whitespace runs to one space, trimming and lowercasing.
    Normalized,
}

/// How the sources are merged and split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ComposeOptions {
    /// Duplicate detection (the first occurrence is kept).
    pub dedup: Dedup,
    /// The share of records for validation, in `[0, 1)`, rounded up.
    pub validation_fraction: Option<f64>,
    /// Or the number of records for validation (not both).
    pub validation_size: Option<usize>,
    /// The seed of the split.
    pub seed: u64,
}

/// What happened to one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceReport {
    /// The file.
    pub path: PathBuf,
    /// Records in the file.
    pub read: usize,
    /// Records dropped as duplicates.
    pub duplicates: usize,
    /// Records kept (after deduplication and the limit).
    pub taken: usize,
}

/// Per-source counts and the split sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeReport {
    /// One row per source, in order.
    pub sources: Vec<SourceReport>,
    /// Training records.
    pub train: usize,
    /// Validation records.
    pub validation: usize,
}

impl fmt::Display for ComposeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .sources
            .iter()
            .map(|s| s.path.display().to_string())
            .collect();
        let w = names
            .iter()
            .map(|n| n.len())
            .max()
            .unwrap_or(0)
            .max("source".len());
        writeln!(
            f,
            "{:<w$}  {:>8}  {:>10}  {:>8}",
            "source", "read", "duplicates", "taken"
        )?;
        for (s, name) in self.sources.iter().zip(&names) {
            writeln!(
                f,
                "{name:<w$}  {:>8}  {:>10}  {:>8}",
                s.read, s.duplicates, s.taken
            )?;
        }
        write!(f, "train {}, validation {}", self.train, self.validation)
    }
}

/// The composed dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Composed {
    /// Training records, in merged order.
    pub train: Vec<Conversation>,
    /// Validation records, in merged order.
    pub validation: Vec<Conversation>,
    /// What each source contributed.
    pub report: ComposeReport,
}

impl Composed {
    /// Writes `train.jsonl` and, when there is validation data, `validation.jsonl` into `dir`
    /// (created if missing), each atomically; returns the files written.
    pub fn write_jsonl(&self, dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut written = Vec::new();
        for (name, part) in [
            ("train.jsonl", &self.train),
            ("validation.jsonl", &self.validation),
        ] {
            if name == "validation.jsonl" && part.is_empty() {
                continue;
            }
            let path = dir.join(name);
            save_jsonl(&path, part)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Reads `sources` in order, deduplicates, applies each limit and splits; see the module docs.
pub fn compose(sources: &[DatasetSource], options: &ComposeOptions) -> Result<Composed> {
    if sources.is_empty() {
        return Err(Error::config(
            "sources",
            "expected at least one dataset source, found none",
        ));
    }
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    let mut rows = Vec::with_capacity(sources.len());
    for src in sources {
        let load = LoadOptions {
            format: src.format,
            field_map: src.field_map.clone(),
        };
        let records = load_records_with(&src.path, &load)?;
        let read = records.len();
        let mut fresh = HashSet::new();
        let unique: Vec<(String, Conversation)> = records
            .into_iter()
            .map(|r| (key(&r, options.dedup), r))
            .filter(|(k, _)| {
                options.dedup == Dedup::None || (!seen.contains(k) && fresh.insert(k.clone()))
            })
            .collect();
        let duplicates = read - unique.len();
        let chosen = choose(unique, src.limit, src.sample);
        rows.push(SourceReport {
            path: src.path.clone(),
            read,
            duplicates,
            taken: chosen.len(),
        });
        for (k, r) in chosen {
            seen.insert(k);
            all.push(r);
        }
    }
    if all.is_empty() {
        return Err(Error::config(
            "sources",
            "no records taken (every limit is 0)",
        ));
    }
    let n_val = validation_count(all.len(), options)?;
    let mut val_idx = vec![false; all.len()];
    let mut rng = StdRng::seed_from_u64(options.seed);
    for i in rand::seq::index::sample(&mut rng, all.len(), n_val) {
        val_idx[i] = true;
    }
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for (r, is_val) in all.into_iter().zip(val_idx) {
        if is_val {
            validation.push(r)
        } else {
            train.push(r)
        }
    }
    let report = ComposeReport {
        sources: rows,
        train: train.len(),
        validation: validation.len(),
    };
    Ok(Composed {
        train,
        validation,
        report,
    })
}

fn choose<T>(items: Vec<T>, limit: Option<usize>, sample: Sampling) -> Vec<T> {
    let Some(limit) = limit.filter(|&l| l < items.len()) else {
        return items;
    };
    match sample {
        Sampling::First => items.into_iter().take(limit).collect(),
        Sampling::Random { seed } => {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut keep = vec![false; items.len()];
            for i in rand::seq::index::sample(&mut rng, items.len(), limit) {
                keep[i] = true;
            }
            items
                .into_iter()
                .zip(keep)
                .filter_map(|(x, k)| k.then_some(x))
                .collect()
        }
    }
}

fn validation_count(n: usize, options: &ComposeOptions) -> Result<usize> {
    let n_val = match (options.validation_fraction, options.validation_size) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "validation_fraction",
                "set either validation_fraction or validation_size, not both",
            ))
        }
        (Some(f), None) if !(0.0..1.0).contains(&f) => {
            return Err(Error::config(
                "validation_fraction",
                format!("expected a value in [0, 1), found {f}"),
            ))
        }
        // The epsilon keeps 100 * 0.07 = 7.000000000000001 at 7.
        (Some(f), None) => (n as f64 * f - 1e-9).ceil() as usize,
        (None, Some(s)) => s,
        (None, None) => 0,
    };
    if n_val > 0 && n_val >= n {
        let field = if options.validation_size.is_some() {
            "validation_size"
        } else {
            "validation_fraction"
        };
        return Err(Error::config(
            field,
            format!("{n_val} validation records would leave no training data ({n} records in all)"),
        ));
    }
    Ok(n_val)
}

/// The deduplication key: roles and contents (or the text), normalized for [`Dedup::Normalized`].
fn key(r: &Conversation, dedup: Dedup) -> String {
    let norm = |s: &str| match dedup {
        Dedup::Normalized => s
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
        _ => s.to_string(),
    };
    match &r.text {
        Some(t) => format!("text\u{1f}{}", norm(t)),
        None => r
            .messages
            .iter()
            .map(|m| format!("{}\u{1f}{}", m.role, norm(&m.content)))
            .collect::<Vec<_>>()
            .join("\u{1e}"),
    }
}
