//! A GGUF file's tokenizer (`tokenizer.ggml.*`) rebuilt as a byte-level BPE
//! `tokenizers::Tokenizer` that tokenizes as llama.cpp does: [`Tokenizer::from_gguf`].
//!
//! For GGUF, llama.cpp's `llama-vocab.cpp` is the reference. Its BPE ("gpt2") tokenizer first
//! splits out special tokens, then cuts the text with a list of regexes chosen by
//! `tokenizer.ggml.pre`, each applied to the pieces of the previous one, maps bytes to GPT-2's
//! printable characters and runs the merges by rank (Sennrich et al. 2016, byte-level as in
//! GPT-2). The same steps here are a `Sequence[Split(Isolated)..., ByteLevel]` pre-tokenizer and
//! a `BPE` model. Supported `tokenizer.ggml.pre` values, with llama.cpp's regexes:
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

use std::sync::OnceLock;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::Tokenizer;
use crate::error::{Error, Result};
use crate::model::chat_template::ChatTemplate;
use crate::model::gguf::GgufFile;

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

impl Tokenizer {
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
}

/// The pre-tokenizer families of llama.cpp's `llm_tokenizer_bpe` that we reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PreStyle {
    Gpt2,
    DigitsThenGpt2,
    Llama3 { ignore_merges: bool, add_bos: bool },
    Qwen2,
    Falcon,
    Default,
}

impl PreStyle {
    pub(super) fn from_name(pre: Option<&str>) -> Self {
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
pub(super) fn build_bpe(
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{byte, byte_chars, tiny};
    use super::*;

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
