//! Chat templates: the Jinja template a chat model ships with, rendered like transformers does.
//!
//! A chat model is trained on conversations laid out in one exact format — for SmolLM2 that is
//! ChatML, `<|im_start|>user\nHi<|im_end|>\n` — and the layout is stored with the model as a Jinja
//! template (`chat_template` in `tokenizer_config.json`, `tokenizer.chat_template` in GGUF).
//! [`ChatTemplate::render`] runs it with [minijinja] in the environment of transformers'
//! `apply_chat_template`: the variables `messages`, `add_generation_prompt`, `bos_token` and
//! `eos_token`; a `raise_exception(msg)` function; Python string methods (`.strip()`,
//! `.startswith()`, ...); `trim_blocks` and `lstrip_blocks` on, trailing newline dropped; and a
//! `tojson` filter that writes JSON like Python's `json.dumps` (`", "` and `": "` separators, no
//! HTML escaping, non-ASCII kept).
//!
//! Not supported: transformers' `{% generation %}` tag and the `strftime_now` function (a template
//! that tests `strftime_now is defined` falls back to its own date). `{% break %}` and
//! `{% continue %}` need minijinja's `loop_controls` feature, and mappings iterate in sorted key
//! order unless minijinja's `preserve_order` feature is on.

use std::collections::BTreeMap;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The name the template is registered under; minijinja's errors show it with the line number.
const NAME: &str = "chat_template";

/// The built-in ChatML template, the layout SmolLM2 and Qwen use (without SmolLM2's default
/// system prompt, so that it fits any model).
const CHATML: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One turn of a conversation, as transformers takes it: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant` (a template may know other roles).
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template with the special tokens it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.bos_token == other.bos_token
            && self.eos_token == other.eos_token
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is an [`Error::Template`] naming the line.
    ///
    /// `bos_token` and `eos_token` are the strings the template sees as `bos_token` and
    /// `eos_token` (undefined, so rendering as empty, when `None`).
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let source = source.into();
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.clone()).map_err(|e| {
            Error::Template(format!(
                "syntax error at line {}: {}",
                e.line().unwrap_or(0),
                e.detail().unwrap_or(&e.kind().to_string())
            ))
        })?;
        Ok(Self {
            source,
            bos_token,
            eos_token,
            env,
        })
    }

    /// The built-in ChatML template, for models that ship none:
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then `<|im_start|>assistant\n`
    /// when a generation prompt is asked for. No default system prompt is added.
    pub fn chatml() -> Self {
        // A constant that the unit tests render; compiling it cannot fail.
        Self::new(CHATML, None, Some("<|im_end|>".to_string()))
            .expect("the built-in ChatML template compiles")
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS string the template sees.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS string the template sees.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the header of an
    /// assistant turn, ready for the model to continue.
    ///
    /// A `raise_exception(...)` in the template, or any other failure while rendering, is an
    /// [`Error::Template`] carrying the message and the line.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        // Like transformers' special_tokens_map: a token that is not set is not defined.
        if let Some(bos) = &self.bos_token {
            ctx.insert("bos_token", Value::from(bos.as_str()));
        }
        if let Some(eos) = &self.eos_token {
            ctx.insert("eos_token", Value::from(eos.as_str()));
        }
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(e.to_string()))?;
        template
            .render(ctx)
            .map_err(|e| Error::Template(render_error(&e)))
    }
}

/// The message of a render error, with the messages of the errors that caused it.
fn render_error(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// `raise_exception(msg)`: the template's way to reject a conversation.
fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out, PyCompact,
        )),
    };
    written
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let json = String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(json))
}

/// Python's `json.dumps` layout without indent: `[1, 2]`, `{"a": 1}`.
struct PyCompact;

impl serde_json::ser::Formatter for PyCompact {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M-Instruct's template, as stored in its tokenizer_config.json and GGUF.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_renders_chatml() {
        let t = ChatTemplate::new(SMOLLM2, None, None).unwrap();
        let msgs = [Message::system("Be brief."), Message::user("Hi!")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without a system message the template inserts its default one.
        assert_eq!(
            t.render(&[Message::user("Hi!")], false).unwrap(),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
             Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        );
    }

    #[test]
    fn chatml_builtin() {
        let t = ChatTemplate::chatml();
        let msgs = [Message::user("2+2?"), Message::assistant("4")];
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"
        );
        assert_eq!(
            t.render(&msgs[..1], true).unwrap(),
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn trim_and_lstrip_blocks_like_transformers() {
        // A Llama-2-like multi-line template: with trim_blocks/lstrip_blocks the block tags
        // leave no newlines or indentation behind, and the trailing newline is dropped.
        let src = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'user' %}\n[INST] {{ m.content.strip() }} [/INST]\n    {% else %}\n{{ m.content }}{{ eos_token }}\n    {% endif %}\n{% endfor %}\n";
        let t = ChatTemplate::new(src, Some("<s>".into()), Some("</s>".into())).unwrap();
        let msgs = [Message::user("  hello  "), Message::assistant("hi")];
        assert_eq!(
            t.render(&msgs, false).unwrap(),
            "<s>\n[INST] hello [/INST]\nhi</s>\n"
        );
    }

    #[test]
    fn undefined_special_tokens_render_empty() {
        let t = ChatTemplate::new("[{{ bos_token }}|{{ eos_token }}]", None, None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "[|]");
    }

    #[test]
    fn pycompat_methods() {
        let src = "{% for m in messages %}{% if m.content.startswith('/') %}cmd:{{ m.content[1:].upper() }}{% else %}{{ m.content.strip() }}{% endif %};{% endfor %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        let msgs = [Message::user("/run"), Message::user("  x ")];
        assert_eq!(t.render(&msgs, false).unwrap(), "cmd:RUN;x;");
    }

    #[test]
    fn raise_exception_is_an_error_with_its_message() {
        let src = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        assert_eq!(t.render(&[Message::user("ok")], false).unwrap(), "ok");
        let err = t.render(&[Message::system("no")], false).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Template(_)), "{msg}");
        assert!(msg.contains("System role not supported"), "{msg}");
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = ChatTemplate::new(
            "line one\n{% for m in messages %}\n{{ m.content }",
            None,
            None,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Template(_)), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let src = "{{ {'a': [1, 'é<'], 'b': {}} | tojson }}|{{ {'a': [1]} | tojson(indent=2) }}";
        let t = ChatTemplate::new(src, None, None).unwrap();
        // json.dumps({"a": [1, "é<"], "b": {}}) and json.dumps({"a": [1]}, indent=2).
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"a\": [1, \"é<\"], \"b\": {}}|{\n  \"a\": [\n    1\n  ]\n}"
        );
    }

    #[test]
    fn message_serde_matches_transformers_shape() {
        let m: Message = serde_json::from_str(r#"{"role":"user","content":"Hi"}"#).unwrap();
        assert_eq!(m, Message::user("Hi"));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"role":"user","content":"Hi"}"#
        );
    }
}
