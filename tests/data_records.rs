//! data::records: every format from JSON arrays and JSONL, errors naming file, line/index and
//! field, the save -> load round trip, and the demo datasets under data/.

use std::path::{Path, PathBuf};

use tunelab::data::records::{
    from_json_str, load_records, load_records_with, parse_jsonl_str, save_jsonl, Conversation,
    LoadOptions, Location, RecordFormat,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn turns(c: &Conversation) -> Vec<(&str, &str)> {
    c.messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect()
}

/// The error's message, asserting it names every one of `parts`.
fn err_with(result: tunelab::Result<Vec<Conversation>>, parts: &[&str]) -> String {
    let msg = result.expect_err("expected an error").to_string();
    for p in parts {
        assert!(msg.contains(p), "`{p}` not in: {msg}");
    }
    msg
}

#[test]
fn prompt_completion_json_and_jsonl_agree() {
    for name in ["prompt_completion.json", "prompt_completion.jsonl"] {
        let r = load_records(fixture(name)).unwrap();
        assert_eq!(r.len(), 2, "{name}");
        assert_eq!(
            turns(&r[0]),
            [
                ("user", "What is LoRA?"),
                ("assistant", "A low-rank adapter: W + (alpha/r) B A.")
            ]
        );
        // trl's conversational prompt/completion: the message lists, concatenated.
        assert_eq!(
            turns(&r[1]),
            [
                ("system", "Be brief."),
                ("user", "2 + 2?"),
                ("assistant", "4")
            ]
        );
    }
    let json = load_records(fixture("prompt_completion.json")).unwrap();
    assert_eq!(json[1].source.location, Location::Index(1));
    let jsonl = load_records(fixture("prompt_completion.jsonl")).unwrap();
    assert_eq!(
        jsonl[1].source.location,
        Location::Line(3),
        "blank line 2 is skipped"
    );
}

#[test]
fn openai_messages_with_function_calls() {
    let r = load_records(fixture("messages.jsonl")).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        turns(&r[0]),
        [
            ("system", "You are helpful."),
            ("user", "Hi"),
            ("assistant", "Hello!")
        ]
    );
    assert_eq!(
        turns(&r[1]),
        [
            ("user", "Weather in Oslo?"),
            (
                "function_call",
                r#"{"name":"get_weather","arguments":{"city":"Oslo"}}"#
            ),
            ("function_response", r#"{"temp_c": 3}"#),
            ("assistant", "It is 3 °C in Oslo."),
        ]
    );
    assert_eq!(
        turns(&r[2]),
        [
            ("user", "Time in Rome?"),
            (
                "function_call",
                r#"{"name":"now","arguments":{"tz":"Europe/Rome"}}"#
            ),
            ("tool", "14:05"),
            ("assistant", "It is 14:05."),
        ]
    );
}

#[test]
fn sharegpt_conversations() {
    let r = load_records(fixture("sharegpt.jsonl")).unwrap();
    assert_eq!(
        turns(&r[0]),
        [
            ("system", "Be brief."),
            ("user", "Capital of France?"),
            ("assistant", "Paris.")
        ]
    );
    assert_eq!(
        turns(&r[1]),
        [
            ("user", "Call it"),
            ("function_call", r#"{"name": "f"}"#),
            ("function_response", "42"),
            ("assistant", "42."),
        ]
    );
    // A JSON array may mix `messages` and `conversations` records.
    let r = load_records(fixture("messages.json")).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(turns(&r[1])[2], ("assistant", "Paris."));
}

#[test]
fn alpaca_joins_instruction_and_input() {
    for name in ["alpaca.json", "alpaca.jsonl"] {
        let r = load_records(fixture(name)).unwrap();
        assert_eq!(
            turns(&r[0]),
            [
                ("user", "Translate to French.\n\nGood morning"),
                ("assistant", "Bonjour")
            ],
            "{name}"
        );
        assert_eq!(
            turns(&r[1]),
            [("user", "Name a prime number."), ("assistant", "7")],
            "{name}: empty or missing input adds nothing"
        );
    }
}

#[test]
fn text_records_are_plain_text() {
    for name in ["text.json", "text.jsonl"] {
        let r = load_records(fixture(name)).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|c| c.is_text() && c.messages.is_empty()));
        assert_eq!(r[1].text.as_deref(), Some("It learned to rhyme."));
    }
}

#[test]
fn formats_are_detected_per_record() {
    let r = load_records(fixture("mixed.jsonl")).unwrap();
    assert_eq!(turns(&r[0]), [("user", "p"), ("assistant", "c")]);
    assert_eq!(turns(&r[1]), [("user", "u"), ("assistant", "a")]);
    assert_eq!(turns(&r[2]), [("user", "i"), ("assistant", "o")]);
    assert_eq!(r[3].text.as_deref(), Some("t"));
}

#[test]
fn field_map_and_forced_format() {
    let opts = LoadOptions::default()
        .with_field("question", "prompt")
        .with_field("answer", "completion");
    let r = load_records_with(fixture("qa.jsonl"), &opts).unwrap();
    assert_eq!(
        turns(&r[1]),
        [
            ("user", "What does NF4 stand for?"),
            ("assistant", "4-bit NormalFloat.")
        ]
    );
    // Forced: a record with `text` read as prompt/completion must fail on the missing prompt.
    let opts = LoadOptions::default().with_format(RecordFormat::PromptCompletion);
    err_with(
        load_records_with(fixture("text.jsonl"), &opts),
        &["text.jsonl", "line 1", "`prompt`", "missing"],
    );
    assert_eq!(
        "alpaca".parse::<RecordFormat>().unwrap(),
        RecordFormat::Alpaca
    );
    assert!("chatml".parse::<RecordFormat>().is_err());
}

#[test]
fn a_line_that_does_not_parse_names_line_and_column() {
    let msg = err_with(
        load_records(fixture("bad_json.jsonl")),
        &["bad_json.jsonl", "line 3", "column 36", "not valid JSON"],
    );
    assert!(
        !msg.contains("line 1 column"),
        "serde's own line 1 leaked: {msg}"
    );
    err_with(
        from_json_str(
            "[{\"text\": \"a\"},\n {\"text\": }]",
            "broken.json",
            &Default::default(),
        ),
        &["broken.json", "line 2"],
    );
}

#[test]
fn missing_fields_name_index_or_line_and_field() {
    err_with(
        load_records(fixture("missing_completion.json")),
        &[
            "missing_completion.json",
            "index 2",
            "`completion`",
            "missing",
        ],
    );
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"instruction": "x", "input": ""}"#,
            &["`output`", "missing"],
        ),
        (
            r#"{"messages": [{"role": "user"}]}"#,
            &["`messages[0].content`", "missing"],
        ),
        (
            r#"{"conversations": [{"from": "human"}]}"#,
            &["`conversations[0].value`"],
        ),
        (
            r#"{"messages": [{"content": "hi"}]}"#,
            &["`messages[0].role`", "missing"],
        ),
    ];
    for (line, parts) in cases {
        let text = format!("{{\"text\": \"ok\"}}\n{line}\n");
        let mut all = vec!["virtual.jsonl", "line 2"];
        all.extend_from_slice(parts);
        err_with(
            parse_jsonl_str(&text, "virtual.jsonl", &Default::default()),
            &all,
        );
    }
}

#[test]
fn wrong_types_and_unknown_roles_are_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"{"messages": [{"role": "user", "content": 42}]}"#,
            &["`messages[0].content`", "expected a string, found a number"],
        ),
        (
            r#"{"messages": [{"role": "user", "content": null}]}"#,
            &["`messages[0].content`", "found null"],
        ),
        (
            r#"{"prompt": "p", "completion": {"a": 1}}"#,
            &["`completion`", "found an object"],
        ),
        (r#"{"messages": "hi"}"#, &["`messages`", "expected a list"]),
        (r#"{"messages": []}"#, &["`messages`", "empty list"]),
        (
            r#"{"messages": [{"role": "user", "content": "a"}, {"role": "narrator", "content": "b"}]}"#,
            &["`messages[1].role`", "unknown role `narrator`", "assistant"],
        ),
        (
            r#"{"conversations": [{"from": "bard", "value": "b"}]}"#,
            &["`conversations[0].from`", "unknown speaker `bard`"],
        ),
        (
            r#"{"messages": [{"role": "assistant", "content": null, "function_call": {"arguments": "{}"}}]}"#,
            &["`messages[0].function_call.name`", "missing"],
        ),
        (r#"{"text": ["a"]}"#, &["`text`", "found a list"]),
    ];
    for (i, (record, parts)) in cases.iter().enumerate() {
        let text = format!("[{{\"text\": \"ok\"}}, {record}]");
        let name = format!("case{i}.json");
        let mut all = vec![name.as_str(), "index 1"];
        all.extend_from_slice(parts);
        err_with(from_json_str(&text, &name, &Default::default()), &all);
    }
}

#[test]
fn undetectable_records_list_fields_found_and_formats_expected() {
    let text = "{\"text\": \"ok\"}\n{\"question\": \"q\", \"answer\": \"a\"}\n";
    err_with(
        parse_jsonl_str(text, "qa.jsonl", &Default::default()),
        &[
            "qa.jsonl",
            "line 2",
            "`question`",
            "`answer`",
            "prompt_completion",
            "alpaca",
            "field_map",
        ],
    );
    err_with(
        from_json_str("[1]", "nums.json", &Default::default()),
        &["nums.json", "index 0", "expected a JSON object"],
    );
    err_with(
        from_json_str("{\"text\": \"t\"}", "obj.json", &Default::default()),
        &["obj.json", "top-level array"],
    );
}

#[test]
fn empty_files_have_no_records() {
    for name in ["empty.jsonl", "blank.jsonl"] {
        err_with(load_records(fixture(name)), &[name, "no records"]);
    }
    err_with(
        from_json_str("[]", "none.json", &Default::default()),
        &["none.json", "no records"],
    );
    let missing = fixture("does_not_exist.jsonl");
    err_with(load_records(&missing), &["does_not_exist.jsonl"]);
}

#[test]
fn save_then_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut records = load_records(fixture("messages.jsonl")).unwrap();
    records.extend(load_records(fixture("text.jsonl")).unwrap());
    records.extend(load_records(fixture("alpaca.json")).unwrap());
    let path = dir.path().join("out.jsonl");
    save_jsonl(&path, &records).unwrap();
    let back = load_records(&path).unwrap();
    assert_eq!(back.len(), records.len());
    for (a, b) in records.iter().zip(&back) {
        assert_eq!((&a.messages, &a.text), (&b.messages, &b.text));
    }
    // Nothing but the file itself is left in the directory (the temporary file was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(first.starts_with(r#"{"messages":[{"role":"system","content":"You are helpful."}"#));
    let err = save_jsonl(dir.path().join("no/such/dir/x.jsonl"), &records).unwrap_err();
    assert!(err.to_string().contains("x.jsonl"), "{err}");
}

#[test]
fn the_demo_datasets_load() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for (name, min, max) in [("chitchat.jsonl", 300, 500), ("persona.jsonl", 200, 400)] {
        let r = load_records(data.join(name)).unwrap();
        assert!(
            (min..=max).contains(&r.len()),
            "{name}: {} records",
            r.len()
        );
        for c in &r {
            let roles: Vec<&str> = c.messages.iter().map(|m| m.role.as_str()).collect();
            assert_eq!(roles, ["user", "assistant"], "{}", c.source);
            assert!(c.messages.iter().all(|m| !m.content.trim().is_empty()));
        }
        if name == "persona.jsonl" {
            for c in &r {
                let a = &c.messages[1].content;
                assert!(
                    a.starts_with("Arr, matey! ") && a.ends_with(" Yo-ho-ho!"),
                    "{a}"
                );
                assert!(a.split_whitespace().count() <= 40, "{a}");
            }
        }
    }
    let heldout: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(data.join("persona_heldout.json")).unwrap())
            .unwrap();
    let train = load_records(data.join("persona.jsonl")).unwrap();
    assert!(heldout.len() >= 6);
    for p in &heldout {
        assert!(
            !train.iter().any(|c| &c.messages[0].content == p),
            "{p} is in the training data"
        );
    }
}
