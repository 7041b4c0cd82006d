//! Chat templates for fine-tuning: the built-in layouts of four model families, and role-safe
//! tokenization of a conversation with a mask of the tokens an assistant-only loss trains on.
//!
//! A chat model only answers well in the layout it was tuned on, so fine-tuning data is rendered
//! with the model's own template ([`ChatTemplate::render`], transformers'
//! `apply_chat_template(..., tokenize=False)`). The seminar (slide 51) shows one conversation in
//! four layouts; we do not have the slide, so the built-ins here are the models' official
//! templates, copied verbatim from their `tokenizer_config.json`:
//!
//! | name | model | one turn |
//! |---|---|---|
//! | `chatml` | SmolLM2-Instruct, Qwen (no default system prompt) | `<\|im_start\|>user\nHi<\|im_end\|>\n` |
//! | `llama3` | Meta-Llama-3-8B-Instruct | `<\|start_header_id\|>user<\|end_header_id\|>\n\nHi<\|eot_id\|>` |
//! | `mistral` | Mistral-7B-Instruct-v0.2 | `<s>[INST] Hi [/INST]Hello</s>` |
//! | `phi3` | Phi-3-mini-4k-instruct | `<\|user\|>\nHi<\|end\|>\n` |
//!
//! tests/fixtures/templates/render.json holds transformers' renders of the same strings
//! (scripts/ref/make_template_fixtures.py); the tests compare byte for byte.
//!
//! # Role-safe tokenization
//!
//! Encoding the rendered string with special tokens parsed would let a user write
//! `<|im_start|>system` in a message and get the real control token: a forged turn. And the
//! loss needs to know which tokens the assistant said. [`tokenize_chat`] therefore renders the
//! conversation a second time with each message's content replaced by a unique sentinel, splits
//! that text at the sentinels into template text and content, and encodes
//!
//! - the template text with its special-token markup (`<|im_start|>`, `<|eot_id|>`, ...) as the
//!   special tokens' ids, and everything else as ordinary text;
//! - message content always as ordinary text ([`Tokenizer::encode_plain`]): markup in a message
//!   can never become a control token.
//!
//! Runs of ordinary text between two special tokens are encoded in one piece, template text and
//! user content together, so for content without markup the ids equal
//! `tokenizer.encode(rendered, false)` — with one deliberate exception: an assistant reply starts
//! a new piece. The reply is encoded apart from the header before it (`assistant\n`), as the
//! model sees it at generation time, when the prompt is encoded before the reply exists. With a
//! byte-level BPE the two only differ when the pre-tokenizer would join or cut text differently
//! across that boundary. Measured on SmolLM2 (GPT-2 split regex) with ChatML: only when a reply
//! starts with two or more spaces (whole-string encoding makes `\n␣` one pre-token). Llama 3's
//! template with Llama 3's regex: never (the template strips the reply). A GPT-2-regex tokenizer
//! with Llama 3's template: always, as a lone `\n\n` header end is one pre-token but splits in
//! `\n\nHi`. Special tokens are found by exact string match (their `lstrip`/`rstrip`/`single_word`
//! flags are not applied), and each run is encoded as a string of its own, so a SentencePiece
//! tokenizer that prepends `▁` to every string would add one per run.
//!
//! # Which tokens are the assistant's
//!
//! For each `assistant` message: the tokens of its content as the template renders it (Llama 3's
//! template strips it), then the template text after it up to and including the first special
//! token — the end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<|end|>`), so the model
//! learns to stop. Not the header before the content (`<|im_start|>assistant\n`), not the
//! newline after `<|im_end|>`. That is trl's `assistant_only_loss` with a template that puts
//! `{% generation %}` around content + end-of-turn token, and transformers'
//! `return_assistant_tokens_mask` with such a template (checked against it in
//! tests/data_template.rs). If no special token follows the content, only the content counts.

use crate::error::{Error, Result};
use crate::model::chat_template::{ChatTemplate, Message};
use crate::model::tokenizer::Tokenizer;

/// Meta-Llama-3-8B-Instruct's template: BOS, then per message
/// `<|start_header_id|>{role}<|end_header_id|>\n\n{content | trim}<|eot_id|>`.
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// Mistral-7B-Instruct-v0.2's template (before Mistral added system prompts): `<s>`, then
/// `[INST] {user} [/INST]{assistant}</s>`; roles must alternate, starting with `user`.
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/// Phi-3-mini-4k-instruct's template: `<|{role}|>\n{content}<|end|>\n` per message, then the
/// generation prompt `<|assistant|>\n` or EOS.
const PHI3: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";

/// The names [`builtin`] knows.
pub const BUILTIN_TEMPLATES: [&str; 4] = ["chatml", "llama3", "mistral", "phi3"];

impl ChatTemplate {
    /// Meta-Llama-3-8B-Instruct's official template, with `bos_token = <|begin_of_text|>` and
    /// `eos_token = <|eot_id|>`. It strips every message's content (`| trim`).
    pub fn llama3() -> Self {
        builtin_template(LLAMA3, Some("<|begin_of_text|>"), Some("<|eot_id|>"))
    }

    /// Mistral-7B-Instruct-v0.2's official template, with `<s>` / `</s>`. It has no system
    /// role: a system message, or roles that do not alternate user/assistant, is an
    /// [`Error::Template`] with the template's own message, as in transformers.
    pub fn mistral() -> Self {
        builtin_template(MISTRAL, Some("<s>"), Some("</s>"))
    }

    /// Phi-3-mini-4k-instruct's official template, with `<s>` / `<|endoftext|>` (a conversation
    /// rendered without the generation prompt ends with `<|endoftext|>`).
    pub fn phi3() -> Self {
        builtin_template(PHI3, Some("<s>"), Some("<|endoftext|>"))
    }
}

/// A compiled built-in; the strings are constants the tests render, so this cannot fail.
fn builtin_template(source: &str, bos: Option<&str>, eos: Option<&str>) -> ChatTemplate {
    ChatTemplate::new(source, bos.map(String::from), eos.map(String::from))
        .expect("the built-in chat templates compile")
}

/// A built-in template by name: `chatml` ([`ChatTemplate::chatml`]), `llama3`, `mistral` or
/// `phi3`; any other name is an [`Error::Config`] listing these.
pub fn builtin(name: &str) -> Result<ChatTemplate> {
    match name {
        "chatml" => Ok(ChatTemplate::chatml()),
        "llama3" => Ok(ChatTemplate::llama3()),
        "mistral" => Ok(ChatTemplate::mistral()),
        "phi3" => Ok(ChatTemplate::phi3()),
        _ => Err(Error::config(
            "chat_template",
            format!("unknown built-in template \"{name}\"; expected one of {BUILTIN_TEMPLATES:?}"),
        )),
    }
}

/// Options of [`tokenize_chat`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChatOptions {
    /// End with the header of an assistant turn (`<|im_start|>assistant\n`), for prompting the
    /// model at evaluation time (transformers' `add_generation_prompt`).
    pub add_generation_prompt: bool,
}

/// A conversation as token ids, with the turn each token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedChat {
    /// The rendered conversation (what `apply_chat_template(..., tokenize=False)` returns).
    pub text: String,
    /// Token ids; no BOS is added beyond what the template writes (transformers encodes a
    /// rendered chat with `add_special_tokens=False` too).
    pub input_ids: Vec<u32>,
    /// Per token: `Some(i)` when it belongs to assistant message `i` (its content and the
    /// template text that closes the turn, see the module docs), `None` for everything else.
    pub assistant_turn: Vec<Option<usize>>,
}

impl TokenizedChat {
    /// `true` for the tokens of assistant turns (transformers' `assistant_masks`).
    pub fn assistant_mask(&self) -> Vec<bool> {
        self.assistant_turn.iter().map(Option::is_some).collect()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Renders `messages` with `template` and encodes the result role-safely, marking the tokens of
/// assistant turns (see the module docs for the method and exactly which tokens).
///
/// Errors: an empty conversation ([`Error::Input`]); the template rejecting the conversation
/// (its `raise_exception` message, [`Error::Template`]); a template that changes message content
/// other than by stripping whitespace, so template text and content cannot be told apart.
pub fn tokenize_chat(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    opts: &ChatOptions,
) -> Result<TokenizedChat> {
    if messages.is_empty() {
        return Err(Error::Input(
            "tokenize_chat: the conversation has no messages".into(),
        ));
    }
    let text = template.render(messages, opts.add_generation_prompt)?;
    let pieces = split_at_contents(template, messages, &text, opts.add_generation_prompt)?;
    let specials = special_tokens(tokenizer);

    // Spans of text or special tokens, each with the assistant turn it belongs to.
    let mut items: Vec<Item> = Vec::new();
    let mut closing: Option<usize> = None; // an assistant turn waiting for its end-of-turn token
    for piece in &pieces {
        match piece {
            Piece::Content { index, text } => {
                let turn = (messages[*index].role == "assistant").then_some(*index);
                items.push(Item::Text {
                    text: text.clone(),
                    turn,
                    starts_reply: turn.is_some(),
                });
                closing = turn;
            }
            Piece::Template(t) => {
                let mut rest = t.as_str();
                while let Some((at, tok, id)) = find_special(rest, &specials) {
                    items.push(Item::Text {
                        text: rest[..at].to_string(),
                        turn: closing,
                        starts_reply: false,
                    });
                    items.push(Item::Special { id, turn: closing });
                    closing = None;
                    rest = &rest[at + tok.len()..];
                }
                items.push(Item::Text {
                    text: rest.to_string(),
                    turn: closing,
                    starts_reply: false,
                });
            }
        }
    }

    let mut input_ids = Vec::new();
    let mut assistant_turn = Vec::new();
    let mut run = String::new();
    let mut run_turn: Option<usize> = None;
    let flush = |run: &mut String, turn: Option<usize>, ids: &mut Vec<u32>, turns: &mut Vec<_>| {
        if run.is_empty() {
            return Ok(());
        }
        let enc = tokenizer.encode_plain(run)?;
        turns.extend(std::iter::repeat_n(turn, enc.len()));
        ids.extend(enc);
        run.clear();
        Ok::<(), Error>(())
    };
    for item in items {
        match item {
            Item::Special { id, turn } => {
                flush(&mut run, run_turn, &mut input_ids, &mut assistant_turn)?;
                input_ids.push(id);
                assistant_turn.push(turn);
            }
            Item::Text {
                text,
                turn,
                starts_reply,
            } => {
                if text.is_empty() {
                    continue;
                }
                if turn != run_turn || starts_reply {
                    flush(&mut run, run_turn, &mut input_ids, &mut assistant_turn)?;
                    run_turn = turn;
                }
                run.push_str(&text);
            }
        }
    }
    flush(&mut run, run_turn, &mut input_ids, &mut assistant_turn)?;
    Ok(TokenizedChat {
        text,
        input_ids,
        assistant_turn,
    })
}

/// The token ids of a prompt for generation: `messages` rendered with the generation prompt
/// and encoded role-safely ([`tokenize_chat`] with `add_generation_prompt`).
pub fn generation_prompt(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
) -> Result<Vec<u32>> {
    let opts = ChatOptions {
        add_generation_prompt: true,
    };
    Ok(tokenize_chat(tokenizer, template, messages, &opts)?.input_ids)
}

/// A piece of the rendered conversation.
#[derive(Debug)]
enum Piece {
    /// Text the template wrote.
    Template(String),
    /// Message `index`'s content as it appears in the rendering (possibly stripped).
    Content { index: usize, text: String },
}

/// A span to encode.
#[derive(Debug)]
enum Item {
    Text {
        text: String,
        turn: Option<usize>,
        /// The start of an assistant reply: never joined with the text before it.
        starts_reply: bool,
    },
    Special {
        id: u32,
        turn: Option<usize>,
    },
}

/// Splits `rendered` into template text and message contents by rendering again with each
/// content replaced by a sentinel, then matching the sentinel rendering against `rendered`.
fn split_at_contents(
    template: &ChatTemplate,
    messages: &[Message],
    rendered: &str,
    add_generation_prompt: bool,
) -> Result<Vec<Piece>> {
    // A tag that occurs neither in the rendering nor in any content (private-use characters).
    let mut tag = String::from("\u{E000}\u{F8FF}");
    while rendered.contains(&tag) || messages.iter().any(|m| m.content.contains(&tag)) {
        tag.push('\u{E000}');
    }
    let marked: Vec<Message> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Message::new(m.role.clone(), format!("{tag}{i}{tag}")))
        .collect();
    let with_sentinels = template.render(&marked, add_generation_prompt)?;
    let changed = |what: &str| {
        Error::Template(format!(
            "tokenize_chat: {what}; the template changes message content (beyond stripping \
             whitespace), so its text cannot be told apart from the content"
        ))
    };

    // Template text and sentinel indices, alternating: T0 C T1 C ... Tn.
    let mut parts: Vec<(String, Option<usize>)> = Vec::new();
    let mut rest = with_sentinels.as_str();
    while let Some(at) = rest.find(&tag) {
        parts.push((rest[..at].to_string(), None));
        let after = &rest[at + tag.len()..];
        let end = after
            .find(&tag)
            .ok_or_else(|| changed("a content sentinel was cut"))?;
        let index: usize = after[..end]
            .parse()
            .ok()
            .filter(|&i| i < messages.len())
            .ok_or_else(|| changed("a content sentinel was altered"))?;
        parts.push((String::new(), Some(index)));
        rest = &after[end + tag.len()..];
    }
    parts.push((rest.to_string(), None));

    // Match against the real rendering: each content appears as given or stripped.
    let mut pieces = Vec::with_capacity(parts.len());
    let mut pos = 0;
    for (k, (text, index)) in parts.iter().enumerate() {
        match index {
            None => {
                if !rendered[pos..].starts_with(text.as_str()) {
                    return Err(changed(&format!(
                        "the template text at byte {pos} differs between renderings"
                    )));
                }
                pos += text.len();
                pieces.push(Piece::Template(text.clone()));
            }
            Some(i) => {
                let next = parts.get(k + 1).map_or("", |(t, _)| t.as_str());
                let content = &messages[*i].content;
                let found = [content.as_str(), content.trim()].into_iter().find(|c| {
                    rendered[pos..].starts_with(c) && rendered[pos + c.len()..].starts_with(next)
                });
                let c = found.ok_or_else(|| {
                    changed(&format!("message {i}'s content is not in the rendering"))
                })?;
                pos += c.len();
                pieces.push(Piece::Content {
                    index: *i,
                    text: c.to_string(),
                });
            }
        }
    }
    if pos != rendered.len() {
        return Err(changed("the renderings differ in length"));
    }
    Ok(pieces)
}

/// The tokenizer's special tokens (content, id), longest first.
fn special_tokens(tokenizer: &Tokenizer) -> Vec<(String, u32)> {
    let mut specials: Vec<(String, u32)> = tokenizer
        .inner()
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special && !t.content.is_empty())
        .map(|(id, t)| (t.content, id))
        .collect();
    specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    specials
}

/// The leftmost special token in `text` (the longest of those starting there): byte offset,
/// content and id.
fn find_special<'a>(text: &str, specials: &'a [(String, u32)]) -> Option<(usize, &'a str, u32)> {
    let mut best: Option<(usize, &str, u32)> = None;
    for (tok, id) in specials {
        if let Some(at) = text.find(tok.as_str()) {
            // Longest first, so only a strictly earlier match replaces the best one.
            if best.is_none_or(|(b, _, _)| at < b) {
                best = Some((at, tok.as_str(), *id));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names() {
        for name in BUILTIN_TEMPLATES {
            builtin(name).unwrap();
        }
        let msg = builtin("llama2").unwrap_err().to_string();
        assert!(msg.contains("llama2") && msg.contains("phi3"), "{msg}");
    }

    #[test]
    fn split_strips_like_llama3() {
        let t = ChatTemplate::llama3();
        let msgs = [Message::user("  hi \n"), Message::assistant("ok")];
        let text = t.render(&msgs, false).unwrap();
        let pieces = split_at_contents(&t, &msgs, &text, false).unwrap();
        let contents: Vec<&str> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Content { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(contents, ["hi", "ok"]);
    }

    #[test]
    fn content_changing_template_is_an_error() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ m.content.upper() }}{% endfor %}",
            None,
            None,
        )
        .unwrap();
        let msgs = [Message::user("hi")];
        let text = t.render(&msgs, false).unwrap();
        let err = split_at_contents(&t, &msgs, &text, false).unwrap_err();
        assert!(err.to_string().contains("changes message content"), "{err}");
    }

    #[test]
    fn leftmost_then_longest_special() {
        let specials = vec![("<|a|>x".to_string(), 2), ("<|a|>".to_string(), 1)];
        assert_eq!(find_special("z<|a|>x", &specials), Some((1, "<|a|>x", 2)));
        assert_eq!(
            find_special("<|a|>y<|a|>x", &specials),
            Some((0, "<|a|>", 1))
        );
        assert_eq!(find_special("none", &specials), None);
    }
}
