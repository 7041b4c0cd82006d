#!/usr/bin/env python3
"""Make tiny random Hugging Face models, one per family tunelab supports, with reference logits.

tunelab's `tests/hf_families.rs` loads each directory with `load_hf_dir` and compares its
logits with the ones transformers computed here (an independent implementation of the same
architectures), then checks the KV-cache path and the `save_pretrained` round trip.

Run (from the repo root; a few seconds on CPU, nothing is downloaded)::

    /tmp/pyref/venv/bin/python scripts/ref/make_tiny_models.py [--out tests/fixtures/tiny_hf]

Made with Python 3.11, torch 2.15.0, transformers 5.23.0, safetensors 0.8.0 (see
scripts/ref/requirements.txt).  The output is deterministic for those versions
(torch.manual_seed per model, float32, CPU).

For every variant in VARIANTS it writes ``<out>/<name>/``:

config.json, model.safetensors (+ generation_config.json)
    ``model.save_pretrained(dir, safe_serialization=True)`` of a randomly initialised
    float32 ``*ForCausalLM``.  Every parameter is re-drawn from N(0, 0.2²) -- biases
    included, which transformers would initialise at zero -- and every RMSNorm gain from
    1 + N(0, 0.1²), so that each tensor visibly changes the logits.  No tokenizer.

logits.safetensors
    ``input_ids`` (I64 [2, 12], the two rows of INPUT_IDS) and ``logits`` (F32 [2, 12, 128]),
    ``model(input_ids).logits`` in eval mode, eager attention, no attention mask (plain
    causal attention over the 12 positions).

Variants (vocab 128, 2 layers, 4 heads, 2 kv heads, max_position_embeddings 64):

llama_untied   LlamaConfig, hidden 64, intermediate 96, untied lm_head, rope_theta 1e4.
llama3_scaled  LlamaConfig, hidden 32 with head_dim 16 (q_proj is 64x32), tied, rope_theta
               5e5 and Llama 3 rope scaling (factor 8, low 1, high 4, original 48). With
               head_dim 16 the 8 frequencies then fall in all three regimes (kept, smoothed,
               divided by the factor); the script asserts that some change and some do not.
qwen2          Qwen2Config, hidden 32, intermediate 64, tied, non-zero q/k/v biases.
mistral        MistralConfig, hidden 64, intermediate 96, untied, sliding_window 4096 (longer
               than any test sequence, so full causal attention is exact).
llama_bias     LlamaConfig, hidden 32, intermediate 64, untied, attention_bias=True (q, k, v
               AND o_proj get a bias in transformers) and mlp_bias=True.
"""

import argparse
import json
import math
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 128
SEQ = 12
# Two fixed rows of token ids (< VOCAB); the second repeats ids so attention sees duplicates.
INPUT_IDS = [
    [1, 17, 99, 5, 64, 127, 33, 2, 80, 41, 12, 100],
    [7, 7, 120, 56, 0, 91, 7, 23, 64, 3, 118, 45],
]

COMMON = dict(
    vocab_size=VOCAB,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
)

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 48,
}

VARIANTS = {
    "llama_untied": (
        LlamaForCausalLM,
        LlamaConfig(
            **COMMON,
            hidden_size=64,
            intermediate_size=96,
            tie_word_embeddings=False,
            rope_theta=10000.0,
        ),
    ),
    "llama3_scaled": (
        LlamaForCausalLM,
        LlamaConfig(
            **COMMON,
            hidden_size=32,
            head_dim=16,
            intermediate_size=64,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling=dict(LLAMA3_SCALING),
        ),
    ),
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config(
            **COMMON,
            hidden_size=32,
            intermediate_size=64,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
        ),
    ),
    "mistral": (
        MistralForCausalLM,
        MistralConfig(
            **COMMON,
            hidden_size=64,
            intermediate_size=96,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            sliding_window=4096,
        ),
    ),
    "llama_bias": (
        LlamaForCausalLM,
        LlamaConfig(
            **COMMON,
            hidden_size=32,
            intermediate_size=64,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            attention_bias=True,
            mlp_bias=True,
        ),
    ),
}


def llama3_inv_freq_check(head_dim: int, theta: float, s: dict) -> None:
    """Asserts that Llama 3 scaling changes some of the head's frequencies and keeps others.

    Uses transformers' own rope functions, so it checks what the model really uses."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled = LlamaConfig(
        **COMMON, hidden_size=32, head_dim=head_dim, rope_theta=theta, rope_scaling=dict(s)
    )
    plain = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv, _ = ROPE_INIT_FUNCTIONS["llama3"](scaled, "cpu")
    same = torch.isclose(inv, plain, rtol=0, atol=0)
    divided = torch.isclose(inv, plain / s["factor"], rtol=1e-6, atol=0)
    wavelen = [2 * math.pi / f for f in plain.tolist()]
    print(f"  llama3 inv_freq, head_dim {head_dim}, theta {theta}:")
    for w, p, q, k, d in zip(wavelen, plain.tolist(), inv.tolist(), same.tolist(), divided.tolist()):
        kind = "kept" if k else ("divided" if d else "smoothed")
        print(f"    wavelen {w:9.2f}  {p:.6e} -> {q:.6e}  {kind}")
    assert same.any(), "llama3 scaling should keep some high frequencies"
    assert (~same).any(), "llama3 scaling should change some low frequencies"
    assert (~same & ~divided).any(), "some frequency should fall in the smoothed band"


@torch.no_grad()
def reinit(model: torch.nn.Module, std: float = 0.2) -> None:
    """Re-draws every parameter: N(0, std²), RMSNorm gains 1 + N(0, 0.1²). Biases are non-zero."""
    for name, p in model.named_parameters():
        if "norm" in name:
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        else:
            p.copy_(std * torch.randn_like(p))


def make(name: str, cls, config, out: Path, seed: int) -> None:
    torch.manual_seed(seed)
    model = cls._from_config(config, dtype=torch.float32, attn_implementation="eager")
    reinit(model)
    model.eval()
    n_bias = sum(1 for n, _ in model.named_parameters() if n.endswith(".bias"))
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    ids = torch.tensor(INPUT_IDS, dtype=torch.int64)
    assert ids.shape == (2, SEQ) and int(ids.max()) < VOCAB
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float().contiguous()
    assert logits.shape == (2, SEQ, VOCAB)
    save_file({"input_ids": ids, "logits": logits}, str(d / "logits.safetensors"))
    cfg = json.loads((d / "config.json").read_text())
    print(
        f"{name:14s} {type(model).__name__:20s} params {model.num_parameters():6d} "
        f"biases {n_bias:2d} tied {cfg.get('tie_word_embeddings')} "
        f"logits std {logits.std():.3f} max |.| {logits.abs().max():.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/tiny_hf")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    llama3_inv_freq_check(16, 500000.0, LLAMA3_SCALING)
    for seed, (name, (cls, config)) in enumerate(VARIANTS.items()):
        make(name, cls, config, out, seed=1000 + seed)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
