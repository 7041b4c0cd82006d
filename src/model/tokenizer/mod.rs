//! The tokenizer: text <-> token ids, special tokens, the chat template, streaming decode.
//!
//! Two sources, one type:
//! - a Hugging Face directory: `tokenizer.json` (run by the `tokenizers` crate) plus
//!   `tokenizer_config.json` for `bos_token`, `eos_token`, `add_bos_token` and `chat_template`
//!   (`tokenizer_config.rs` reads and writes those files);
//! - a GGUF file: the vocabulary, merges and token types under `tokenizer.ggml.*`, rebuilt into a
//!   byte-level BPE `tokenizers::Tokenizer` that tokenizes like llama.cpp does (`gguf_bpe.rs`).
//!
//! This file holds the type itself: encoding, decoding, the special tokens and the template.
//!
//! BOS is never added by the `tokenizers` post-processor: [`Tokenizer::encode`] prepends it
//! itself when asked to add special tokens and the model's config says `add_bos_token`.
//! [`Tokenizer::encode_plain`] does not recognize special-token markup at all, so text from a
//! user cannot forge `<|im_start|>system`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::chat_template::{ChatTemplate, Message};
use crate::error::{Error, Result};
pub use crate::model::token_stream::TokenStream;

mod gguf_bpe;
mod tokenizer_config;

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

    /// An incremental decoder for generation, skipping special tokens (see [`TokenStream`]).
    pub fn stream(&self) -> TokenStream<'_> {
        TokenStream::new(self)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::gguf_bpe::{build_bpe, PreStyle};
    use super::*;

    /// GPT-2's byte -> printable char table (as in `tokenizers` and llama.cpp).
    pub(super) fn byte_chars() -> Vec<char> {
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
    pub(super) fn tiny(style: PreStyle) -> Tokenizer {
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
    pub(super) fn byte(b: u8) -> u32 {
        3 + b as u32
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
}
