//! Streaming detokenization: text out as tokens come in, never half a character.

use crate::error::Result;
use crate::model::tokenizer::Tokenizer;

/// Incremental detokenizer for streaming generation.
///
/// Push token ids one at a time; [`TokenStream::push`] returns the new text once it is complete.
/// A byte-level token can hold half a UTF-8 character (an emoji is often 2–4 tokens), so while
/// the decoded tail ends in U+FFFD the text is held back. [`TokenStream::flush`] returns what is
/// left at the end. Decoding restarts from the last emitted token, so each push costs the
/// decode of a few tokens, not of the whole sequence.
#[derive(Debug, Clone)]
pub struct TokenStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the window that is decoded for context.
    prefix_offset: usize,
    /// End of the part whose text has been emitted.
    read_offset: usize,
    text: String,
    skip_special_tokens: bool,
}

impl TokenStream<'_> {
    /// Whether special tokens (EOS, `<|im_end|>`, ...) are left out of the text; on by default.
    pub fn skip_special_tokens(mut self, skip: bool) -> Self {
        self.skip_special_tokens = skip;
        self
    }

    /// Adds token `id`; returns the text it completes, or `None` while it is still partial.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let (prefix, full) = self.window()?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                self.text.push_str(&new);
                return Ok(Some(new));
            }
        }
        Ok(None)
    }

    /// Returns the text still held back (an incomplete character comes out as U+FFFD), if any.
    pub fn flush(&mut self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let (prefix, full) = self.window()?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        match full.get(prefix.len()..) {
            Some(new) if !new.is_empty() => {
                self.text.push_str(new);
                Ok(Some(new.to_string()))
            }
            _ => Ok(None),
        }
    }

    /// All text emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The decoded context window without and with the tokens not yet emitted.
    fn window(&self) -> Result<(String, String)> {
        let skip = self.skip_special_tokens;
        let prefix = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..self.read_offset], skip)?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], skip)?;
        Ok((prefix, full))
    }
}

impl<'a> TokenStream<'a> {
    /// A stream over `tokenizer`, skipping special tokens.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        TokenStream {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            skip_special_tokens: true,
        }
    }
}
