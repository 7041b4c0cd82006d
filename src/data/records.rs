//! Records: the formats people keep fine-tuning data in, loaded into [`Conversation`]s.
//!
//! A file is either a JSON array of objects (`.json`, as `datasets.load_dataset("json")` reads it)
//! or JSON Lines (`.jsonl`, one object per line, blank lines skipped). Each record is recognised by
//! its fields — or read as the [`RecordFormat`] you force — after renaming fields with
//! [`LoadOptions::field_map`]:
//!
//! | format | fields | becomes |
//! |---|---|---|
//! | [`PromptCompletion`](RecordFormat::PromptCompletion) | `prompt`, `completion` (strings, or trl's message lists) | user + assistant |
//! | [`Messages`](RecordFormat::Messages) | `messages` (OpenAI `role`/`content`) or `conversations` (ShareGPT `from`/`value`) | the turns |
//! | [`Alpaca`](RecordFormat::Alpaca) | `instruction`, `input` (optional), `output` | user `instruction\n\ninput` + assistant |
//! | [`Text`](RecordFormat::Text) | `text` | plain text, no chat template ([`Conversation::text`]) |
//!
//! OpenAI function calling maps onto tunelab's roles: an assistant turn's `function_call`
//! (or each of its `tool_calls`) becomes a `function_call` turn whose content is the JSON
//! `{"name": ..., "arguments": ...}` (string arguments that hold JSON are embedded as JSON), and a
//! `function` turn becomes `function_response`. Every error names the file, the line (JSONL,
//! 1-based) or array index (JSON, 0-based), the field, and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::chat_template::Message;

/// The roles a chat turn may have once loaded.
pub const ROLES: [&str; 6] = [
    "system",
    "user",
    "assistant",
    "function_call",
    "function_response",
    "tool",
];

/// The layout of a record; see the [module docs](self) for the fields of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// `{"prompt": ..., "completion": ...}` (trl's prompt-completion, standard or conversational).
    PromptCompletion,
    /// `{"messages": [{"role", "content"}]}` or ShareGPT `{"conversations": [{"from", "value"}]}`.
    Messages,
    /// `{"instruction", "input", "output"}` (Stanford Alpaca).
    Alpaca,
    /// `{"text": ...}`: plain text for language modelling.
    Text,
}

impl RecordFormat {
    /// Every format, in the order detection tries them.
    pub const ALL: [RecordFormat; 4] = [
        RecordFormat::Messages,
        RecordFormat::PromptCompletion,
        RecordFormat::Alpaca,
        RecordFormat::Text,
    ];

    /// The snake_case name (`prompt_completion`, `messages`, `alpaca`, `text`).
    pub fn name(self) -> &'static str {
        match self {
            RecordFormat::PromptCompletion => "prompt_completion",
            RecordFormat::Messages => "messages",
            RecordFormat::Alpaca => "alpaca",
            RecordFormat::Text => "text",
        }
    }

    fn fields(self) -> &'static str {
        match self {
            RecordFormat::PromptCompletion => "`prompt`, `completion`",
            RecordFormat::Messages => "`messages` or `conversations`",
            RecordFormat::Alpaca => "`instruction`, `input`, `output`",
            RecordFormat::Text => "`text`",
        }
    }

    /// The format a record's (renamed) fields point to, if any.
    fn detect(obj: &Map<String, Value>) -> Option<RecordFormat> {
        let has = |k: &str| obj.contains_key(k);
        if has("messages") || has("conversations") {
            Some(RecordFormat::Messages)
        } else if has("prompt") || has("completion") {
            Some(RecordFormat::PromptCompletion)
        } else if has("instruction") || has("output") {
            Some(RecordFormat::Alpaca)
        } else if has("text") {
            Some(RecordFormat::Text)
        } else {
            None
        }
    }
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RecordFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        RecordFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                Error::config(
                    "format",
                    format!("expected prompt_completion, messages, alpaca or text, found `{s}`"),
                )
            })
    }
}

pub use crate::error::Location;

/// The file and line/index a record came from, kept for error messages downstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordRef {
    /// The file (or the virtual name given to a string).
    pub file: PathBuf,
    /// The line or index in it.
    pub location: Location,
}

impl RecordRef {
    /// The record at `location` of `file`.
    pub fn new(file: impl Into<PathBuf>, location: Location) -> Self {
        Self {
            file: file.into(),
            location,
        }
    }

    /// `source`, as having happened on this record: an [`Error::Record`].
    pub fn wrap(&self, source: Error) -> Error {
        Error::Record {
            file: self.file.clone(),
            location: self.location,
            source: Box::new(source),
        }
    }

    /// An error about this record: `file: line 3: msg` (an [`Error::Record`] over an
    /// [`Error::Input`]).
    pub fn record_error(&self, msg: impl fmt::Display) -> Error {
        self.wrap(Error::Input(msg.to_string()))
    }

    /// An error about `field` of this record: `file: line 3: field `x`: msg` (an
    /// [`Error::Record`] over an [`Error::Field`]).
    pub fn error(&self, field: &str, msg: impl fmt::Display) -> Error {
        self.wrap(Error::Field {
            field: field.into(),
            msg: msg.to_string(),
        })
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.location)
    }
}

/// One training example: chat turns, or (for [`RecordFormat::Text`]) plain text.
///
/// Exactly one of the two is used: a chat record has `messages` and `text == None`; a plain-text
/// record has `text == Some(..)` and no messages, and a tokenizer takes it as is, without a chat
/// template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The turns, in order (empty for plain text).
    pub messages: Vec<Message>,
    /// The plain text of a `{"text": ...}` record.
    pub text: Option<String>,
    /// Where the record came from.
    pub source: RecordRef,
}

impl Conversation {
    /// A chat record.
    pub fn chat(messages: Vec<Message>, source: RecordRef) -> Self {
        Self {
            messages,
            text: None,
            source,
        }
    }

    /// A plain-text record.
    pub fn plain_text(text: impl Into<String>, source: RecordRef) -> Self {
        Self {
            messages: Vec::new(),
            text: Some(text.into()),
            source,
        }
    }

    /// Whether this is plain text (no chat template applies).
    pub fn is_text(&self) -> bool {
        self.text.is_some()
    }

    /// The record as one line of [`save_jsonl`]: `{"messages":[{"role":..,"content":..}]}` or
    /// `{"text":..}`, keys in that order, non-ASCII kept as UTF-8.
    pub fn to_json_line(&self) -> String {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Line<'a> {
            Chat { messages: &'a [Message] },
            Text { text: &'a str },
        }
        let line = match &self.text {
            Some(text) => Line::Text { text },
            None => Line::Chat {
                messages: &self.messages,
            },
        };
        // Serializing strings and a derived struct cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// How to read a file's records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoadOptions {
    /// Read every record as this format instead of detecting it.
    pub format: Option<RecordFormat>,
    /// Renames applied to each record's top-level fields before anything else, source name to
    /// canonical name (`"question" -> "prompt"`).
    pub field_map: BTreeMap<String, String>,
}

impl LoadOptions {
    /// Forces `format`.
    pub fn with_format(mut self, format: RecordFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Renames the field `from` to `to`.
    pub fn with_field(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.field_map.insert(from.into(), to.into());
        self
    }
}

/// Loads a `.json` or `.jsonl` file with detected formats.
pub fn load_records(path: impl AsRef<Path>) -> Result<Vec<Conversation>> {
    load_records_with(path, &LoadOptions::default())
}

/// Loads a file with `options`. A file whose first non-blank character is `[` is a JSON array,
/// anything else JSON Lines (whatever its extension, as `datasets` does).
pub fn load_records_with(
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<Vec<Conversation>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim_start().starts_with('[') {
        from_json_str(text, path, options)
    } else {
        parse_jsonl_str(text, path, options)
    }
}

/// Parses a JSON array of records; `file` names it in errors.
pub fn from_json_str(
    text: &str,
    file: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<Vec<Conversation>> {
    let file = file.as_ref();
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Error::format(file, format!("not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(Error::format(
            file,
            format!(
                "expected a top-level array of records, found {}",
                kind(&value)
            ),
        ));
    };
    let records = items
        .iter()
        .enumerate()
        .map(|(i, v)| parse_record(v, RecordRef::new(file, Location::Index(i)), options))
        .collect::<Result<Vec<_>>>()?;
    non_empty(records, file)
}

/// Parses JSON Lines (one record per line, blank lines skipped); `file` names it in errors.
pub fn parse_jsonl_str(
    text: &str,
    file: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<Vec<Conversation>> {
    let file = file.as_ref();
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let source = RecordRef::new(file, Location::Line(i + 1));
        let value: Value = serde_json::from_str(line).map_err(|e| {
            // serde's message ends with "at line 1 column N": the line is ours, keep the column.
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            source.record_error(format_args!(
                "not valid JSON at column {}: {msg}",
                e.column()
            ))
        })?;
        records.push(parse_record(&value, source, options)?);
    }
    non_empty(records, file)
}

fn non_empty(records: Vec<Conversation>, file: &Path) -> Result<Vec<Conversation>> {
    if records.is_empty() {
        return Err(Error::format(file, "no records (an empty file or array)"));
    }
    Ok(records)
}

/// Reads one record (a JSON object) in `options.format` or the format its fields show.
pub fn parse_record(
    value: &Value,
    source: RecordRef,
    options: &LoadOptions,
) -> Result<Conversation> {
    let Value::Object(raw) = value else {
        let found = kind(value);
        return Err(source.record_error(format_args!(
            "expected a JSON object per record, found {found}"
        )));
    };
    let obj: Map<String, Value> = raw
        .iter()
        .map(|(k, v)| (options.field_map.get(k).unwrap_or(k).clone(), v.clone()))
        .collect();
    let Some(format) = options.format.or_else(|| RecordFormat::detect(&obj)) else {
        let found: Vec<String> = obj.keys().map(|k| format!("`{k}`")).collect();
        let expected: Vec<String> = RecordFormat::ALL
            .iter()
            .map(|f| format!("{f} ({})", f.fields()))
            .collect();
        return Err(source.record_error(format_args!(
            "cannot tell the record's format from its fields [{}]; expected one of: {} \
             (rename fields with field_map)",
            found.join(", "),
            expected.join(", ")
        )));
    };
    let get = |k: &str| {
        obj.get(k)
            .ok_or_else(|| source.error(k, format!("missing ({format} record)")))
    };
    let messages = match format {
        RecordFormat::Text => {
            return Ok(Conversation::plain_text(
                string(get("text")?, "text", &source)?,
                source,
            ))
        }
        RecordFormat::Messages => {
            let key = if obj.contains_key("messages") || !obj.contains_key("conversations") {
                "messages"
            } else {
                "conversations"
            };
            parse_messages(get(key)?, key, &source)?
        }
        RecordFormat::PromptCompletion => {
            let mut turns = side(get("prompt")?, "prompt", "user", &source)?;
            turns.extend(side(
                get("completion")?,
                "completion",
                "assistant",
                &source,
            )?);
            turns
        }
        RecordFormat::Alpaca => {
            let instruction = string(get("instruction")?, "instruction", &source)?;
            let input = match obj.get("input") {
                None | Some(Value::Null) => "",
                Some(v) => string(v, "input", &source)?,
            };
            let output = string(get("output")?, "output", &source)?;
            let user = if input.trim().is_empty() {
                instruction.to_string()
            } else {
                format!("{instruction}\n\n{input}")
            };
            vec![Message::user(user), Message::assistant(output)]
        }
    };
    Ok(Conversation::chat(messages, source))
}

/// A prompt or completion: a string (one turn with `role`) or a list of messages.
fn side(v: &Value, field: &str, role: &str, src: &RecordRef) -> Result<Vec<Message>> {
    match v {
        Value::String(s) => Ok(vec![Message::new(role, s.clone())]),
        Value::Array(_) => parse_messages(v, field, src),
        _ => Err(src.error(
            field,
            format!("expected a string or a list of messages, found {}", kind(v)),
        )),
    }
}

fn parse_messages(v: &Value, field: &str, src: &RecordRef) -> Result<Vec<Message>> {
    let Value::Array(items) = v else {
        return Err(src.error(
            field,
            format!("expected a list of messages, found {}", kind(v)),
        ));
    };
    if items.is_empty() {
        return Err(src.error(field, "expected at least one message, found an empty list"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        parse_message(m, &format!("{field}[{i}]"), src, &mut out)?;
    }
    Ok(out)
}

/// One OpenAI-style or ShareGPT message; a function-calling assistant turn may give several.
fn parse_message(m: &Value, path: &str, src: &RecordRef, out: &mut Vec<Message>) -> Result<()> {
    let Value::Object(obj) = m else {
        return Err(src.error(
            path,
            format!("expected a message object, found {}", kind(m)),
        ));
    };
    let field = |k: &str| format!("{path}.{k}");
    let req = |k: &str| obj.get(k).ok_or_else(|| src.error(&field(k), "missing"));
    if obj.contains_key("from") {
        let from = string(req("from")?, &field("from"), src)?;
        let role = match from {
            "human" | "user" => "user",
            "gpt" | "assistant" => "assistant",
            "system" => "system",
            "function_call" => "function_call",
            "observation" | "function" | "function_response" => "function_response",
            "tool" => "tool",
            _ => {
                return Err(src.error(
                    &field("from"),
                    format!("unknown speaker `{from}`, expected human, gpt, system, function_call, observation or tool"),
                ))
            }
        };
        out.push(Message::new(
            role,
            string(req("value")?, &field("value"), src)?,
        ));
        return Ok(());
    }
    let role = string(req("role")?, &field("role"), src)?;
    let calls = function_calls(obj, path, src)?;
    if role == "assistant" && !calls.is_empty() {
        if let Some(Value::String(s)) = obj.get("content") {
            if !s.trim().is_empty() {
                out.push(Message::assistant(s.clone()));
            }
        }
        out.extend(calls.into_iter().map(|c| Message::new("function_call", c)));
        return Ok(());
    }
    let role = match role {
        "function" => "function_response",
        r if ROLES.contains(&r) => r,
        r => {
            return Err(src.error(
                &field("role"),
                format!(
                    "unknown role `{r}`, expected one of {} (or function)",
                    ROLES.join(", ")
                ),
            ))
        }
    };
    out.push(Message::new(
        role,
        string(req("content")?, &field("content"), src)?,
    ));
    Ok(())
}

/// The `{"name", "arguments"}` JSON of an assistant's `function_call` and `tool_calls`.
fn function_calls(obj: &Map<String, Value>, path: &str, src: &RecordRef) -> Result<Vec<String>> {
    let mut calls = Vec::new();
    if let Some(fc) = obj.get("function_call") {
        calls.push((fc, format!("{path}.function_call")));
    }
    if let Some(tc) = obj.get("tool_calls") {
        let Value::Array(items) = tc else {
            return Err(src.error(
                &format!("{path}.tool_calls"),
                format!("expected a list, found {}", kind(tc)),
            ));
        };
        for (i, t) in items.iter().enumerate() {
            let f = format!("{path}.tool_calls[{i}].function");
            let func = t.get("function").ok_or_else(|| src.error(&f, "missing"))?;
            calls.push((func, f));
        }
    }
    calls
        .into_iter()
        .map(|(v, f)| {
            let name = v
                .get("name")
                .ok_or_else(|| src.error(&format!("{f}.name"), "missing"))?;
            let name = string(name, &format!("{f}.name"), src)?;
            let args = match v.get("arguments") {
                None | Some(Value::Null) => Value::Object(Map::new()),
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                }
                Some(a) => a.clone(),
            };
            // Written by hand so that `name` comes first (serde_json's map sorts keys).
            Ok(format!(
                "{{\"name\":{},\"arguments\":{}}}",
                Value::from(name),
                args
            ))
        })
        .collect()
}

fn string<'a>(v: &'a Value, field: &str, src: &RecordRef) -> Result<&'a str> {
    v.as_str()
        .ok_or_else(|| src.error(field, format!("expected a string, found {}", kind(v))))
}

/// "a number", "an object", ... for error messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Writes `records` as JSON Lines (`{"messages": [...]}`, or `{"text": ...}` for plain text),
/// atomically: a temporary file in the same directory, renamed over `path`.
pub fn save_jsonl(path: impl AsRef<Path>, records: &[Conversation]) -> Result<()> {
    let mut out = String::new();
    for r in records {
        out.push_str(&r.to_json_line());
        out.push('\n');
    }
    crate::fs::write_bytes_atomic(path.as_ref(), out)
}
