//! A Hugging Face tokenizer directory, read and written: `tokenizer.json` (the `tokenizers`
//! crate's format), `tokenizer_config.json` (`bos_token`, `eos_token`, `add_bos_token`,
//! `chat_template`), `special_tokens_map.json` and `chat_template.jinja`, with transformers'
//! precedence between them: [`Tokenizer::from_file`] and [`Tokenizer::save`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use serde_json::Value as Json;

use super::Tokenizer;
use crate::error::{Error, Result};
use crate::fs::write_bytes_atomic;
use crate::model::chat_template::ChatTemplate;

impl Tokenizer {
    /// Loads `tokenizer.json`, and `tokenizer_config.json` next to it if present (for
    /// `chat_template`, `bos_token`, `eos_token`, `add_bos_token`; `special_tokens_map.json`
    /// fills in missing `bos_token`/`eos_token`, and a `chat_template.jinja` file overrides the
    /// config's template, as in transformers).
    ///
    /// Without `add_bos_token` in the config, BOS is added when the tokenizer.json's
    /// post-processor adds it.
    pub fn from_file(tokenizer_json: impl AsRef<Path>) -> Result<Self> {
        let path = tokenizer_json.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_str(&text)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        let dir = path.parent().unwrap_or(Path::new("."));

        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_opt(&config_path)?;
        let map_path = dir.join("special_tokens_map.json");
        let map = read_json_opt(&map_path)?;
        let token = |field: &str| -> Result<Option<(String, PathBuf)>> {
            if let Some(c) = &config {
                if let Some(t) = token_field(c, &config_path, field)? {
                    return Ok(Some((t, config_path.clone())));
                }
            }
            if let Some(m) = &map {
                if let Some(t) = token_field(m, &map_path, field)? {
                    return Ok(Some((t, map_path.clone())));
                }
            }
            Ok(None)
        };
        let (bos_token, bos_token_id) = resolve_token(&inner, token("bos_token")?, "bos_token")?;
        let (eos_token, eos_token_id) = resolve_token(&inner, token("eos_token")?, "eos_token")?;

        let add_bos = match config.as_ref().and_then(|c| c.get("add_bos_token")) {
            None | Some(Json::Null) => match bos_token_id {
                // What the post-processor does is what transformers does.
                Some(bos) => inner
                    .encode("", true)
                    .map(|enc| enc.get_ids().first() == Some(&bos))
                    .unwrap_or(false),
                None => false,
            },
            Some(Json::Bool(b)) => *b,
            Some(v) => {
                return Err(Error::format(
                    &config_path,
                    format!("field `add_bos_token`: expected a bool, found {v}"),
                ))
            }
        };
        if add_bos && bos_token_id.is_none() {
            return Err(Error::format(
                &config_path,
                "field `add_bos_token` is true but no `bos_token` is set",
            ));
        }

        let jinja_path = dir.join("chat_template.jinja");
        let template_source = if jinja_path.is_file() {
            let src =
                std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?;
            Some((src, jinja_path))
        } else {
            match &config {
                Some(c) => chat_template_field(c, &config_path)?.map(|s| (s, config_path.clone())),
                None => None,
            }
        };
        let chat_template = match template_source {
            Some((src, from)) => Some(
                ChatTemplate::new(src, bos_token.clone(), eos_token.clone())
                    .map_err(|e| Error::format(&from, format!("field `chat_template`: {e}")))?,
            ),
            None => None,
        };

        Ok(Self {
            inner,
            plain: OnceLock::new(),
            bos_token,
            bos_token_id,
            eos_token,
            eos_token_id,
            add_bos,
            chat_template,
            source: path.to_path_buf(),
        })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (`chat_template`, `bos_token`,
    /// `eos_token`, `add_bos_token`, `tokenizer_class = PreTrainedTokenizerFast`) into `dir`,
    /// creating it, so that transformers' `AutoTokenizer.from_pretrained(dir)` and
    /// [`Tokenizer::from_file`] load the same tokenizer. Each file is written to a temporary
    /// name and renamed, so a crash never leaves half a file.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = self.inner.to_string(true).map_err(|e| {
            Error::Tokenizer(format!("{}: cannot serialize: {e}", self.source.display()))
        })?;
        write_bytes_atomic(&dir.join("tokenizer.json"), json)?;

        let mut config = serde_json::Map::new();
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        config.insert("bos_token".into(), self.bos_token.clone().into());
        config.insert("eos_token".into(), self.eos_token.clone().into());
        config.insert("add_bos_token".into(), self.add_bos.into());
        config.insert("add_eos_token".into(), false.into());
        // llama.cpp does not clean up spaces before punctuation for these models; neither do we.
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        if let Some(t) = &self.chat_template {
            config.insert("chat_template".into(), t.source().into());
        }
        let text = serde_json::to_string_pretty(&Json::Object(config)).map_err(|e| {
            Error::Tokenizer(format!("cannot serialize tokenizer_config.json: {e}"))
        })?;
        write_bytes_atomic(&dir.join("tokenizer_config.json"), text)
    }
}

/// Parses `path` as JSON if it exists.
fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// A special-token field: a string, an AddedToken object `{"content": ...}`, or null.
fn token_field(config: &Json, path: &Path, field: &str) -> Result<Option<String>> {
    match config.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Object(o)) => match o.get("content") {
            Some(Json::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::format(
                path,
                format!("field `{field}`: expected an object with a string `content`"),
            )),
        },
        Some(v) => Err(Error::format(
            path,
            format!("field `{field}`: expected a string or {{\"content\": ...}}, found {v}"),
        )),
    }
}

/// Looks a configured special token up in the vocabulary.
fn resolve_token(
    inner: &tokenizers::Tokenizer,
    token: Option<(String, PathBuf)>,
    field: &str,
) -> Result<(Option<String>, Option<u32>)> {
    match token {
        None => Ok((None, None)),
        Some((t, from)) => match inner.token_to_id(&t) {
            Some(id) => Ok((Some(t), Some(id))),
            None => Err(Error::format(
                from,
                format!("field `{field}`: token {t:?} is not in the vocabulary of tokenizer.json"),
            )),
        },
    }
}

/// The `chat_template` field: a string, or transformers' list of `{"name", "template"}` (the
/// one named `default`, else the first).
fn chat_template_field(config: &Json, path: &Path) -> Result<Option<String>> {
    let bad = |what: &str| {
        Error::format(
            path,
            format!("field `chat_template`: expected a string or a list of {{\"name\", \"template\"}}, {what}"),
        )
    };
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(items)) => {
            let named = |name: Option<&str>| {
                items
                    .iter()
                    .find(|it| name.is_none() || it.get("name").and_then(Json::as_str) == name)
            };
            match named(Some("default")).or_else(|| named(None)) {
                None => Ok(None),
                Some(item) => match item.get("template") {
                    Some(Json::String(s)) => Ok(Some(s.clone())),
                    _ => Err(bad("found an entry without a string `template`")),
                },
            }
        }
        Some(v) => Err(bad(&format!("found {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::gguf_bpe::PreStyle;
    use super::super::tests::tiny;
    use super::*;
    use crate::model::chat_template::Message;

    #[test]
    fn save_and_reload_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tiny(PreStyle::from_name(Some("smollm")));
        t.add_bos = true;
        t.save(dir.path()).unwrap();
        let back = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        for text in ["<|im_start|>hi wox 12", "<|im_start|>é"] {
            assert_eq!(
                back.encode(text, true).unwrap(),
                t.encode(text, true).unwrap()
            );
            assert_eq!(
                back.encode_plain(text).unwrap(),
                t.encode_plain(text).unwrap()
            );
        }
        assert_eq!(back.bos_token_id(), Some(0));
        assert_eq!(back.eos_token_id(), Some(2));
        assert!(back.add_bos_token());
        assert_eq!(
            back.chat_template().map(|c| c.source()),
            t.chat_template().map(|c| c.source())
        );
        assert_eq!(
            back.chat_template().and_then(|c| c.bos_token()),
            Some("<|endoftext|>")
        );
        assert_eq!(back.vocab_size(), t.vocab_size());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn config_tokens_may_be_added_token_objects() {
        let dir = tempfile::tempdir().unwrap();
        tiny(PreStyle::Gpt2).save(dir.path()).unwrap();
        let config = r#"{"bos_token": {"content": "<|endoftext|>", "lstrip": false},
            "eos_token": "<|im_end|>", "chat_template": [{"name": "tool_use", "template": "x"},
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}]}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        let t = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(
            (t.bos_token(), t.bos_token_id()),
            (Some("<|endoftext|>"), Some(0))
        );
        assert_eq!(
            (t.eos_token(), t.eos_token_id()),
            (Some("<|im_end|>"), Some(2))
        );
        assert!(!t.add_bos_token());
        assert_eq!(
            t.apply_chat_template(&[Message::user("u")], false).unwrap(),
            "<|endoftext|>u"
        );
    }

    #[test]
    fn malformed_tokenizer_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, "{\"model\": [not json").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Format { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("tokenizer.json"), "{msg}");
    }

    #[test]
    fn bad_config_field_names_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        tiny(PreStyle::Gpt2).save(dir.path()).unwrap();
        let config_path = dir.path().join("tokenizer_config.json");
        std::fs::write(&config_path, r#"{"bos_token": "<nope>"}"#).unwrap();
        let msg = Tokenizer::from_file(dir.path().join("tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("tokenizer_config.json") && msg.contains("bos_token"),
            "{msg}"
        );
        std::fs::write(&config_path, r#"{"chat_template": "{% for %}"}"#).unwrap();
        let msg = Tokenizer::from_file(dir.path().join("tokenizer.json"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("tokenizer_config.json") && msg.contains("line 1"),
            "{msg}"
        );
    }
}
