//! `LoraConfig`, with peft's field names and defaults (peft `tuners/lora/config.py`).
//!
//! ```text
//! LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
//! LoraConfig { r: 16, lora_alpha: 32.0, lora_dropout: 0.05, target_modules: TargetModules::all_linear(), ..Default::default() }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which linear layers get adapters (`target_modules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    /// Module names; a layer matches when its path equals a name or ends with `.name`
    /// (`"q_proj"` matches `model.layers.3.self_attn.q_proj`).
    Names(Vec<String>),
    /// A regular expression that must match the whole module path (peft's `re.fullmatch`);
    /// `"all-linear"` ([`ALL_LINEAR`]) is special.
    Pattern(String),
}

/// peft's `"all-linear"`: every linear layer except the output layer (`lm_head`).
pub const ALL_LINEAR: &str = "all-linear";

impl TargetModules {
    /// `"all-linear"`.
    pub fn all_linear() -> Self {
        TargetModules::Pattern("all-linear".into())
    }

    /// A list of names.
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        TargetModules::Names(names.into_iter().map(Into::into).collect())
    }

    /// Whether the linear layer at `path` is targeted.
    pub fn matches(&self, path: &str) -> Result<bool> {
        Ok(match self {
            TargetModules::Names(names) => names.iter().any(|n| suffix_match(path, n)),
            TargetModules::Pattern(p) if p == ALL_LINEAR => path != "lm_head",
            TargetModules::Pattern(p) => full_regex(p)?.is_match(path),
        })
    }
}

/// `path == key` or `path` ends with `.key`: peft's rule for module names.
pub fn suffix_match(path: &str, key: &str) -> bool {
    path == key || path.ends_with(&format!(".{key}"))
}

fn full_regex(p: &str) -> Result<regex::Regex> {
    regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
        Error::config(
            "target_modules",
            format!("`{p}` is not a valid regular expression: {e}"),
        )
    })
}

/// Which biases train (`bias`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoraBias {
    /// No bias trains (the default).
    #[default]
    None,
    /// Every bias of the model trains.
    All,
    /// The biases of the adapted layers train.
    LoraOnly,
}

/// How the adapters start (`init_lora_weights`). In JSON as peft writes it: `true`, `false`,
/// `"gaussian"`, `"pissa"`, `"pissa_niter_4"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitLoraWeights {
    /// peft's default (`True`): A ~ kaiming-uniform with a = √5, i.e. U(−1/√in, 1/√in); B = 0,
    /// so the adapted model starts equal to the base.
    #[default]
    Default,
    /// A ~ N(0, 1/r²), B = 0.
    Gaussian,
    /// A and B both random (`False`): the adapted model differs from the base at once (tests).
    Random,
    /// PiSSA (Meng et al. 2024): A and B from the r largest singular triplets of W, and the base
    /// becomes the residual `W − s·B·A` (see [`crate::peft::pissa`]). Dense bases only.
    Pissa,
    /// PiSSA with a randomized SVD of N subspace iterations (`"pissa_niter_N"`): fast on large
    /// weights, approximate where the spectrum is flat.
    PissaNiter(usize),
}

impl InitLoraWeights {
    /// peft's JSON value.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            InitLoraWeights::Default => true.into(),
            InitLoraWeights::Random => false.into(),
            InitLoraWeights::Gaussian => "gaussian".into(),
            InitLoraWeights::Pissa => "pissa".into(),
            InitLoraWeights::PissaNiter(n) => format!("pissa_niter_{n}").into(),
        }
    }

    /// From peft's JSON value (`true`, `false` or a name; `"true"`/`"false"` also accepted).
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "{v} is not supported (true, false, \"gaussian\", \"pissa\", \"pissa_niter_N\")"
            )
        };
        Ok(match v {
            serde_json::Value::Bool(true) => InitLoraWeights::Default,
            serde_json::Value::Bool(false) => InitLoraWeights::Random,
            serde_json::Value::String(s) => match s.as_str() {
                "true" => InitLoraWeights::Default,
                "false" => InitLoraWeights::Random,
                "gaussian" => InitLoraWeights::Gaussian,
                "pissa" => InitLoraWeights::Pissa,
                s => match s.strip_prefix("pissa_niter_").map(str::parse::<usize>) {
                    Some(Ok(n)) => InitLoraWeights::PissaNiter(n),
                    _ => return Err(bad()),
                },
            },
            _ => return Err(bad()),
        })
    }

    /// PiSSA, exact or randomized.
    pub fn is_pissa(self) -> bool {
        matches!(
            self,
            InitLoraWeights::Pissa | InitLoraWeights::PissaNiter(_)
        )
    }
}

impl Serialize for InitLoraWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for InitLoraWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// peft's `LoraConfig` for causal language models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank r (8).
    pub r: usize,
    /// α (8); the update is scaled by α/r (α/√r with `use_rslora`).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input during training (0.0).
    pub lora_dropout: f64,
    /// Which layers get adapters (peft's default for Llama: `["q_proj", "v_proj"]`).
    pub target_modules: TargetModules,
    /// Which biases train.
    pub bias: LoraBias,
    /// Rank-stabilised scaling α/√r (Kalajdzievski 2023).
    pub use_rslora: bool,
    /// How the adapters start.
    pub init_lora_weights: InitLoraWeights,
    /// Only these layer indices get adapters (`None`: all).
    pub layers_to_transform: Option<Vec<usize>>,
    /// Extra modules trained in full and saved with the adapter (peft's `ModulesToSaveWrapper`):
    /// a name matches every module whose path ends with it (`"lm_head"`, `"embed_tokens"`,
    /// `"norm"` = every RMSNorm). See [`crate::peft::modules_to_save`].
    pub modules_to_save: Option<Vec<String>>,
    /// With tied embeddings and `lm_head` or `embed_tokens` in `modules_to_save`: one trainable
    /// copy shared by both (`true`), or an untied copy of the named one only (`false`, peft's
    /// default, with a warning).
    pub ensure_weight_tying: bool,
    /// Per-module rank overrides: key (a module name or a regex on the path) → r.
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-module α overrides: key → α.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// DoRA (weight-decomposed LoRA, Liu et al. 2024).
    pub use_dora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::names(["q_proj", "v_proj"]),
            bias: LoraBias::None,
            use_rslora: false,
            init_lora_weights: InitLoraWeights::Default,
            layers_to_transform: None,
            modules_to_save: None,
            ensure_weight_tying: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            use_dora: false,
        }
    }
}

impl LoraConfig {
    /// `r`, `lora_alpha` and the target modules; the rest default.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        Self {
            r,
            lora_alpha,
            target_modules,
            ..Self::default()
        }
    }

    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::config("r", "must be at least 1, got 0"));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Err(Error::config(
                "lora_alpha",
                format!("must be a positive number, got {}", self.lora_alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::config(
                "lora_dropout",
                format!("must be in [0, 1), got {}", self.lora_dropout),
            ));
        }
        match &self.target_modules {
            TargetModules::Names(n) if n.is_empty() => {
                return Err(Error::config(
                    "target_modules",
                    "is an empty list; name modules (\"q_proj\"), give a regex or \"all-linear\"",
                ))
            }
            TargetModules::Pattern(p) if p != ALL_LINEAR => {
                full_regex(p)?;
            }
            _ => {}
        }
        if let Some((k, _)) = self.rank_pattern.iter().find(|(_, r)| **r == 0) {
            return Err(Error::config(
                "rank_pattern",
                format!("rank for `{k}` must be at least 1, got 0"),
            ));
        }
        if let Some(m) = &self.modules_to_save {
            if let Some(bad) = m.iter().find(|n| n.is_empty() || n.starts_with('.')) {
                return Err(Error::config(
                    "modules_to_save",
                    format!("`{bad}` is not a module name (like \"lm_head\" or \"embed_tokens\")"),
                ));
            }
        }
        if let InitLoraWeights::PissaNiter(0) = self.init_lora_weights {
            return Err(Error::config(
                "init_lora_weights",
                "\"pissa_niter_0\": the number of subspace iterations must be at least 1 \
                 (or use \"pissa\" for the exact SVD)",
            ));
        }
        if self.init_lora_weights.is_pissa() && self.use_dora {
            return Err(Error::config(
                "init_lora_weights",
                "PiSSA with use_dora is not supported: DoRA's magnitude would be taken from the \
                 residual weight; use one of them",
            ));
        }
        Ok(())
    }

    /// Rank and α for the layer at `path`: `rank_pattern`/`alpha_pattern` override by key (a
    /// key matches as a module-name suffix or as a regex on the whole path).
    pub fn rank_and_alpha(&self, path: &str) -> (usize, f64) {
        // peft: `re.match(rf"(.*\.)?({key})$", path)`, the first key that matches.
        let find = |key: &String| {
            full_regex(&format!("(.*\\.)?(?:{key})")).is_ok_and(|re| re.is_match(path))
        };
        let r = self
            .rank_pattern
            .iter()
            .find(|(k, _)| find(k))
            .map_or(self.r, |(_, r)| *r);
        let a = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| find(k))
            .map_or(self.lora_alpha, |(_, a)| *a);
        (r, a)
    }

    /// The scaling of the update: α/r, or α/√r with `use_rslora`.
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }

    /// Whether the layer at `path` gets an adapter: targeted and, with `layers_to_transform`,
    /// in one of those layers.
    pub fn targets(&self, path: &str) -> Result<bool> {
        if !self.target_modules.matches(path)? {
            return Ok(false);
        }
        Ok(match &self.layers_to_transform {
            None => true,
            Some(layers) => layer_index(path).is_some_and(|i| layers.contains(&i)),
        })
    }
}

/// `model.layers.7.mlp.up_proj` → 7.
pub fn layer_index(path: &str) -> Option<usize> {
    let rest = path
        .split(".layers.")
        .nth(1)
        .or_else(|| path.strip_prefix("layers."))?;
    rest.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_rules() {
        let t = TargetModules::names(["q_proj", "v_proj"]);
        assert!(t.matches("model.layers.0.self_attn.q_proj").unwrap());
        assert!(!t.matches("model.layers.0.self_attn.k_proj").unwrap());
        assert!(!t.matches("model.layers.0.self_attn.xq_proj").unwrap());
        let all = TargetModules::all_linear();
        assert!(all.matches("model.layers.0.mlp.down_proj").unwrap());
        assert!(!all.matches("lm_head").unwrap());
        let re = TargetModules::Pattern(r".*\.mlp\.(gate|up)_proj".into());
        assert!(re.matches("model.layers.1.mlp.up_proj").unwrap());
        assert!(!re.matches("model.layers.1.mlp.down_proj").unwrap());
        assert_eq!(layer_index("model.layers.17.mlp.up_proj"), Some(17));
    }

    #[test]
    fn validation_names_the_field() {
        let e = LoraConfig {
            r: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("`r`"), "{e}");
        let e = LoraConfig {
            target_modules: TargetModules::Pattern("(".into()),
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("target_modules") && e.contains("regular expression"),
            "{e}"
        );
        let e = LoraConfig {
            lora_dropout: 1.5,
            ..Default::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("lora_dropout"), "{e}");
    }

    #[test]
    fn patterns_and_scaling() {
        let mut c = LoraConfig::new(8, 16.0, TargetModules::all_linear());
        c.rank_pattern.insert("down_proj".into(), 4);
        c.alpha_pattern.insert("down_proj".into(), 2.0);
        assert_eq!(c.rank_and_alpha("model.layers.0.mlp.down_proj"), (4, 2.0));
        assert_eq!(c.rank_and_alpha("model.layers.0.mlp.up_proj"), (8, 16.0));
        assert_eq!(c.scaling(8, 16.0), 2.0);
        c.use_rslora = true;
        assert!((c.scaling(16, 16.0) - 4.0).abs() < 1e-12);
    }
}
