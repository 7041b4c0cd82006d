//! The tokenizer: text <-> token ids, special tokens, the chat template, streaming decode.
//!
//! Two sources, one type:
//! - a Hugging Face directory: `tokenizer.json` (run by the `tokenizers` crate) plus
//!   `tokenizer_config.json` for `bos_token`, `eos_token`, `add_bos_token` and `chat_template`;
//! - a GGUF file: the vocabulary, merges and token types under `tokenizer.ggml.*`, rebuilt into a
//!   byte-level BPE `tokenizers::Tokenizer` that tokenizes like llama.cpp does.
//!
//! For GGUF, llama.cpp's `llama-vocab.cpp` is the reference. Its BPE ("gpt2") tokenizer first
//! splits out special tokens, then cuts the text with a list of regexes chosen by
//! `tokenizer.ggml.pre`, each applied to the pieces of the previous one, maps bytes to GPT-2's
//! printable characters and runs the merges by rank. The same steps here are a
//! `Sequence[Split(Isolated)..., ByteLevel]` pre-tokenizer and a `BPE` model. Supported
//! `tokenizer.ggml.pre` values, with llama.cpp's regexes:
//!
//! | `tokenizer.ggml.pre` | pre-tokenizer |
//! |---|---|
//! | `gpt-2`, `gpt2`, `phi-2`, `mpt`, `olmo`, `jais`, `exaone4` | GPT-2 regex |
//! | `smollm`, `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva-7b` | single digits, then GPT-2 regex |
//! | `llama3`, `llama-v3`, `llama-bpe`, `falcon3`, `pixtral` | Llama 3 regex, whole-word lookup before merging, BOS by default |
//! | `dbrx`, `smaug-bpe` | Llama 3 regex |
//! | `qwen2`, `deepseek-r1-qwen`, `stablelm2`, `megrez` | Qwen2 regex (Llama 3's with single digits) |
//! | `falcon` | punctuation runs, GPT-2 regex, three-digit groups |
//! | `default` or missing | llama.cpp's default: punctuation runs, GPT-2 regex, digit runs, three-digit groups |
//!
//! Any other value falls back to the GPT-2 regex (llama.cpp itself refuses unknown values); such
//! a file may tokenize differently from llama.cpp. Only `tokenizer.ggml.model = "gpt2"` is
//! supported; SentencePiece (`"llama"`) GGUFs are an error for now.
//!
//! BOS is never added by the `tokenizers` post-processor: [`Tokenizer::encode`] prepends it
//! itself when asked to add special tokens and the model's config says `add_bos_token`.
//! [`Tokenizer::encode_plain`] does not recognize special-token markup at all, so text from a
//! user cannot forge `<|im_start|>system`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use serde_json::Value as Json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::chat_template::{ChatTemplate, Message};
use super::gguf::GgufFile;
use crate::error::{Error, Result};
pub use crate::model::token_stream::TokenStream;

/// GPT-2's split regex, as in `tokenizers`' ByteLevel and llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`.
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's regex in llama.cpp's spelling (`'[sS]` rather than `(?i:'s)`, which would also
/// match the long s `ſ` under Unicode case folding).
const LLAMA3_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex: Llama 3's with single digits.
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A model's tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` with special-token matching switched off, built on first use.
    plain: OnceLock<tokenizers::Tokenizer>,
    bos_token: Option<String>,
    bos_token_id: Option<u32>,
    eos_token: Option<String>,
    eos_token_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("add_bos_token", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

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

    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata; only
    /// `tokenizer.ggml.model = "gpt2"` (byte-level BPE) is supported. See the module docs for
    /// the `tokenizer.ggml.pre` values.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(Error::format(
                path,
                format!(
                    "GGUF metadata key `tokenizer.ggml.model` is \"{model}\": only \"gpt2\" \
                     (byte-level BPE) tokenizers are supported for now"
                ),
            ));
        }
        let pre = gguf.get_str_opt("tokenizer.ggml.pre")?;
        let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
        let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
        let types = gguf.get_int_array_opt("tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            if t.len() != tokens.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "GGUF metadata key `tokenizer.ggml.token_type`: expected {} entries (one \
                         per token), found {}",
                        tokens.len(),
                        t.len()
                    ),
                ));
            }
        }
        let token_id = |key: &str| -> Result<Option<u32>> {
            match gguf.get_usize_opt(key)? {
                Some(id) if id < tokens.len() => Ok(Some(id as u32)),
                Some(id) => Err(Error::format(
                    path,
                    format!(
                        "GGUF metadata key `{key}`: expected a token id below the vocabulary size \
                         {}, found {id}",
                        tokens.len()
                    ),
                )),
                None => Ok(None),
            }
        };
        let bos_token_id = token_id("tokenizer.ggml.bos_token_id")?;
        let eos_token_id = token_id("tokenizer.ggml.eos_token_id")?;
        let bos_token = bos_token_id.map(|id| tokens[id as usize].to_string());
        let eos_token = eos_token_id.map(|id| tokens[id as usize].to_string());

        let style = PreStyle::from_name(pre);
        let add_bos = gguf
            .get_bool_opt("tokenizer.ggml.add_bos_token")?
            .unwrap_or(style.add_bos_by_default());
        if add_bos && bos_token_id.is_none() {
            return Err(Error::format(
                path,
                "GGUF metadata key `tokenizer.ggml.add_bos_token` is true but \
                 `tokenizer.ggml.bos_token_id` is missing",
            ));
        }
        let mut inner = build_bpe(&tokens, &merges, types.as_deref(), style)
            .map_err(|e| Error::format(path, e))?;
        if let (true, Some(bos)) = (add_bos, &bos_token) {
            // Not used by `encode`, but saved with tokenizer.json so that transformers adds BOS.
            let post = bos_post_processor(bos, bos_token_id.unwrap_or(0))
                .map_err(|e| Error::format(path, e))?;
            inner.with_post_processor(Some(post));
        }
        let chat_template = match gguf.get_str_opt("tokenizer.chat_template")? {
            Some(src) => Some(
                ChatTemplate::new(src, bos_token.clone(), eos_token.clone()).map_err(|e| {
                    Error::format(
                        path,
                        format!("GGUF metadata key `tokenizer.chat_template`: {e}"),
                    )
                })?,
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

    /// Token ids of `text`. Special-token markup in `text` (`<|im_start|>`) becomes the special
    /// token's id. With `add_special_tokens`, BOS is prepended if the model's config says
    /// `add_bos_token` (SmolLM2: no; Llama 3: yes).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let ids = self.encode_with(&self.inner, text)?;
        match (add_special_tokens && self.add_bos, self.bos_token_id) {
            (true, Some(bos)) => Ok(std::iter::once(bos).chain(ids).collect()),
            _ => Ok(ids),
        }
    }

    /// Token ids of `text` with special-token markup tokenized as ordinary text: `<|im_start|>`
    /// in user content becomes `<`, `|`, `im`, ... and can never inject a role marker. Never adds
    /// BOS. (Non-special added tokens, GGUF's user-defined ones, are still matched, as in
    /// llama.cpp with `parse_special = false`.)
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let plain = self.plain.get_or_init(|| {
            let mut t = self.inner.clone();
            t.set_encode_special_tokens(true);
            t
        });
        self.encode_with(plain, text)
    }

    fn encode_with(&self, tk: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
        tk.encode(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .map_err(|e| {
                Error::Tokenizer(format!("{}: encoding failed: {e}", self.source.display()))
            })
    }

    /// The text of `ids`; with `skip_special_tokens`, special tokens (BOS, EOS, `<|im_end|>`,
    /// ...) are left out. Ids outside the vocabulary are skipped, as in `tokenizers`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| {
            Error::Tokenizer(format!("{}: decoding failed: {e}", self.source.display()))
        })
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token` (in its vocabulary spelling, e.g. `Ġthe`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary spelling of token `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The id of [`Tokenizer::bos_token`].
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The end-of-sequence token, if the model has one (SmolLM2-Instruct: `<|im_end|>`).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The id of [`Tokenizer::eos_token`].
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Whether [`Tokenizer::encode`] with `add_special_tokens` prepends BOS.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// The model's chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// The file this tokenizer was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Renders `messages` with the model's chat template (see [`ChatTemplate::render`]); an
    /// error if the model has no template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template (use ChatTemplate::chatml() or another template \
                 explicitly)",
                self.source.display()
            ))
        })?;
        template.render(messages, add_generation_prompt)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
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
        write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;

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
        write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())
    }

    /// An incremental decoder for generation, skipping special tokens (see [`TokenStream`]).
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream::new(self)
    }
}

/// The pre-tokenizer families of llama.cpp's `llm_tokenizer_bpe` that we reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreStyle {
    Gpt2,
    DigitsThenGpt2,
    Llama3 { ignore_merges: bool, add_bos: bool },
    Qwen2,
    Falcon,
    Default,
}

impl PreStyle {
    fn from_name(pre: Option<&str>) -> Self {
        match pre {
            None | Some("default") => Self::Default,
            Some("smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone")
            | Some("minerva-7b") => Self::DigitsThenGpt2,
            Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral") => Self::Llama3 {
                ignore_merges: true,
                add_bos: true,
            },
            Some("dbrx" | "smaug-bpe") => Self::Llama3 {
                ignore_merges: false,
                add_bos: false,
            },
            Some("qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez") => Self::Qwen2,
            Some("falcon") => Self::Falcon,
            // gpt-2, gpt2, phi-2, mpt, olmo, jais, exaone4 ... and, as documented, anything else.
            Some(_) => Self::Gpt2,
        }
    }

    fn add_bos_by_default(self) -> bool {
        matches!(self, Self::Llama3 { add_bos: true, .. })
    }

    fn ignore_merges(self) -> bool {
        matches!(
            self,
            Self::Llama3 {
                ignore_merges: true,
                ..
            }
        )
    }

    fn pre_tokenizer(self) -> std::result::Result<PreTokenizerWrapper, String> {
        let byte_level = |use_regex| ByteLevel::new(false, true, use_regex).into();
        let splits = |regexes: &[&str]| -> std::result::Result<Vec<PreTokenizerWrapper>, String> {
            regexes
                .iter()
                .map(|re| {
                    Split::new(
                        SplitPattern::Regex(re.to_string()),
                        SplitDelimiterBehavior::Isolated,
                        false,
                    )
                    .map(PreTokenizerWrapper::from)
                    .map_err(|e| format!("pre-tokenizer regex `{re}`: {e}"))
                })
                .collect()
        };
        let steps = match self {
            Self::Gpt2 => vec![byte_level(true)],
            Self::DigitsThenGpt2 => vec![Digits::new(true).into(), byte_level(true)],
            Self::Llama3 { .. } => [splits(&[LLAMA3_RE])?, vec![byte_level(false)]].concat(),
            Self::Qwen2 => [splits(&[QWEN2_RE])?, vec![byte_level(false)]].concat(),
            Self::Falcon => {
                let res = [r"[\p{P}\$\+<=>\^~\|`]+", GPT2_RE, "[0-9][0-9][0-9]"];
                [splits(&res)?, vec![byte_level(false)]].concat()
            }
            Self::Default => {
                let res = [
                    r"[\p{P}\$\+<=>\^~\|]+",
                    GPT2_RE,
                    r"\p{N}+",
                    "[0-9][0-9][0-9]",
                ];
                [splits(&res)?, vec![byte_level(false)]].concat()
            }
        };
        Ok(Sequence::new(steps).into())
    }
}

/// Builds a byte-level BPE tokenizer from GGUF-style data: `tokens` in byte-level spelling,
/// `merges` as `"a b"` in rank order, `types` as GGUF token types. Errors name the GGUF key.
fn build_bpe(
    tokens: &[&str],
    merges: &[&str],
    types: Option<&[i64]>,
    style: PreStyle,
) -> std::result::Result<tokenizers::Tokenizer, String> {
    // A token spelled twice keeps its last id, as in llama.cpp's token_to_id.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // llama.cpp: word.find(' ', 1).
            let pos = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            match pos {
                Some(p) => Ok((m[..p].to_string(), m[p + 1..].to_string())),
                None => Err(format!(
                    "GGUF metadata key `tokenizer.ggml.merges[{i}]`: expected two tokens \
                     separated by a space, found {m:?}"
                )),
            }
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    // Checked here, not left to the tokenizers crate: 0.23 panics on a merge whose result is
    // longer than every token of the vocabulary.
    for (i, (a, b)) in merges.iter().enumerate() {
        for part in [a.clone(), b.clone(), format!("{a}{b}")] {
            if !vocab.contains_key(&part) {
                return Err(format!(
                    "GGUF metadata key `tokenizer.ggml.merges[{i}]`: `{a} {b}` needs token {part:?}, \
                     which is not in tokenizer.ggml.tokens"
                ));
            }
        }
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(style.ignore_merges())
        .build()
        .map_err(|e| format!("GGUF metadata key `tokenizer.ggml.merges`: {e}"))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(style.pre_tokenizer()?));
    tk.with_decoder(Some(ByteLevelDecoder::default()));

    // Control (and unknown) tokens are special: matched in `encode`, dropped by
    // `skip_special_tokens`. User-defined tokens are matched too but are ordinary text.
    let (mut special, mut user) = (Vec::new(), Vec::new());
    for (i, t) in types.unwrap_or(&[]).iter().enumerate() {
        let content = tokens[i];
        if content.is_empty() {
            continue;
        }
        match *t {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                special.push(AddedToken::from(content, true).normalized(false))
            }
            TOKEN_TYPE_USER_DEFINED => {
                user.push(AddedToken::from(content, false).normalized(false))
            }
            _ => {}
        }
    }
    tk.add_special_tokens(special)
        .map_err(|e| format!("cannot add the control tokens: {e}"))?;
    tk.add_tokens(user)
        .map_err(|e| format!("cannot add the user-defined tokens: {e}"))?;
    Ok(tk)
}

/// A `TemplateProcessing` that prepends `bos` (Llama 3's `<|begin_of_text|> $A`).
fn bos_post_processor(bos: &str, id: u32) -> std::result::Result<TemplateProcessing, String> {
    let err = |e: String| format!("cannot build a post-processor adding BOS `{bos}`: {e}");
    TemplateProcessing::builder()
        .try_single(vec![bos.to_string(), "$A:0".to_string()])
        .map_err(err)?
        .try_pair(vec![
            bos.to_string(),
            "$A:0".into(),
            format!("{bos}:1"),
            "$B:1".into(),
        ])
        .map_err(err)?
        .special_tokens(vec![(bos.to_string(), id)])
        .build()
        .map_err(|e| err(e.to_string()))
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

/// Writes `bytes` to `path` atomically (temp file + rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::model::load::write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GPT-2's byte -> printable char table (as in `tokenizers` and llama.cpp).
    fn byte_chars() -> Vec<char> {
        let mut bs: Vec<u32> = (b'!'..=b'~')
            .chain(0xA1..=0xAC)
            .chain(0xAE..=0xFF)
            .map(u32::from)
            .collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut table = vec![' '; 256];
        for (b, c) in bs.into_iter().zip(cs) {
            table[b as usize] = char::from_u32(c).unwrap();
        }
        table
    }

    /// A tiny GGUF-like vocabulary: control tokens 0-2, the 256 bytes at 3-258, then `hi`
    /// (259), `Ġw` (260), `Ġwo` (261), `12` (262) from the merges `h i`, `Ġ w`, `Ġw o`, `1 2`.
    fn tiny(style: PreStyle) -> Tokenizer {
        let table = byte_chars();
        let mut tokens: Vec<String> = vec![
            "<|endoftext|>".into(),
            "<|im_start|>".into(),
            "<|im_end|>".into(),
        ];
        tokens.extend(table.iter().map(|c| c.to_string()));
        tokens.extend(["hi", "Ġw", "Ġwo", "12"].map(String::from));
        let mut types = vec![3i64; 3];
        types.extend(std::iter::repeat_n(1, 256 + 4));
        let refs: Vec<&str> = tokens.iter().map(|s| s.as_str()).collect();
        let inner = build_bpe(&refs, &["h i", "Ġ w", "Ġw o", "1 2"], Some(&types), style).unwrap();
        Tokenizer {
            inner,
            plain: OnceLock::new(),
            bos_token: Some("<|endoftext|>".into()),
            bos_token_id: Some(0),
            eos_token: Some("<|im_end|>".into()),
            eos_token_id: Some(2),
            add_bos: false,
            chat_template: Some(ChatTemplate::chatml()),
            source: PathBuf::from("tiny.gguf"),
        }
    }

    /// Id of the single byte `b` in the tiny vocabulary.
    fn byte(b: u8) -> u32 {
        3 + b as u32
    }

    /// Writes a tensor-less GGUF with `metadata` and opens it.
    fn gguf_with(
        dir: &Path,
        metadata: &[(&str, candle_core::quantized::gguf_file::Value)],
    ) -> GgufFile {
        let path = dir.join("t.gguf");
        let mut f = std::fs::File::create(&path).unwrap();
        let md: Vec<(&str, &candle_core::quantized::gguf_file::Value)> =
            metadata.iter().map(|(k, v)| (*k, v)).collect();
        candle_core::quantized::gguf_file::write(&mut f, &md, &[]).unwrap();
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn from_gguf_builds_a_gpt2_tokenizer() {
        use candle_core::quantized::gguf_file::Value as V;
        let strs = |v: &[&str]| V::Array(v.iter().map(|s| V::String(s.to_string())).collect());
        let table = byte_chars();
        let mut tokens = vec!["<|endoftext|>".to_string(), "<tool>".to_string()];
        tokens.extend(table.iter().map(|c| c.to_string()));
        tokens.push("hi".into());
        let refs: Vec<&str> = tokens.iter().map(|s| s.as_str()).collect();
        let mut types = vec![V::I32(3), V::I32(4)];
        types.extend(std::iter::repeat_with(|| V::I32(1)).take(257));
        let dir = tempfile::tempdir().unwrap();
        let gguf = gguf_with(
            dir.path(),
            &[
                ("tokenizer.ggml.model", V::String("gpt2".into())),
                ("tokenizer.ggml.pre", V::String("smollm".into())),
                ("tokenizer.ggml.tokens", strs(&refs)),
                ("tokenizer.ggml.merges", strs(&["h i"])),
                ("tokenizer.ggml.token_type", V::Array(types)),
                ("tokenizer.ggml.bos_token_id", V::U32(0)),
                ("tokenizer.ggml.eos_token_id", V::U32(0)),
                ("tokenizer.ggml.add_bos_token", V::Bool(true)),
                (
                    "tokenizer.chat_template",
                    V::String("{{ bos_token }}!".into()),
                ),
            ],
        );
        let t = Tokenizer::from_gguf(&gguf).unwrap();
        assert_eq!(t.vocab_size(), 259);
        let hi = 258;
        // BOS from add_bos_token; <tool> is user-defined: matched, but not special.
        assert_eq!(t.encode("hi<tool>", true).unwrap(), vec![0, hi, 1]);
        assert_eq!(t.encode_plain("hi<tool>").unwrap(), vec![hi, 1]);
        assert_eq!(t.decode(&[0, hi, 1], true).unwrap(), "hi<tool>");
        assert_eq!(t.apply_chat_template(&[], false).unwrap(), "<|endoftext|>!");
    }

    #[test]
    fn from_gguf_rejects_sentencepiece_and_bad_ids() {
        use candle_core::quantized::gguf_file::Value as V;
        let dir = tempfile::tempdir().unwrap();
        let gguf = gguf_with(
            dir.path(),
            &[("tokenizer.ggml.model", V::String("llama".into()))],
        );
        let msg = Tokenizer::from_gguf(&gguf).unwrap_err().to_string();
        assert!(
            msg.contains("t.gguf") && msg.contains("tokenizer.ggml.model") && msg.contains("llama"),
            "{msg}"
        );

        let gguf = gguf_with(
            dir.path(),
            &[
                ("tokenizer.ggml.model", V::String("gpt2".into())),
                (
                    "tokenizer.ggml.tokens",
                    V::Array(vec![V::String("a".into())]),
                ),
                ("tokenizer.ggml.merges", V::Array(vec![])),
                ("tokenizer.ggml.eos_token_id", V::U32(7)),
            ],
        );
        let msg = Tokenizer::from_gguf(&gguf).unwrap_err().to_string();
        assert!(
            msg.contains("tokenizer.ggml.eos_token_id") && msg.contains('7'),
            "{msg}"
        );
    }

    #[test]
    fn tiny_bpe_merges_and_special_tokens() {
        let t = tiny(PreStyle::Gpt2);
        // "hi" merges; " wo" -> Ġwo; "x" is a byte; <|im_start|> is matched as a whole.
        assert_eq!(
            t.encode("<|im_start|>hi wox", false).unwrap(),
            vec![1, 259, 261, byte(b'x')]
        );
        assert_eq!(
            t.decode(&[1, 259, 261], false).unwrap(),
            "<|im_start|>hi wo"
        );
        assert_eq!(t.decode(&[1, 259, 261, 2], true).unwrap(), "hi wo");
    }

    #[test]
    fn encode_plain_does_not_match_special_markup() {
        let t = tiny(PreStyle::Gpt2);
        let ids = t.encode_plain("<|im_start|>").unwrap();
        assert!(!ids.contains(&1), "{ids:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), "<|im_start|>");
        // The special-aware path is unchanged after the plain one was built.
        assert_eq!(t.encode("<|im_start|>", false).unwrap(), vec![1]);
    }

    #[test]
    fn digits_split_individually_for_smollm_style() {
        // With the GPT-2 regex alone "12" is one pre-token and merges; SmolLM splits digits.
        assert_eq!(tiny(PreStyle::Gpt2).encode("12", false).unwrap(), vec![262]);
        let smol = tiny(PreStyle::from_name(Some("smollm")));
        assert_eq!(
            smol.encode("12", false).unwrap(),
            vec![byte(b'1'), byte(b'2')]
        );
    }

    #[test]
    fn add_bos_only_when_configured() {
        let mut t = tiny(PreStyle::Gpt2);
        assert_eq!(t.encode("hi", true).unwrap(), vec![259]);
        t.add_bos = true;
        assert_eq!(t.encode("hi", true).unwrap(), vec![0, 259]);
        assert_eq!(t.encode("hi", false).unwrap(), vec![259]);
    }

    #[test]
    fn stream_holds_back_partial_utf8() {
        let t = tiny(PreStyle::Gpt2);
        // "é" is two bytes, hence two byte tokens; "🙂" is four.
        let text = "hi é🙂!";
        let ids = t.encode(text, false).unwrap();
        let mut s = t.stream();
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(p) = s.push(id).unwrap() {
                assert!(!p.contains('\u{FFFD}'), "{p:?}");
                pieces.push(p);
            }
        }
        assert_eq!(s.flush().unwrap(), None);
        assert_eq!(pieces.concat(), text);
        assert_eq!(s.text(), text);
        assert_eq!(pieces, vec!["hi", " ", "é", "🙂", "!"]);
    }

    #[test]
    fn stream_flushes_an_incomplete_tail_and_skips_specials() {
        let t = tiny(PreStyle::Gpt2);
        let mut s = t.stream();
        assert_eq!(s.push(259).unwrap().as_deref(), Some("hi"));
        assert_eq!(s.push(2).unwrap(), None); // <|im_end|> is skipped
        assert_eq!(s.push(byte(0xC3)).unwrap(), None); // first byte of "é"
        assert_eq!(s.flush().unwrap().as_deref(), Some("\u{FFFD}"));
        assert_eq!(s.text(), "hi\u{FFFD}");

        let mut s = t.stream().skip_special_tokens(false);
        assert_eq!(s.push(2).unwrap().as_deref(), Some("<|im_end|>"));
    }

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
        assert!(!dir.path().join(".tokenizer.json.tmp").exists());
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

    #[test]
    fn bad_merge_names_the_key() {
        let err = build_bpe(&["a", "b"], &["ab"], None, PreStyle::Gpt2).unwrap_err();
        assert!(err.contains("tokenizer.ggml.merges[0]"), "{err}");
        let err = build_bpe(&["a", "b"], &["a b"], None, PreStyle::Gpt2).unwrap_err();
        assert!(
            err.contains("tokenizer.ggml.merges") && err.contains("ab"),
            "{err}"
        );
    }

    #[test]
    fn every_pre_style_builds() {
        for pre in [
            None,
            Some("gpt-2"),
            Some("smollm"),
            Some("llama-bpe"),
            Some("dbrx"),
            Some("qwen2"),
            Some("falcon"),
            Some("unknown"),
        ] {
            let t = tiny(PreStyle::from_name(pre));
            let text = "It's 2024: hi  wo\r\n¿12?";
            let ids = t.encode(text, false).unwrap();
            assert_eq!(t.decode(&ids, false).unwrap(), text, "{pre:?}");
        }
    }
}
