#!/usr/bin/env python3
"""Reference fixtures for LoRA's extras, made with Hugging Face peft: ``bias``, ``modules_to_save``
(also with tied embeddings), PiSSA initialisation and its conversion to plain LoRA, and merging a
QLoRA adapter into a 4-bit base (peft re-quantizes with bitsandbytes).

Run from the repo root (CPU, float32, one thread, nothing is downloaded; about half a minute)::

    /tmp/pyref/venv/bin/python scripts/ref/make_peft_extras.py [--out tests/fixtures/peft/extras]

Made with Python 3.11, torch 2.15.0, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2 (see
scripts/ref/requirements.txt).  It writes ``<out>/``:

cases.json
    Per adapter case: the LoraConfig, ``print_trainable_parameters()``'s line, the trainable
    parameter names that are not lora_A/lora_B, the keys of ``adapter_model.safetensors`` and
    the warnings peft gave; plus the PiSSA and requantization numbers printed below.

<case>/adapter_config.json, <case>/adapter_model.safetensors  (``save_pretrained``)
<case>/expected.safetensors
    input_ids I64 [2, 12] (the base model's fixture ids), logits_adapted, logits_merged
    (after ``merge_and_unload()``) and logits_disabled (``with pm.disable_adapter()``), F32.
    The adapter was "trained" by hand so that every trained tensor shows: lora_B ~ N(0, 0.1²),
    every trainable bias and modules_to_save copy += N(0, 0.05²)·(1 + |x|).

pissa_linear.safetensors
    PiSSA (``init_lora_weights="pissa"``, exact SVD) on single linear layers: for each of
    ``tall`` (out 48, in 32) and ``wide`` (out 24, in 40), r=4, lora_alpha=8:
    ``{name}.W`` (the original weight), ``{name}.A``, ``{name}.B``, ``{name}.W_res`` (the base
    weight after initialisation), and for ``decay`` (out 40, in 32, singular values 2^-i) with
    ``pissa_niter_2`` the same four tensors.

pissa_qv/   a PiSSA adapter (r=4, α=8, q_proj/v_proj of tiny_hf/llama_untied) saved as is after
    "training" (lora_B += N(0, 0.02²)), with expected.safetensors (logits_adapted).
pissa_qv_lora/   the same adapter converted to plain LoRA with
    ``save_pretrained(..., path_initial_model_for_weight_conversion=...)`` (r=8, α=16), with
    expected.safetensors: logits of the converted adapter loaded on the original base.

qlora_merge/   an adapter (r=4, α=8, q,v) on tiny_hf/llama_untied loaded in bitsandbytes 4-bit
    (NF4, double quant, compute f32, blocksize 64), and expected.safetensors with, for
    q_proj/v_proj of both layers, ``before.{path}`` (dequantized base) and ``merged.{path}``
    (the weight after ``merge_and_unload()``: peft dequantizes, adds s·B·A in f32 and
    quantizes again with bitsandbytes; dequantized here), and logits_merged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

torch.set_num_threads(1)

import peft  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

REPO = Path(__file__).resolve().parents[2]
TINY = "tests/fixtures/tiny_hf"

# name, base model, LoraConfig kwargs
CASES = [
    ("bias_all", "llama_bias", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], bias="all")),
    ("bias_lora_only", "llama_bias", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], bias="lora_only")),
    ("mts_lm_head", "llama_untied", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
    # peft matches modules_to_save by str.endswith: "norm" is every RMSNorm (input_layernorm, ...).
    ("mts_norm", "llama_untied", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["norm"])),
    # qwen2 ties lm_head to embed_tokens: the copy unties (peft warns).
    ("mts_embed_tied", "qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens"])),
    ("mts_lm_head_tied", "qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
    # ensure_weight_tying: one trainable copy shared by embed_tokens and lm_head.
    (
        "mts_lm_head_tied_ensure",
        "qwen2",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"], ensure_weight_tying=True),
    ),
]


def base_model(name: str):
    m = AutoModelForCausalLM.from_pretrained(f"{TINY}/{name}", dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def input_ids_of(name: str) -> torch.Tensor:
    return load_file(REPO / TINY / name / "logits.safetensors")["input_ids"]


@torch.no_grad()
def logits_of(model, ids) -> torch.Tensor:
    return model(input_ids=ids).logits.float().contiguous()


def line_of(pm) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        pm.print_trainable_parameters()
    return buf.getvalue().rstrip("\n")


@torch.no_grad()
def fake_training(pm, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    for name, p in pm.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if "lora_A" in name:
            continue
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        else:  # biases, modules_to_save copies
            p.add_(torch.randn(p.shape, generator=gen) * 0.05 * (1 + p.abs()))


def make_case(out: Path, name: str, base: str, kw: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_peft_model(base_model(base), LoraConfig(task_type="CAUSAL_LM", **kw))
    warns = sorted({str(w.message)[:160] for w in caught if "deprecated" not in str(w.message)})
    entry = {
        "base": f"{TINY}/{base}",
        "config": kw,
        "line": line_of(pm),
        "trainable_other": sorted(n for n, p in pm.named_parameters() if p.requires_grad and "lora_" not in n),
        "warnings": warns,
    }
    fake_training(pm, 1000 + seed)
    pm.eval()
    ids = input_ids_of(base)
    adapted = logits_of(pm, ids)
    with pm.disable_adapter():
        disabled = logits_of(pm, ids)
    case_dir = out / name
    shutil.rmtree(case_dir, ignore_errors=True)
    pm.save_pretrained(case_dir)
    (case_dir / "README.md").unlink(missing_ok=True)
    entry["saved_keys_other"] = sorted(k for k in load_file(case_dir / "adapter_model.safetensors") if "lora_" not in k)
    merged_model = pm.merge_and_unload()
    merged = logits_of(merged_model, ids)
    entry["merged_tie_word_embeddings"] = bool(merged_model.config.tie_word_embeddings)
    save_file(
        {"input_ids": ids.contiguous(), "logits_adapted": adapted, "logits_merged": merged, "logits_disabled": disabled},
        case_dir / "expected.safetensors",
        metadata={"peft": peft.__version__},
    )
    # Reload through peft's loader: the saved file alone reproduces the adapted logits.
    back = PeftModel.from_pretrained(base_model(base), str(case_dir))
    back.eval()
    entry["reload_max_diff"] = (logits_of(back, ids) - adapted).abs().max().item()
    entry["adapted_minus_merged"] = (adapted - merged).abs().max().item()
    print(f"  {name:24s} {entry['line']}   reload {entry['reload_max_diff']:.1e}   merged {entry['adapted_minus_merged']:.1e}")
    for w in warns:
        print(f"    warning: {w}")
    assert entry["reload_max_diff"] < 1e-5 and entry["adapted_minus_merged"] < 1e-4
    return entry


class One(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.proj = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(w)

    def forward(self, x):
        return self.proj(x)


def pissa_on(w: torch.Tensor, init: str, r: int = 4, alpha: int = 8):
    torch.manual_seed(0)  # svd_lowrank draws its random start from torch's generator
    pm = get_peft_model(One(w.clone()), LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], init_lora_weights=init))
    lay = pm.base_model.model.proj
    a = lay.lora_A["default"].weight.detach().clone()
    b = lay.lora_B["default"].weight.detach().clone()
    w_res = lay.base_layer.weight.detach().clone()
    s = lay.scaling["default"]
    return a, b, w_res, s


def make_pissa_linear(out: Path) -> dict:
    gen = torch.Generator().manual_seed(7)
    tensors, info = {}, {}
    mats = {"tall": torch.randn(48, 32, generator=gen) * 0.2, "wide": torch.randn(24, 40, generator=gen) * 0.2}
    # A spectrum that decays (2^-i): randomized SVD with 2 power iterations finds the top 4 well.
    u, _ = torch.linalg.qr(torch.randn(40, 32, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(32, 32, generator=gen, dtype=torch.float64))
    sv = torch.tensor([2.0 ** (-i) for i in range(32)], dtype=torch.float64)
    mats["decay"] = ((u * sv) @ v.T).float()
    for name, w in mats.items():
        init = "pissa_niter_2" if name == "decay" else "pissa"
        a, b, w_res, s = pissa_on(w, init)
        dw = s * b @ a
        # Checks of the formulas: W = W_res + s·B·A, and s·B·A is the best rank-4 approximation.
        U, S, Vh = torch.linalg.svd(w.double(), full_matrices=False)
        best = (U[:, :4] * S[:4]) @ Vh[:4]
        info[name] = {
            "init": init,
            "scaling": s,
            "max_abs_W_minus_Wres_minus_dW": (w - w_res - dw).abs().max().item(),
            "max_abs_dW_minus_best_rank4": (dw.double() - best).abs().max().item(),
            "A_rows_equal_sqrt_S_times_Vh": torch.allclose(
                a.double().abs(), (torch.sqrt(S[:4] / s)[:, None] * Vh[:4]).abs(), atol=1e-5
            ),
        }
        print(f"  pissa {name:6s} {init:14s} {info[name]}")
        for k, t in (("W", w), ("A", a), ("B", b), ("W_res", w_res)):
            tensors[f"{name}.{k}"] = t.contiguous()
    save_file(tensors, out / "pissa_linear.safetensors", metadata={"peft": peft.__version__})
    return info


def make_pissa_model(out: Path) -> dict:
    ids = input_ids_of("llama_untied")
    base_logits = logits_of(base_model("llama_untied"), ids)
    kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights="pissa")
    pm = get_peft_model(base_model("llama_untied"), LoraConfig(task_type="CAUSAL_LM", **kw))
    pm.eval()
    at_init = (logits_of(pm, ids) - base_logits).abs().max().item()
    init_dir = Path(tempfile.mkdtemp()) / "pissa_init"
    pm.save_pretrained(init_dir)  # the initial A0, B0: what the conversion subtracts
    with torch.no_grad():
        gen = torch.Generator().manual_seed(11)
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    adapted = logits_of(pm, ids)
    d_as_is, d_lora = out / "pissa_qv", out / "pissa_qv_lora"
    for d in (d_as_is, d_lora):
        shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d_as_is)
    pm.save_pretrained(d_lora, path_initial_model_for_weight_conversion=str(init_dir))
    for d in (d_as_is, d_lora):
        (d / "README.md").unlink(missing_ok=True)
    # The converted adapter is plain LoRA (r = 8) on the ORIGINAL base.
    conv = PeftModel.from_pretrained(base_model("llama_untied"), str(d_lora))
    conv.eval()
    conv_logits = logits_of(conv, ids)
    # The as-is adapter loaded on the original base: peft re-runs the PiSSA SVD on the base while
    # creating the layers (W -> W_res), then loads A and B from the file.
    as_is = PeftModel.from_pretrained(base_model("llama_untied"), str(d_as_is))
    as_is.eval()
    as_is_logits = logits_of(as_is, ids)
    save_file({"input_ids": ids, "logits_adapted": adapted}, d_as_is / "expected.safetensors")
    save_file({"input_ids": ids, "logits_adapted": conv_logits}, d_lora / "expected.safetensors")
    info = {
        "config": kw,
        "max_abs_logits_at_init_minus_base": at_init,
        "converted_on_original_base_minus_trained": (conv_logits - adapted).abs().max().item(),
        "as_is_reloaded_on_original_base_minus_trained": (as_is_logits - adapted).abs().max().item(),
        "converted_config": json.loads((d_lora / "adapter_config.json").read_text()),
    }
    print(
        f"  pissa model: |logits(init) - base| = {at_init:.1e}; converted on original base vs trained "
        f"{info['converted_on_original_base_minus_trained']:.1e}; as-is reloaded "
        f"{info['as_is_reloaded_on_original_base_minus_trained']:.1e}"
    )
    return info


def make_qlora_merge(out: Path) -> dict:
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    m = AutoModelForCausalLM.from_pretrained(
        f"{TINY}/llama_untied", quantization_config=q, device_map="cpu", dtype=torch.float32, attn_implementation="eager"
    )
    paths = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]

    def deq(model, path):
        mod = model.get_submodule(path)
        mod = getattr(mod, "base_layer", mod)
        return bnb.functional.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float().contiguous()

    tensors = {f"before.{p}": deq(m, p) for p in paths}
    torch.manual_seed(3)
    pm = get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    d = out / "qlora_merge"
    shutil.rmtree(d, ignore_errors=True)
    pm.save_pretrained(d)
    (d / "README.md").unlink(missing_ok=True)
    ids = input_ids_of("llama_untied")
    merged = pm.merge_and_unload()
    info = {"rounding": {}}
    ad = load_file(d / "adapter_model.safetensors")
    for p in paths:
        w = deq(merged, p)
        tensors[f"merged.{p}"] = w
        delta = 2.0 * ad[f"base_model.model.{p}.lora_B.weight"] @ ad[f"base_model.model.{p}.lora_A.weight"]
        exact = tensors[f"before.{p}"] + delta
        info["rounding"][p] = {
            "max_abs_merged_minus_requantized": (exact - w).abs().max().item(),
            "max_abs_delta": delta.abs().max().item(),
        }
    tensors["input_ids"] = ids
    tensors["logits_merged"] = logits_of(merged, ids)
    save_file(tensors, d / "expected.safetensors", metadata={"bitsandbytes": bnb.__version__})
    print(f"  qlora merge: {info['rounding']}")
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/peft/extras")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.chdir(REPO)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"peft {peft.__version__}, torch {torch.__version__}")
    result = {"peft": peft.__version__, "cases": {}}
    for i, (name, base, kw) in enumerate(CASES):
        result["cases"][name] = make_case(out, name, base, kw, seed=i)
    result["pissa_linear"] = make_pissa_linear(out)
    result["pissa_model"] = make_pissa_model(out)
    result["qlora_merge"] = make_qlora_merge(out)
    (out / "cases.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total:,} bytes)")
    assert total < 800_000, total


if __name__ == "__main__":
    main()
