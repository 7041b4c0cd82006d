#!/usr/bin/env python3
"""Peer benchmark: greedy generation speed of llama-cpp-python on a GGUF.

The peer side of tunelab's generation benchmark.  It loads the GGUF once
(n_ctx=512), then for each run: resets the context, evaluates the prompt
(timed separately), and generates N tokens greedily (argmax of the last
logits, no sampling, no penalties; EOS does not stop the run, so every run
decodes exactly N tokens).  Only the N decode steps are in the tok/s figure.

Setup: see scripts/ref/make_fixtures.py (same venv, scripts/ref/requirements.txt).

Usage::

    /tmp/pyref/venv/bin/python benches/peer_llamacpp.py \
        --gguf ~/.cache/tunelab/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompt "Once upon a time" --tokens 64 --runs 5 --threads 2

Prints one JSON line:
{"peer": "llama-cpp-python", "version": ..., "tokens": N, "runs": [tok/s ...],
 "median_tok_s": ..., "prompt_tokens": ..., "median_prompt_ms": ...}
"""

import argparse
import json
import os
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description="llama-cpp-python greedy generation speed")
    ap.add_argument("--gguf", required=True, help="path to the .gguf model")
    ap.add_argument("--prompt", default="Once upon a time",
                    help="prompt text (tokenized with special tokens parsed, no BOS)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens to generate per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=os.path.expanduser(args.gguf), n_ctx=512, n_batch=512,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    prompt_ids = llm.tokenize(args.prompt.encode("utf-8"), add_bos=False, special=True)
    if len(prompt_ids) + args.tokens > llm.n_ctx():
        ap.error(f"prompt ({len(prompt_ids)}) + tokens ({args.tokens}) exceeds n_ctx {llm.n_ctx()}")

    ctx, n_vocab = llm._ctx.ctx, llm.n_vocab()
    tok_s, prompt_ms = [], []
    for _ in range(args.runs):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt_ids)
        t1 = time.perf_counter()
        for _ in range(args.tokens):
            # llm.scores is only filled with logits_all=True in 0.3.x: read the
            # last output row from llama.cpp directly (n_vocab floats, no copy).
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            t = int(np.argmax(logits))
            llm.eval([t])
        t2 = time.perf_counter()
        prompt_ms.append((t1 - t0) * 1e3)
        tok_s.append(args.tokens / (t2 - t1))

    print(json.dumps({
        "peer": "llama-cpp-python",
        "version": llama_cpp.__version__,
        "tokens": args.tokens,
        "runs": [round(x, 2) for x in tok_s],
        "median_tok_s": round(statistics.median(tok_s), 2),
        "prompt_tokens": len(prompt_ids),
        "median_prompt_ms": round(statistics.median(prompt_ms), 2),
    }))


if __name__ == "__main__":
    main()
