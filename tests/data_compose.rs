//! data::compose: limits, seeded sampling, exact vs normalized dedup, the seeded split, writing
//! train/validation JSONL and the errors. Fixture counts are explained in
//! tests/fixtures/data/README.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tunelab::data::compose::{compose, ComposeOptions, DatasetSource, Dedup, Sampling};
use tunelab::data::records::{load_records, Conversation};
use tunelab::Error;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

/// `numbered.jsonl`'s i-th record asks "Question number {i}?".
fn numbers(records: &[Conversation]) -> Vec<usize> {
    records
        .iter()
        .map(|c| {
            let q = &c.messages[0].content;
            q["Question number ".len()..q.len() - 1].parse().unwrap()
        })
        .collect()
}

fn no_split() -> ComposeOptions {
    ComposeOptions {
        dedup: Dedup::None,
        ..Default::default()
    }
}

fn with_fraction(fraction: f64, seed: u64) -> ComposeOptions {
    ComposeOptions {
        validation_fraction: Some(fraction),
        seed,
        ..Default::default()
    }
}

/// dedup_a.jsonl and dedup_b.jsonl, the latter with its question/answer fields mapped.
fn dedup_sources() -> Vec<DatasetSource> {
    vec![
        DatasetSource::new(fixture("dedup_a.jsonl")),
        DatasetSource::new(fixture("dedup_b.jsonl"))
            .with_field("question", "prompt")
            .with_field("answer", "completion"),
    ]
}

#[test]
fn limit_first_takes_the_head() {
    let src = DatasetSource::new(fixture("numbered.jsonl")).with_limit(5);
    let c = compose(&[src], &no_split()).unwrap();
    assert_eq!(numbers(&c.train), [0, 1, 2, 3, 4]);
    assert!(c.validation.is_empty());
    let row = &c.report.sources[0];
    assert_eq!((row.read, row.duplicates, row.taken), (40, 0, 5));
    // A limit above the size takes everything.
    let src = DatasetSource::new(fixture("numbered.jsonl")).with_limit(100);
    assert_eq!(compose(&[src], &no_split()).unwrap().train.len(), 40);
}

#[test]
fn random_sampling_is_seeded_and_reproducible() {
    let take = |seed| {
        let src = DatasetSource::new(fixture("numbered.jsonl"))
            .with_limit(10)
            .with_sampling(Sampling::Random { seed });
        numbers(&compose(&[src], &no_split()).unwrap().train)
    };
    let a = take(7);
    assert_eq!(a, take(7), "same seed, same choice");
    assert_ne!(a, take(8), "another seed, another choice");
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "file order kept: {a:?}");
    assert_ne!(a, (0..10).collect::<Vec<_>>(), "not simply the head");
}

#[test]
fn exact_and_normalized_dedup_counts() {
    // (duplicates, taken) per source; see the fixture README.
    let cases = [
        (Dedup::None, [(0, 6), (0, 4)]),
        (Dedup::Exact, [(1, 5), (1, 3)]),
        (Dedup::Normalized, [(2, 4), (2, 2)]),
    ];
    for (dedup, expected) in cases {
        let opts = ComposeOptions {
            dedup,
            ..Default::default()
        };
        let c = compose(&dedup_sources(), &opts).unwrap();
        let got: Vec<(usize, usize)> = c
            .report
            .sources
            .iter()
            .map(|s| (s.duplicates, s.taken))
            .collect();
        assert_eq!(got, expected, "{dedup:?}");
        assert_eq!(c.report.sources[0].read, 6);
        assert_eq!(c.report.sources[1].read, 4);
        assert_eq!(c.train.len(), expected[0].1 + expected[1].1);
    }
    // The first occurrence is kept: of the two spellings of the NF4 answer, the earlier one.
    let opts = ComposeOptions {
        dedup: Dedup::Normalized,
        ..Default::default()
    };
    let answers: Vec<String> = compose(&dedup_sources(), &opts)
        .unwrap()
        .train
        .iter()
        .map(|r| r.messages[1].content.clone())
        .collect();
    assert!(answers.contains(&"4-bit NormalFloat.".to_string()));
    assert!(!answers.contains(&"4-bit   normalfloat.".to_string()));
}

#[test]
fn the_limit_counts_distinct_records() {
    let src = DatasetSource::new(fixture("dedup_a.jsonl")).with_limit(5);
    let opts = ComposeOptions {
        dedup: Dedup::Normalized,
        ..Default::default()
    };
    let c = compose(&[src], &opts).unwrap();
    let row = &c.report.sources[0];
    assert_eq!((row.read, row.duplicates, row.taken), (6, 2, 4));
}

#[test]
fn split_sizes_disjointness_and_determinism() {
    let src = [DatasetSource::new(fixture("numbered.jsonl"))];
    let c = compose(&src, &with_fraction(0.1, 42)).unwrap();
    assert_eq!((c.train.len(), c.validation.len()), (36, 4));
    assert_eq!((c.report.train, c.report.validation), (36, 4));
    let train: BTreeSet<usize> = numbers(&c.train).into_iter().collect();
    let val: BTreeSet<usize> = numbers(&c.validation).into_iter().collect();
    assert!(train.is_disjoint(&val));
    assert_eq!(train.union(&val).count(), 40);
    assert!(numbers(&c.train).windows(2).all(|w| w[0] < w[1]));

    let again = compose(&src, &with_fraction(0.1, 42)).unwrap();
    assert_eq!(numbers(&again.validation), numbers(&c.validation));
    let other = compose(&src, &with_fraction(0.1, 43)).unwrap();
    assert_ne!(numbers(&other.validation), numbers(&c.validation));

    // Fractions round up (datasets' train_test_split): 40 * 0.01 = 0.4 -> 1.
    assert_eq!(
        compose(&src, &with_fraction(0.01, 0))
            .unwrap()
            .validation
            .len(),
        1
    );
    let by_size = ComposeOptions {
        validation_size: Some(7),
        ..Default::default()
    };
    let c = compose(&src, &by_size).unwrap();
    assert_eq!((c.train.len(), c.validation.len()), (33, 7));
}

#[test]
fn bad_split_options_are_config_errors() {
    let src = [DatasetSource::new(fixture("numbered.jsonl"))];
    let both = ComposeOptions {
        validation_fraction: Some(0.1),
        validation_size: Some(3),
        ..Default::default()
    };
    let too_many = ComposeOptions {
        validation_size: Some(40),
        ..Default::default()
    };
    let cases = [
        (both, "validation_fraction"),
        (with_fraction(1.0, 0), "validation_fraction"),
        (with_fraction(-0.1, 0), "validation_fraction"),
        (too_many, "validation_size"),
    ];
    for (opts, field) in cases {
        match compose(&src, &opts) {
            Err(Error::Config { field: f, .. }) => assert_eq!(f, field, "{opts:?}"),
            other => panic!("{opts:?}: expected a config error, got {other:?}"),
        }
    }
    assert!(matches!(
        compose(&[], &no_split()),
        Err(Error::Config { .. })
    ));
    let missing = compose(&[DatasetSource::new(fixture("nope.jsonl"))], &no_split()).unwrap_err();
    assert!(missing.to_string().contains("nope.jsonl"), "{missing}");
}

#[test]
fn write_then_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("composed");
    let mut sources = dedup_sources();
    sources.push(DatasetSource::new(fixture("numbered.jsonl")).with_limit(10));
    let c = compose(&sources, &with_fraction(0.2, 1)).unwrap();
    let written = c.write_jsonl(&out).unwrap();
    assert_eq!(
        written,
        [out.join("train.jsonl"), out.join("validation.jsonl")]
    );
    for (path, part) in written.iter().zip([&c.train, &c.validation]) {
        let back = load_records(path).unwrap();
        let a: Vec<_> = back.iter().map(|r| &r.messages).collect();
        let b: Vec<_> = part.iter().map(|r| &r.messages).collect();
        assert_eq!(a, b, "{}", path.display());
    }
    // Without validation data only train.jsonl is written.
    let c = compose(&sources, &with_fraction(0.0, 1)).unwrap();
    let only = dir.path().join("train_only");
    assert_eq!(c.write_jsonl(&only).unwrap(), [only.join("train.jsonl")]);
}

#[test]
fn an_unwritable_directory_is_named() {
    // Tests run as root, so chmod would not stop the write: a directory under a regular file does.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file.txt");
    std::fs::write(&file, "not a directory").unwrap();
    let c = compose(&dedup_sources(), &with_fraction(0.0, 0)).unwrap();
    let err = c.write_jsonl(file.join("out")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("file.txt/out"), "{err}");
}

#[test]
fn the_report_is_a_small_table() {
    let c = compose(&dedup_sources(), &with_fraction(0.25, 3)).unwrap();
    let text = c.report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].contains("source") && lines[0].contains("duplicates"));
    assert!(lines[1].contains("dedup_a.jsonl"));
    let cells: Vec<&str> = lines[2].split_whitespace().collect();
    assert!(cells[0].ends_with("dedup_b.jsonl"));
    assert_eq!(&cells[1..], ["4", "1", "3"]);
    // 8 records, ceil(8 * 0.25) = 2 for validation.
    assert_eq!(lines[3], "train 6, validation 2");
}
