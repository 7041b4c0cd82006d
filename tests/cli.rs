//! The `tunelab` binary end to end. `tunelab sft` on the SmolLM2 GGUF (`common::smollm2_gguf`:
//! fetched when not cached, else the test fails saying how to get it): two LoRA steps, the
//! adapter in PEFT's layout, the merged model in HF's, the merge equal to W + (alpha/r)·B·A,
//! and the merged directory loads back.

mod common;

use std::process::Command;

use tunelab::{LoadOptions, Pretrained};

#[test]
fn sft_trains_saves_merges_and_answers() {
    let gguf = common::smollm2_gguf();
    let out = tempfile::tempdir().unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/persona.jsonl");
    let run = Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["sft", "--model"])
        .arg(&gguf)
        .args(["--device", "cpu", "--data", data, "--eval-fraction", "0.05"])
        .args(["--steps", "2", "--batch-size", "2", "--max-length", "64"])
        .arg("--gradient-checkpointing")
        .args(["--prompt", "Hi!", "--max-new-tokens", "4", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");

    // The compose report: 260 records, ceil(0.05 · 260) = 13 held out.
    assert!(stdout.contains("train 247, validation 13"), "{stdout}");
    // peft's line for r = 6 on all 210 linear layers of SmolLM2-135M.
    assert!(
        stdout.contains("trainable params: 1,831,680 || all params: 136,346,688"),
        "{stdout}"
    );
    assert!(stdout.contains("2 steps (2/2)"), "{stdout}");
    let worst: f32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("verify_merge over 210 layers: "))
        .and_then(|l| l.rsplit("= ").next())
        .expect("a verify_merge line")
        .parse()
        .unwrap();
    assert!(
        worst < 1e-5,
        "merge differs from W + (alpha/r)·B·A by {worst}"
    );

    for f in [
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            out.path().join("merged").join(f).is_file(),
            "merged/{f} missing"
        );
    }
    assert!(out.path().join("loss.svg").is_file());
    let merged = Pretrained::load_path(out.path().join("merged"), &LoadOptions::default()).unwrap();
    assert_eq!(merged.model.config().num_hidden_layers, 30);
    assert!(stdout.contains("== merged model"), "{stdout}");
}

/// `tunelab generate` on an instruct model with a raw question: SmolLM2-Instruct ends at once
/// (its first token is `<|im_end|>`), so stdout is empty and stderr says to use `--chat`; with
/// `--chat` the same prompt gets an answer and no hint.
#[test]
fn generate_hints_at_chat_when_an_instruct_model_ends_at_once() {
    let gguf = common::smollm2_gguf();
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(["generate", "--device", "cpu", "--model"])
            .arg(&gguf)
            .args(["--prompt", "What is the capital of France?"])
            .args(["--max-new-tokens", "8"])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
        (stdout, stderr)
    };
    let (stdout, stderr) = run(&[]);
    assert_eq!(stdout.trim(), "", "{stdout}");
    assert!(
        stderr.contains("stopped at once") && stderr.contains("--chat"),
        "{stderr}"
    );
    let (stdout, stderr) = run(&["--chat"]);
    assert!(!stdout.trim().is_empty(), "{stderr}");
    assert!(!stderr.contains("stopped at once"), "{stderr}");
}
