//! `data::batch`: labels, truncation, packing, padding and resumable batching.
//!
//! Label masks are checked on a byte-level tokenizer built here (one token per byte, so a
//! token's text is exact) and, on SmolLM2's real tokenizer (`common::smollm2_gguf`). Packing
//! and padding are checked the way that matters for training: the logits of a packed or padded
//! batch at each document's real positions equal the logits of the document run alone, on the
//! tiny random model in f32.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{max_abs_diff, tiny};
use tunelab::data::batch::{
    pack_bfd, pad_token_id, tokenize_conversations, tokenize_texts, truncate_examples, BatchConfig,
    Batcher, LossOn, TokenizedExample, IGNORE_INDEX,
};
use tunelab::data::template::{tokenize_chat, ChatOptions};
use tunelab::model::chat_template::{ChatTemplate, Message};
use tunelab::model::gguf::GgufFile;
use tunelab::model::llama::Llama;
use tunelab::model::tokenizer::Tokenizer;
use tunelab::Error;

/// Logits of a packed or padded batch may differ from those of a document alone only by the
/// f32 rounding of differently sized (blocked) matmuls and softmax sums over more, exactly-zero
/// masked terms: a few ulps of values of order 1 (observed 3e-7). 1e-5 leaves room and is still
/// far below any real leak across documents (which changes logits at the 1e-2 level).
const TOL: f32 = 1e-5;

/// A byte-level tokenizer without merges (one token per byte) with ChatML's special tokens;
/// EOS `<|im_end|>`.
fn byte_tokenizer(dir: &Path) -> Tokenizer {
    use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;
    let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    chars.sort();
    let vocab: Vocab = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .unwrap();
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, false)));
    tk.with_decoder(Some(ByteLevelDecoder::default()));
    tk.add_special_tokens(["<|im_start|>", "<|im_end|>"].map(|s| AddedToken::from(s, true)))
        .unwrap();
    let path = dir.join("tokenizer.json");
    tk.save(&path, false).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"eos_token": "<|im_end|>", "add_bos_token": false}"#,
    )
    .unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn conversation() -> Vec<Message> {
    vec![
        Message::system("You are terse."),
        Message::user("2+2?"),
        Message::assistant("4"),
        Message::user("And 3+3?"),
        Message::assistant("6, of course."),
    ]
}

/// The text of the labelled tokens, split where the labels are interrupted.
fn labelled_spans(tk: &Tokenizer, ex: &TokenizedExample) -> Vec<String> {
    let mut spans: Vec<Vec<u32>> = Vec::new();
    let mut open = false;
    for (&id, &l) in ex.input_ids.iter().zip(&ex.labels) {
        if l == IGNORE_INDEX {
            open = false;
            continue;
        }
        assert_eq!(l, id as i64, "a label is its own token (unshifted)");
        if !open {
            spans.push(Vec::new());
            open = true;
        }
        spans.last_mut().unwrap().push(id);
    }
    spans.iter().map(|s| tk.decode(s, false).unwrap()).collect()
}

#[test]
fn assistant_only_labels_on_byte_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let tk = byte_tokenizer(dir.path());
    let convs = vec![conversation()];
    let t = ChatTemplate::chatml();
    let cfg = BatchConfig::default();
    let ex = &tokenize_conversations(&tk, &t, &convs, &cfg)
        .unwrap()
        .examples[0];
    assert_eq!(
        labelled_spans(&tk, ex),
        ["4<|im_end|>", "6, of course.<|im_end|>"]
    );
    let cfg = cfg.with_loss_on(LossOn::Completion);
    let ex = &tokenize_conversations(&tk, &t, &convs, &cfg)
        .unwrap()
        .examples[0];
    assert_eq!(labelled_spans(&tk, ex), ["6, of course.<|im_end|>"]);
    let cfg = cfg.with_loss_on(LossOn::Full);
    let ex = &tokenize_conversations(&tk, &t, &convs, &cfg)
        .unwrap()
        .examples[0];
    assert_eq!(
        labelled_spans(&tk, ex),
        [t.render(&convs[0], false).unwrap()]
    );
}

#[test]
fn assistant_only_labels_on_smollm2() {
    let path = common::smollm2_gguf();
    let tk = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let t = tk.chat_template().unwrap().clone();
    let convs = vec![conversation()];
    let out = tokenize_conversations(&tk, &t, &convs, &BatchConfig::default()).unwrap();
    let ex = &out.examples[0];
    assert_eq!(
        labelled_spans(&tk, ex),
        ["4<|im_end|>", "6, of course.<|im_end|>"]
    );
    // System, user and template tokens (SmolLM2's template adds nothing here: a system
    // message is given) all carry -100; the labelled ids are the chat's assistant tokens.
    let chat = tokenize_chat(&tk, &t, &convs[0], &ChatOptions::default()).unwrap();
    assert_eq!(ex.input_ids, chat.input_ids);
    let im_end = tk.token_to_id("<|im_end|>").unwrap() as i64;
    let labelled: Vec<i64> = ex.labels.iter().copied().filter(|&l| l != -100).collect();
    assert_eq!(labelled.iter().filter(|&&l| l == im_end).count(), 2);
    assert_eq!(out.report.label_tokens, labelled.len());
}

#[test]
fn full_mode_labels_everything_but_padding() {
    let dir = tempfile::tempdir().unwrap();
    let tk = byte_tokenizer(dir.path());
    let texts = ["short", "a longer text", "mid length"];
    let cfg = BatchConfig::default()
        .with_loss_on(LossOn::Full)
        .with_shuffle(false)
        .with_batch_size(3)
        .with_pad_to_multiple_of(Some(8));
    let (batcher, report) = Batcher::from_texts(&tk, &texts, &cfg).unwrap();
    let b = batcher.batch(0, 0, &Device::Cpu).unwrap();
    let ids = b.input_ids.to_vec2::<u32>().unwrap();
    let labels = b.labels.to_vec2::<i64>().unwrap();
    let mask = b.attention_mask.as_ref().unwrap().to_vec2::<u32>().unwrap();
    // "a longer text" + EOS = 14 tokens, padded to 16.
    assert_eq!(b.input_ids.dims(), [3, 16]);
    let eos = tk.eos_token_id().unwrap();
    for r in 0..3 {
        let n = texts[r].len() + 1;
        for c in 0..16 {
            if c < n {
                assert_eq!((labels[r][c], mask[r][c]), (ids[r][c] as i64, 1));
            } else {
                assert_eq!((labels[r][c], mask[r][c], ids[r][c]), (-100, 0, eos));
            }
        }
        assert_eq!(ids[r][n - 1], eos, "EOS appended");
    }
    assert_eq!(b.num_tokens, 6 + 14 + 11);
    assert_eq!(
        b.num_label_tokens,
        5 + 13 + 10,
        "the shifted loss skips position 0"
    );
    assert_eq!(report.label_tokens, b.num_label_tokens);
    assert!(b.position_ids.is_none() && b.segment_ids.is_none());
}

#[test]
fn truncation_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let tk = byte_tokenizer(dir.path());
    let t = ChatTemplate::chatml();
    // ChatML, one token per byte: "<|im_start|>user\n" + content + "<|im_end|>\n" is 8 + content
    // tokens, "<|im_start|>assistant\n" + content + "<|im_end|>\n" is 13 + content.
    let long_prompt = "x".repeat(40);
    let convs = vec![
        vec![Message::user("hi"), Message::assistant("hello")], // 10 + 18 = 28 tokens
        vec![Message::user(&long_prompt), Message::assistant("ok")], // 48 + 15 = 63: labels cut
        vec![Message::user("q"), Message::assistant("a".repeat(30))], // 9 + 43 = 52: truncated
    ];
    let cfg = BatchConfig::default().with_max_length(40);
    let out = tokenize_conversations(&tk, &t, &convs, &cfg).unwrap();
    let r = out.report;
    assert_eq!(
        (r.examples, r.truncated, r.dropped_no_labels, r.longest),
        (2, 2, 1, 63)
    );
    assert_eq!(r.total_tokens, 28 + 40);
    // "hello<|im_end|>" = 6, and the 40 - 9 - 11 = 20 reply tokens left of the third.
    assert_eq!(r.label_tokens, 6 + 20);
    assert_eq!(out.examples[1].len(), 40);
    let shown = r.to_string();
    assert!(
        shown.contains("2 examples")
            && shown.contains("2 truncated")
            && shown.contains("max_length = 40")
            && shown.contains("1 dropped"),
        "{shown}"
    );
}

#[test]
fn every_example_too_long_is_an_error() {
    let examples = vec![
        TokenizedExample::full(vec![1; 30]),
        TokenizedExample::full(vec![1; 25]),
    ];
    let err = truncate_examples(examples, 16).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(
        msg.contains("max_length") && msg.contains("16") && msg.contains("25 tokens"),
        "{msg}"
    );
}

/// `train::sft_batcher` turns the batcher's "example i" into the record's file and line, from
/// the error's fields ([`Error::Example`] → [`Error::Record`]), not from its message.
#[test]
fn sft_errors_name_the_record_file_and_line() {
    use tunelab::data::records::{parse_jsonl_str, Location};
    let dir = tempfile::tempdir().unwrap();
    let tk = byte_tokenizer(dir.path());
    let text = concat!(
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
        "\n\n",
        r#"{"messages": [{"role": "user", "content": "no answer"}]}"#,
        "\n"
    );
    let records = parse_jsonl_str(text, "chats.jsonl", &Default::default()).unwrap();
    let cfg = BatchConfig::default();
    let err = tunelab::train::sft_batcher(&tk, Some(&ChatTemplate::chatml()), &records, &cfg)
        .unwrap_err();
    let msg = err.to_string();
    // The second record is on line 3 (line 2 is blank).
    match &err {
        Error::Record {
            file,
            location,
            source,
        } => {
            assert_eq!(file, Path::new("chats.jsonl"), "{msg}");
            assert_eq!(*location, Location::Line(3), "{msg}");
            assert!(matches!(**source, Error::Input(_)), "{msg}");
        }
        other => panic!("expected Error::Record, found {other:?}"),
    }
    assert!(
        msg.starts_with("chats.jsonl: line 3: ") && msg.contains("no assistant turn"),
        "{msg}"
    );
    assert!(!msg.contains("example 1"), "{msg}");

    // Chat and plain text mixed: the odd record is named the same way.
    let text = concat!(
        r#"{"text": "plain"}"#,
        "\n",
        r#"{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}"#,
        "\n"
    );
    let records = parse_jsonl_str(text, "mixed.jsonl", &Default::default()).unwrap();
    let err = tunelab::train::sft_batcher(&tk, None, &records, &cfg).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Record {
                location: Location::Line(2),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn empty_dataset_and_missing_assistant_turn_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tk = byte_tokenizer(dir.path());
    let t = ChatTemplate::chatml();
    let cfg = BatchConfig::default();
    let msg = tokenize_conversations(&tk, &t, &[], &cfg)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("empty"), "{msg}");
    let msg = tokenize_texts::<&str>(&tk, &[], &cfg)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("empty"), "{msg}");

    let convs = vec![
        vec![Message::user("a"), Message::assistant("b")],
        vec![Message::user("no answer")],
    ];
    let err = tokenize_conversations(&tk, &t, &convs, &cfg).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Example { index: 1, .. }), "{msg}");
    assert!(matches!(err.root(), Error::Input(_)), "{msg}");
    assert!(
        msg.contains("example 1") && msg.contains("no assistant turn"),
        "{msg}"
    );
    // With the loss on every token it is a fine example.
    let full = cfg.clone().with_loss_on(LossOn::Full);
    assert_eq!(
        tokenize_conversations(&tk, &t, &convs, &full)
            .unwrap()
            .examples
            .len(),
        2
    );
    // Mistral's template rejects a system message: the error names the example too.
    let convs = vec![vec![Message::system("s"), Message::user("u")]];
    let msg = tokenize_conversations(&tk, &ChatTemplate::mistral(), &convs, &full)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("example 0") && msg.contains("alternate"),
        "{msg}"
    );
    // Bad sizes.
    let msg = Batcher::new(
        vec![TokenizedExample::full(vec![1, 2])],
        &cfg.clone().with_batch_size(0),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("per_device_train_batch_size"), "{msg}");
    let msg = Batcher::new(
        vec![TokenizedExample::full(vec![1; 9])],
        &cfg.with_max_length(8),
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("example 0") && msg.contains("9 tokens"),
        "{msg}"
    );
    assert_eq!(pad_token_id(&tk).unwrap(), tk.eos_token_id().unwrap());
}

#[test]
fn bfd_bin_counts_on_a_hand_example() {
    // Capacity 10, lengths 7 5 4 3 2 2 1 (24 tokens: at least 3 rows). Best fit decreasing:
    // 7 -> new row A (room 3); 5 -> new row B (5); 4 -> B, the only one with room (1);
    // 3 -> A, exactly (0); 2 -> new row C (8); 2 -> C (6); 1 -> B, the tightest fit (0).
    let bins = pack_bfd(&[7, 5, 4, 3, 2, 2, 1], 10).unwrap();
    assert_eq!(bins, vec![vec![0, 3], vec![1, 2, 6], vec![4, 5]]);
    // Best fit, not first fit: with rows of room 4 and 2, a 2 goes into the one with 2.
    // 6 -> A (4); 8 -> B (2); 2 -> B (0), where first fit would pick A.
    assert_eq!(pack_bfd(&[6, 8, 2], 10).unwrap(), vec![vec![1, 2], vec![0]]);
    // Every document once, no row over capacity, on a larger random case.
    let lengths: Vec<usize> = (0..200).map(|i| 1 + (i * 37 + 11) % 64).collect();
    let bins = pack_bfd(&lengths, 64).unwrap();
    let mut seen: Vec<usize> = bins.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
    assert!(bins
        .iter()
        .all(|b| b.iter().map(|&i| lengths[i]).sum::<usize>() <= 64));
    let total: usize = lengths.iter().sum();
    assert!(bins.len() <= total.div_ceil(64) + 1, "{} rows", bins.len());
    let msg = pack_bfd(&[3, 11], 10).unwrap_err().to_string();
    assert!(msg.contains("document 1") && msg.contains("11"), "{msg}");
}

/// Deterministic pseudo-random ids below the tiny model's vocabulary (256).
fn ids(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 97)) % 251 + 3)
        .collect()
}

/// Logits `(T, V)` of `ids` run alone.
fn alone(model: &Llama, ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&x, None).unwrap().squeeze(0).unwrap()
}

#[test]
fn packed_logits_equal_each_document_alone() {
    let model = tiny(7);
    let lengths = [5usize, 9, 3, 7, 12, 4, 6];
    let examples: Vec<TokenizedExample> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| TokenizedExample::full(ids(i as u32, n)))
        .collect();
    let unpacked_labels: usize = examples.iter().map(|e| e.num_label_tokens()).sum();
    let cfg = BatchConfig::default()
        .with_max_length(16)
        .with_packing(true)
        .with_shuffle(false)
        .with_batch_size(8);
    let batcher = Batcher::new(examples.clone(), &cfg, 0).unwrap();
    let bins = pack_bfd(&lengths, 16).unwrap();
    assert_eq!(batcher.len(), bins.len());
    assert_eq!(batcher.len(), 3, "46 tokens in rows of 16");
    let b = batcher.batch(0, 0, &Device::Cpu).unwrap();
    assert_eq!(
        b.num_label_tokens, unpacked_labels,
        "same label tokens as unpacked"
    );
    let logits = model
        .forward_with(&b.input_ids, &b.forward_options(), None)
        .unwrap(); // (B, T, V)
    let labels = b.labels.to_vec2::<i64>().unwrap();
    let pos = b.position_ids.as_ref().unwrap().to_vec2::<u32>().unwrap();
    let seg = b.segment_ids.as_ref().unwrap().to_vec2::<u32>().unwrap();
    let mut worst = 0f32;
    for (r, docs) in bins.iter().enumerate() {
        let mut start = 0;
        for (s, &d) in docs.iter().enumerate() {
            let n = lengths[d];
            let got = logits.get(r).unwrap().narrow(0, start, n).unwrap();
            worst = worst.max(max_abs_diff(&got, &alone(&model, &examples[d].input_ids)));
            assert_eq!(
                pos[r][start..start + n],
                (0..n as u32).collect::<Vec<_>>()[..]
            );
            assert!(seg[r][start..start + n].iter().all(|&x| x == s as u32));
            // The loss never predicts a document's first token from the previous one.
            assert_eq!(labels[r][start], IGNORE_INDEX);
            assert_eq!(labels[r][start + 1], examples[d].labels[1]);
            start += n;
        }
    }
    println!("packed vs alone: max |Δlogit| = {worst:e}");
    assert!(worst < TOL, "{worst}");
}

#[test]
fn padded_logits_equal_unpadded() {
    let model = tiny(3);
    let lengths = [6usize, 11, 2, 9];
    let examples: Vec<TokenizedExample> = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| TokenizedExample::full(ids(10 + i as u32, n)))
        .collect();
    let cfg = BatchConfig::default()
        .with_shuffle(false)
        .with_batch_size(4)
        .with_pad_to_multiple_of(Some(8));
    let batcher = Batcher::new(examples.clone(), &cfg, 1).unwrap();
    let b = batcher.batch(0, 0, &Device::Cpu).unwrap();
    assert_eq!(b.input_ids.dims(), [4, 16]);
    let logits = model
        .forward_with(&b.input_ids, &b.forward_options(), None)
        .unwrap();
    let mut worst = 0f32;
    for (r, ex) in examples.iter().enumerate() {
        let got = logits.get(r).unwrap().narrow(0, 0, ex.len()).unwrap();
        worst = worst.max(max_abs_diff(&got, &alone(&model, &ex.input_ids)));
    }
    println!("padded vs alone: max |Δlogit| = {worst:e}");
    assert!(worst < TOL, "{worst}");
}

#[test]
fn shuffle_is_determined_by_seed_and_epoch() {
    let examples: Vec<TokenizedExample> = (0..50)
        .map(|i| TokenizedExample::full(ids(i, 2 + i as usize % 7)))
        .collect();
    let cfg = BatchConfig::default().with_batch_size(8);
    let a = Batcher::new(examples.clone(), &cfg, 0).unwrap();
    let b = Batcher::new(examples.clone(), &cfg, 0).unwrap();
    assert_eq!(a.num_batches(), 7);
    for epoch in 0..3 {
        let order = a.epoch_order(epoch);
        assert_eq!(
            order,
            b.epoch_order(epoch),
            "same (seed, epoch), same order"
        );
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "a permutation");
    }
    assert_ne!(a.epoch_order(0), a.epoch_order(1));
    assert_ne!(a.epoch_order(0), (0..50).collect::<Vec<_>>());
    let other_seed = Batcher::new(examples.clone(), &cfg.clone().with_seed(7), 0).unwrap();
    assert_ne!(a.epoch_order(0), other_seed.epoch_order(0));
    let plain = Batcher::new(examples.clone(), &cfg.clone().with_shuffle(false), 0).unwrap();
    assert_eq!(plain.epoch_order(5), (0..50).collect::<Vec<_>>());

    // A "resumed" batcher gives the very same batch (epoch 2, index 3).
    let x = a.batch(2, 3, &Device::Cpu).unwrap();
    let y = b.batch(2, 3, &Device::Cpu).unwrap();
    assert_eq!(
        x.input_ids.to_vec2::<u32>().unwrap(),
        y.input_ids.to_vec2::<u32>().unwrap()
    );
    let first: Vec<u32> = x.input_ids.get(0).unwrap().to_vec1().unwrap();
    let row = a.epoch_order(2)[3 * 8];
    assert_eq!(first[..examples[row].len()], examples[row].input_ids[..]);
    // The last batch holds the remaining 2 rows.
    assert_eq!(
        a.batch(0, 6, &Device::Cpu)
            .unwrap()
            .input_ids
            .dim(0)
            .unwrap(),
        2
    );
    let msg = a.batch(0, 7, &Device::Cpu).unwrap_err().to_string();
    assert!(
        msg.contains("out of range") && msg.contains("7 batches"),
        "{msg}"
    );
}
