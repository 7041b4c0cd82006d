#!/usr/bin/env python3
"""Check that transformers loads what tunelab's `save_pretrained` writes (a dev check, not CI).

The forward direction (tunelab loading transformers' checkpoints) is tests/hf_families.rs.
This is the reverse:

1. Tiny models (always, unless --no-tiny).  Runs

       cargo run --example save_for_transformers -- tiny <tmp>

   which loads every fixture of tests/fixtures/tiny_hf with tunelab and saves it again with
   `tunelab::model::load::save_pretrained` to <tmp>/<name>.  Each saved directory is loaded
   with `AutoModelForCausalLM.from_pretrained(dir, dtype=float32)` (eager attention); the
   script fails if transformers reports missing, unexpected or mismatched tensors, and prints
   the max abs difference between its logits on the fixture's input_ids and the fixture's
   logits (which transformers computed from the original checkpoint).

2. SmolLM2 (with --smollm2 DIR).  If DIR has no config.json (or with --resave), runs

       cargo run --example save_for_transformers -- smollm2 DIR

   which loads SmolLM2-135M-Instruct from the Q4_1 GGUF with tunelab (dequantized to f32) and
   saves model and tokenizer to DIR.  Then transformers loads DIR, and separately the GGUF
   itself (`from_pretrained(gguf_dir, gguf_file=...)`, its own dequantizer and tokenizer):
   - logits of both models on a few texts (ids from the GGUF tokenizer): max abs diff;
   - `AutoTokenizer.from_pretrained(DIR)` against the GGUF tokenizer on several texts
     (encode without and with special tokens, and decode), and against the llama.cpp ids
     recorded in tests/fixtures/smollm2/tokenize.json.

Run from the repo root (cargo builds the example first; 2 threads)::

    /tmp/pyref/venv/bin/python scripts/ref/check_save_pretrained.py [--smollm2 /tmp/smollm2_saved]

Made with Python 3.11, torch 2.15.0, transformers 5.23.0 (scripts/ref/requirements.txt).
Exit status 1 if any figure is over --tol (1e-4) or a tokenization differs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests/fixtures/tiny_hf"
FAMILIES = ["llama_untied", "llama3_scaled", "qwen2", "mistral", "llama_bias"]
# Where the library and scripts/fetch_smollm2.py keep it: $TUNELAB_CACHE, default ~/.cache/tunelab.
DEFAULT_GGUF = Path(os.environ.get("TUNELAB_CACHE") or os.path.expanduser("~/.cache/tunelab")) / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"

LOGIT_TEXTS = [
    "The history of the bicycle begins in the early nineteenth century, when inventors in "
    "Europe experimented with two-wheeled machines.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
]
TOKENIZER_TEXTS = [
    "Hello, world! I don't think we'll need that.",
    "  leading spaces,\ttabs and\n\nnewlines  ",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "Тонкая настройка моделей; 微调大型语言模型; emoji 🦀👍🏽",
    "1234567890 3.14159 x=100000 v0.11.1",
    "fn main() { println!(\"{}\", 1 + 2); }",
]


def save_with_tunelab(what: str, out: str, threads: int) -> None:
    env = dict(os.environ, CARGO_BUILD_JOBS=str(threads))
    cmd = ["cargo", "run", "--example", "save_for_transformers", "--", what, out]
    print(f"$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def load_hf(path, **kw):
    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True, **kw
    )
    model.eval()
    return model, info


def check_tiny(save_dir: Path, tol: float, threads: int) -> bool:
    import torch
    from safetensors.torch import load_file

    save_with_tunelab("tiny", str(save_dir), threads)
    ok = True
    print(f"\ntransformers loading tunelab's save_pretrained, vs the fixture logits (tol {tol:g}):")
    for name in FAMILIES:
        ref = load_file(str(FIXTURES / name / "logits.safetensors"))
        model, info = load_hf(save_dir / name)
        bad = {k: v for k, v in info.items() if v}
        with torch.no_grad():
            logits = model(input_ids=ref["input_ids"]).logits
        d = (logits - ref["logits"]).abs().max().item()
        status = "ok" if d <= tol and not bad else "FAIL"
        ok &= status == "ok"
        print(f"  {name:14s} {type(model).__name__:20s} max |Δ| = {d:.3e}  {status}"
              + (f"  loading info: {bad}" if bad else ""))
    return ok


def check_smollm2(out: Path, gguf: Path, resave: bool, tol: float, threads: int) -> bool:
    import torch
    from transformers import AutoTokenizer

    if resave or not (out / "config.json").is_file():
        save_with_tunelab("smollm2", str(out), threads)
    ok = True
    gtok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    stok = AutoTokenizer.from_pretrained(out)
    print(f"\nSmolLM2 tokenizer: AutoTokenizer({out}) [{type(stok).__name__}] vs the GGUF's "
          f"[{type(gtok).__name__}]:")
    for text in TOKENIZER_TEXTS:
        a0 = stok.encode(text, add_special_tokens=False)
        b0 = gtok.encode(text, add_special_tokens=False)
        a1 = stok.encode(text)
        b1 = gtok.encode(text)
        da, db = stok.decode(a0), gtok.decode(b0)
        same = a0 == b0 and a1 == b1 and da == db
        ok &= same
        print(f"  {'same' if same else 'DIFF'}  {len(a0):3d} ids  {text[:40]!r}"
              + ("" if same else f"\n    saved {a0} / {a1}\n    gguf  {b0} / {b1}\n"
                 f"    decode {da!r} vs {db!r}"))
    cases = json.loads((ROOT / "tests/fixtures/smollm2/tokenize.json").read_text())["cases"]
    n_same = 0
    for c in cases:
        ids = stok.encode(c["text"], add_special_tokens=False)
        if ids == c["llama_cpp"]:
            n_same += 1
        else:
            print(f"  DIFF vs llama.cpp on case {c['name']}")
    ok &= n_same == len(cases)
    print(f"  vs llama.cpp ids in tests/fixtures/smollm2/tokenize.json: {n_same}/{len(cases)} same")

    saved, sinfo = load_hf(out)
    ref, _ = load_hf(gguf.parent, gguf_file=gguf.name)
    bad = {k: v for k, v in sinfo.items() if v}
    if bad:
        ok = False
        print(f"  loading info of the saved dir: {bad}")
    print(f"\nSmolLM2 logits: transformers on tunelab's saved dir vs transformers on the GGUF "
          f"(tol {tol:g}):")
    for text in LOGIT_TEXTS:
        ids = torch.tensor([gtok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            a = saved(input_ids=ids).logits
            b = ref(input_ids=ids).logits
        d = (a - b).abs().max().item()
        same_argmax = bool((a.argmax(-1) == b.argmax(-1)).all())
        ok &= d <= tol
        print(f"  {ids.shape[1]:3d} ids  max |Δ| = {d:.3e}  (max |logit| {b.abs().max():.1f}, "
              f"argmax equal: {same_argmax})  {text[:40]!r}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-dir", type=Path, help="where to save the tiny models (default: a temp dir)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny models")
    ap.add_argument("--smollm2", type=Path, metavar="DIR", help="check SmolLM2 saved by tunelab to DIR")
    ap.add_argument("--resave", action="store_true", help="re-save SmolLM2 even if DIR has a config.json")
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    ok = True
    if not args.no_tiny:
        if args.save_dir:
            ok &= check_tiny(args.save_dir.resolve(), args.tol, args.threads)
        else:
            with tempfile.TemporaryDirectory(prefix="tunelab_saved_") as d:
                ok &= check_tiny(Path(d), args.tol, args.threads)
    if args.smollm2:
        ok &= check_smollm2(args.smollm2.resolve(), args.gguf, args.resave, args.tol, args.threads)
    print("\nall ok" if ok else "\nFAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
