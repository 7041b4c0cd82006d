#!/usr/bin/env python3
"""Make LoRA/DoRA reference fixtures with Hugging Face peft, and check adapters saved by tunelab.

tunelab's Rust LoRA code (src/peft/) must read and write adapters in peft's on-disk format
(``adapter_config.json`` + ``adapter_model.safetensors``), compute the same adapted logits, merge
the same way, and count trainable parameters the way ``PeftModel.print_trainable_parameters``
does.  This script produces the reference side with peft itself.

Run from the repo root (CPU, float32, one thread, nothing is downloaded; about a minute)::

    /tmp/pyref/venv/bin/python scripts/ref/make_peft_fixtures.py [--out tests/fixtures/peft] [--skip-4bit]

Made with Python 3.11, torch 2.15.0, transformers 5.23.0, peft 0.21.2, bitsandbytes 0.50.2,
safetensors 0.8.0 (see scripts/ref/requirements.txt).  Deterministic for those versions.

It writes ``<out>/``:

trainable_params.json
    For SmolLM2-135M's architecture (LlamaConfig built here, model made on the meta device, so
    no weights are needed): the exact ``print_trainable_parameters()`` line and the
    ``get_nb_trainable_parameters()`` pair (trainable, all) for several LoraConfigs, plus the
    same counts with the base model loaded in bitsandbytes 4-bit NF4 (random weights, CPU)
    unless ``--skip-4bit``, plus bias="none"/"all"/"lora_only" on tiny_hf/llama_bias.

<case>/adapter_config.json, <case>/adapter_model.safetensors
    ``PeftModel.save_pretrained(<case>)`` of a LoRA adapter made by ``get_peft_model`` on
    tests/fixtures/tiny_hf/llama_untied (the README.md model card that peft also writes is
    deleted).  lora_A keeps peft's default init (kaiming_uniform_, a=sqrt(5), seeded);
    lora_B is re-drawn from N(0, 0.1^2) so the adapter changes the logits; for DoRA the
    magnitude vector is multiplied by 1 + N(0, 0.05^2) so it differs from the row norms.

<case>/expected.safetensors
    input_ids   I64 [2, 12]  (the input_ids of tests/fixtures/tiny_hf/llama_untied/logits.safetensors)
    logits_adapted F32 [2, 12, 128]  peft model, eval mode, eager attention, adapter active
    logits_merged  F32 [2, 12, 128]  after ``merge_and_unload()`` (safe_merge=False)
    and for cases lora_qv and dora_attn:
    merged.model.layers.0.self_attn.q_proj.weight  F32 [64, 64]  the merged base weight

Check mode (for adapters written by tunelab)::

    /tmp/pyref/venv/bin/python scripts/ref/make_peft_fixtures.py \\
        --check-rust-adapter DIR [--base tests/fixtures/tiny_hf/llama_untied] [--tol 1e-4]

loads DIR with ``PeftModel.from_pretrained(base, DIR)``, requires the safetensors keys of DIR to
be exactly the keys peft would save for that config (and the values to have been loaded
unchanged), runs ``input_ids`` (from DIR/logits.safetensors if present there, else from the
base model's logits.safetensors) and compares with the tensor ``logits`` in DIR/logits.safetensors.
Also compares after merge_and_unload.  Exits non-zero if a max |diff| exceeds --tol.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

# peft saves target_modules (a set) as a list in set iteration order, which depends on the string
# hash seed: pin it so that adapter_config.json is reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402

torch.set_num_threads(1)

import peft  # noqa: E402
import safetensors  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[2]
TINY = "tests/fixtures/tiny_hf/llama_untied"  # relative to REPO: becomes base_model_name_or_path
MERGED_WEIGHT = "model.layers.0.self_attn.q_proj.weight"

# Each case: (name, LoraConfig kwargs, store merged q_proj weight?)
CASES = [
    ("lora_qv", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), True),
    ("rslora_all_linear", dict(r=4, lora_alpha=16, use_rslora=True, target_modules="all-linear"), False),
    ("dora_attn", dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]), True),
    # A regex string is re.fullmatch'ed against the full module name.  peft 0.21.2 refuses
    # layers_to_transform together with a string target_modules (ValueError in
    # LoraConfig.__post_init__), so the layer index is written into the regex instead.
    ("regex_layer1_mlp", dict(r=2, lora_alpha=4, target_modules=r".*\.layers\.1\.mlp\.(gate|up)_proj"), False),
    # The list form with layers_to_transform / layers_pattern, plus rank_pattern / alpha_pattern.
    (
        "layers_patterns",
        dict(
            r=2,
            lora_alpha=4,
            target_modules=["gate_proj", "up_proj", "down_proj"],
            layers_to_transform=[1],
            layers_pattern="layers",
            rank_pattern={"up_proj": 3},
            alpha_pattern={r"layers\.1\.mlp\.down_proj": 2},
        ),
        False,
    ),
]


def smollm2_config() -> LlamaConfig:
    # HuggingFaceTB/SmolLM2-135M's config.json (the fields that matter for parameter counts).
    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=0,
        eos_token_id=0,
    )


COUNT_CASES = [
    ("r16_all_linear", dict(r=16, lora_alpha=32, target_modules="all-linear")),
    ("r8_q_v", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])),
    ("r16_all_linear_dora", dict(r=16, lora_alpha=32, target_modules="all-linear", use_dora=True)),
    ("r8_q_v_bias_all", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], bias="all")),
    ("r8_q_v_lm_head_to_save", dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])),
]


def count_entry(pm) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        pm.print_trainable_parameters()
    trainable, total = pm.get_nb_trainable_parameters()
    return {"line": buf.getvalue().rstrip("\n"), "trainable": trainable, "all": total}


def make_trainable_params(out: Path, skip_4bit: bool) -> dict:
    cfg = smollm2_config()
    result: dict = {
        "model": "SmolLM2-135M architecture (LlamaConfig: vocab 49152, hidden 576, inter 1536, 30 layers, "
        "9 heads, 3 kv heads, tied embeddings)",
        "format": 'f"trainable params: {trainable:,d} || all params: {all:,d} || trainable%: {100 * trainable / all:.4f}"',
        "cases": {},
    }
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(cfg)
    result["base_params"] = sum(p.numel() for p in base.parameters())  # tied lm_head counted once
    for name, kw in COUNT_CASES:
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(cfg)
            pm = get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", **kw))
        entry = {"config": {k: v for k, v in kw.items()}, **count_entry(pm)}
        entry["targets"] = sorted(pm.peft_config["default"].target_modules)
        result["cases"][name] = entry
        print(f"  {name:24s} {entry['line']}")

    # SmolLM2 has no biases, so bias="all" changes nothing there; show the bias rules on the tiny
    # Llama with attention_bias (q, k, v, o) and mlp_bias.
    result["cases_tiny_llama_bias"] = {}
    for bias in ("none", "all", "lora_only"):
        kw = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], bias=bias)
        m = AutoModelForCausalLM.from_pretrained("tests/fixtures/tiny_hf/llama_bias", dtype=torch.float32)
        pm = get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", **kw))
        entry = {"config": kw, **count_entry(pm)}
        entry["trainable_biases"] = sorted(n for n, p in pm.named_parameters() if p.requires_grad and n.endswith(".bias"))
        result["cases_tiny_llama_bias"][f"r4_q_v_bias_{bias}"] = entry
        print(f"  tiny llama_bias bias={bias:10s} {entry['line']}")

    if not skip_4bit:
        result["cases_4bit"] = make_4bit_counts(cfg)
    return result


def make_4bit_counts(cfg: LlamaConfig) -> dict:
    """Load SmolLM2's architecture (random bf16 weights) with bitsandbytes 4-bit NF4 on CPU."""
    from transformers import BitsAndBytesConfig

    tmp = Path("/tmp/tunelab_peft_smollm2_random")
    if not (tmp / "model.safetensors").exists():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        m.save_pretrained(tmp)
        del m
    out = {}
    for storage in (torch.uint8, torch.bfloat16):
        q = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=storage,
        )
        for name, kw in COUNT_CASES[:2]:
            m = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, device_map="cpu")
            p4 = [(n, p) for n, p in m.named_parameters() if type(p).__name__ == "Params4bit"]
            pm = get_peft_model(m, LoraConfig(task_type="CAUSAL_LM", **kw))
            key = f"{name}_nf4_storage_{str(storage).removeprefix('torch.')}"
            n0, p0 = p4[0]
            entry = {
                "config": dict(kw),
                **count_entry(pm),
                "params4bit_tensors": len(p4),
                "example_param": {
                    "name": n0,
                    "shape": list(p0.shape),
                    "dtype": str(p0.dtype).removeprefix("torch."),
                    "numel": p0.numel(),
                    "counted_as": p0.numel() * 2 * p0.element_size(),
                },
            }
            out[key] = entry
            print(f"  {key:40s} {entry['line']}")
            del pm, m
    return out


def tiny_base(base_dir: str):
    m = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


@torch.no_grad()
def logits_of(model, input_ids) -> torch.Tensor:
    return model(input_ids=input_ids).logits.float().contiguous()


def make_case(out: Path, name: str, kw: dict, store_weight: bool, input_ids: torch.Tensor, seed: int) -> float:
    torch.manual_seed(seed)
    base = tiny_base(TINY)
    pm = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", **kw))
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for mod_name, mod in pm.named_modules():
            if hasattr(mod, "lora_B") and "default" in mod.lora_B:
                w = mod.lora_B["default"].weight
                w.copy_(torch.randn(w.shape, generator=gen) * 0.1)
                if "default" in mod.lora_magnitude_vector:
                    mv = mod.lora_magnitude_vector["default"].weight
                    mv.mul_(1 + 0.05 * torch.randn(mv.shape, generator=gen))
    pm.eval()
    adapted = logits_of(pm, input_ids)
    resolved = {}
    for mod_name, mod in pm.base_model.model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            key = (mod.r["default"], mod.lora_alpha["default"], mod.scaling["default"])
            resolved.setdefault(key, []).append(mod_name)

    case_dir = out / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    pm.save_pretrained(case_dir)
    (case_dir / "README.md").unlink(missing_ok=True)  # peft's generated model card

    merged_model = pm.merge_and_unload()
    merged = logits_of(merged_model, input_ids)
    tensors = {"input_ids": input_ids.contiguous(), "logits_adapted": adapted, "logits_merged": merged}
    if store_weight:
        tensors["merged." + MERGED_WEIGHT] = merged_model.state_dict()[MERGED_WEIGHT].detach().float().contiguous()
    save_file(tensors, case_dir / "expected.safetensors", metadata={"peft": peft.__version__})

    if store_weight:
        indep = independent_merge(case_dir, MERGED_WEIGHT)
        d_w = (indep - tensors["merged." + MERGED_WEIGHT]).abs().max().item()
        print(f"  {name:18s} independent merge of {MERGED_WEIGHT}: max|diff| vs peft = {d_w:.2e}")
        assert d_w < 1e-6, d_w

    diff = (adapted - merged).abs().max().item()
    base_logits = load_file(REPO / TINY / "logits.safetensors")["logits"]
    effect = (adapted - base_logits).abs().max().item()
    # Round trip: reload the saved adapter through peft's loader and compare.
    rt_adapted, rt_merged = check_adapter(
        case_dir, TINY, tol=1e-4, logits_ref=adapted, input_ids=input_ids, verbose=False
    )
    print(
        f"  {name:18s} max|adapted-merged| = {diff:.2e}   max|adapted-base| = {effect:.3f}   "
        f"reloaded: max|adapted'-adapted| = {rt_adapted:.2e}, max|merged'-adapted| = {rt_merged:.2e}"
    )
    assert diff < 1e-4, diff
    assert effect > 0.01, effect
    return diff, resolved


def independent_merge(case_dir: Path, weight_name: str) -> torch.Tensor:
    """Merge one linear layer from the files alone with the formulas of /tmp/peft_notes.md (no peft)."""
    cfg = json.loads((case_dir / "adapter_config.json").read_text())
    W = load_file(REPO / TINY / "model.safetensors")[weight_name].double()
    ad = load_file(case_dir / "adapter_model.safetensors")
    mod = weight_name.removesuffix(".weight")
    A = ad[f"base_model.model.{mod}.lora_A.weight"].double()  # [r, in]
    B = ad[f"base_model.model.{mod}.lora_B.weight"].double()  # [out, r]
    r, alpha = A.shape[0], cfg["lora_alpha"]  # (no rank/alpha pattern in the cases this is used for)
    scaling = alpha / (r**0.5 if cfg["use_rslora"] else r)
    delta = scaling * (B @ A)
    if cfg["use_dora"]:
        m = ad[f"base_model.model.{mod}.lora_magnitude_vector"].double()  # [out]
        norm = (W + delta).norm(dim=1)  # L2 norm of each output row
        return ((m / norm)[:, None] * (W + delta)).float()
    return (W + delta).float()


def check_adapter(
    adapter_dir, base_dir, tol: float = 1e-4, logits_ref=None, input_ids=None, verbose: bool = True
) -> float:
    """Load an adapter directory with peft and compare its logits; raise SystemExit(1) on failure."""
    adapter_dir = Path(adapter_dir)
    base_dir = str(base_dir)
    logits_file = adapter_dir / "logits.safetensors"
    if logits_ref is None or input_ids is None:
        if not logits_file.exists():
            raise SystemExit(f"{logits_file} not found (expected tensor 'logits', optional 'input_ids')")
        ref = load_file(logits_file)
        logits_ref = ref["logits"].float()
        input_ids = ref.get("input_ids")
        if input_ids is None:
            input_ids = load_file(Path(base_dir) / "logits.safetensors")["input_ids"]
    input_ids = input_ids.long()

    failures = []
    with open(adapter_dir / "adapter_config.json") as f:
        cfg_json = json.load(f)
    if verbose:
        keys = ("peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "bias", "task_type")
        print("adapter_config.json:", {k: cfg_json.get(k) for k in keys})

    base = tiny_base(base_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(base, str(adapter_dir))
    for w in caught:
        msg = str(w.message)
        if "missing" in msg.lower() or "unexpected" in msg.lower() or "not initialized" in msg.lower():
            failures.append(f"peft warning: {msg[:500]}")
    pm.eval()

    # The file's keys must be exactly the keys peft saves for this config, and must have loaded as is.
    on_disk = load_file(adapter_dir / "adapter_model.safetensors")
    expected = get_peft_model_state_dict(pm)
    missing = sorted(set(expected) - set(on_disk))
    unexpected = sorted(set(on_disk) - set(expected))
    if missing:
        failures.append(f"{len(missing)} keys peft expects are missing from the file, e.g. {missing[:4]}")
    if unexpected:
        failures.append(f"{len(unexpected)} keys in the file are not peft keys, e.g. {unexpected[:4]}")
    for k in sorted(set(on_disk) & set(expected)):
        a, b = on_disk[k], expected[k]
        if a.shape != b.shape:
            failures.append(f"{k}: shape {tuple(a.shape)} in file, {tuple(b.shape)} in peft")
        elif not torch.equal(a.to(b.dtype), b):
            failures.append(f"{k}: value differs after loading")

    adapted = logits_of(pm, input_ids)
    d_adapted = (adapted - logits_ref).abs().max().item() if adapted.shape == logits_ref.shape else float("inf")
    merged = logits_of(pm.merge_and_unload(), input_ids)
    d_merged = (merged - logits_ref).abs().max().item() if merged.shape == logits_ref.shape else float("inf")
    if verbose:
        print(f"tensors in file: {len(on_disk)}   peft keys: {len(expected)}")
        print(f"max |peft adapted - rust logits| = {d_adapted:.3e}")
        print(f"max |peft merged  - rust logits| = {d_merged:.3e}")
    if d_adapted > tol:
        failures.append(f"adapted logits differ by {d_adapted:.3e} > {tol}")
    if d_merged > tol:
        failures.append(f"merged logits differ by {d_merged:.3e} > {tol}")
    if failures:
        for f_ in failures:
            print("FAIL:", f_, file=sys.stderr)
        raise SystemExit(1)
    if verbose:
        print("OK")
    return d_adapted, d_merged


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def write_readme(out: Path, counts: dict, diffs: dict, resolved: dict) -> None:
    lines = []
    lines.append("# peft LoRA / DoRA reference fixtures\n")
    lines.append(
        "Made by `scripts/ref/make_peft_fixtures.py` with "
        f"peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"safetensors {safetensors.__version__} (CPU, float32, one thread, fixed seeds). Regenerate from the repo root:\n"
    )
    lines.append("    /tmp/pyref/venv/bin/python scripts/ref/make_peft_fixtures.py --out tests/fixtures/peft\n")
    lines.append(
        "(`--skip-4bit` leaves out the bitsandbytes 4-bit counts; they need bitsandbytes 0.50.2 and write a "
        "~270 MB random bf16 SmolLM2-shaped checkpoint to /tmp.)\n"
    )
    lines.append("## trainable_params.json\n")
    lines.append(
        "SmolLM2-135M's architecture built from a `LlamaConfig` on the meta device (no weights), wrapped with "
        "`get_peft_model(model, LoraConfig(task_type=\"CAUSAL_LM\", ...))`. For each case: `line` is exactly what "
        "`print_trainable_parameters()` printed (without the newline), `trainable`/`all` are "
        "`get_nb_trainable_parameters()`, `targets` is the resolved `target_modules` set. `base_params` is the "
        "un-adapted model (tied `lm_head` counted once).\n"
    )
    lines.append("| case | line |")
    lines.append("|---|---|")
    for name, e in counts["cases"].items():
        lines.append(f"| `{name}` | `{md_cell(e['line'])}` |")
    lines.append("")
    lines.append(
        "`cases_tiny_llama_bias`: SmolLM2 has no biases, so `bias` changes nothing there; these use "
        "`tests/fixtures/tiny_hf/llama_bias` (q/k/v/o and MLP biases) with r=4 on q_proj, v_proj: `bias=\"all\"` "
        "makes every `*.bias` of the model trainable, `\"lora_only\"` only the biases of the LoRA-wrapped layers "
        "(listed in `trainable_biases`).\n"
    )
    lines.append("| case | line |")
    lines.append("|---|---|")
    for name, e in counts["cases_tiny_llama_bias"].items():
        lines.append(f"| `{name}` | `{md_cell(e['line'])}` |")
    if "cases_4bit" in counts:
        lines.append("")
        lines.append(
            "`cases_4bit`: the same architecture with random bf16 weights loaded through "
            "`BitsAndBytesConfig(load_in_4bit=True, nf4, double quant, compute bf16, bnb_4bit_quant_storage=uint8 | "
            "bfloat16)` on CPU. peft counts a `Params4bit` as `numel * 2 * element_size()` (the packed tensor holds "
            "two 4-bit values per byte), so the totals equal the unquantized ones; `example_param` shows one packed "
            "weight. Every linear layer except `lm_head` is quantized.\n"
        )
        lines.append("| case | line |")
        lines.append("|---|---|")
        for name, e in counts["cases_4bit"].items():
            lines.append(f"| `{name}` | `{md_cell(e['line'])}` |")
    lines.append("")
    lines.append("## Adapter cases (base: `tests/fixtures/tiny_hf/llama_untied`)\n")
    lines.append(
        "Each `<case>/` holds what `PeftModel.save_pretrained(<case>)` wrote -- `adapter_config.json` and "
        "`adapter_model.safetensors` (peft's generated README.md model card removed) -- and `expected.safetensors`. "
        "lora_A has peft's default init (kaiming_uniform_ a=sqrt(5), seeded), lora_B was re-drawn from "
        "N(0, 0.1²); for DoRA the stored `lora_magnitude_vector` was multiplied by 1 + N(0, 0.05²), so it is "
        "NOT the row norm of W + s·BA: use the stored vector, do not recompute it.\n"
    )
    lines.append("| case | LoraConfig | max \\|adapted − merged\\| |")
    lines.append("|---|---|---|")
    for name, kw, _ in CASES:
        kws = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        lines.append(f"| `{name}` | `{md_cell(kws)}` | {diffs[name]:.2e} |")
    lines.append("")
    lines.append("Resolved LoRA layers (module path in the base model: r, lora_alpha, scaling):\n")
    for name, _, _ in CASES:
        lines.append(f"- `{name}`:")
        for (r, alpha, scaling), mods in sorted(resolved[name].items()):
            lines.append(f"  - r={r}, alpha={alpha}, scaling={scaling:g}: " + ", ".join(f"`{m}`" for m in sorted(mods)))
    lines.append("")
    lines.append("`expected.safetensors`:\n")
    lines.append("- `input_ids` I64 [2, 12]: the `input_ids` of `tests/fixtures/tiny_hf/llama_untied/logits.safetensors`;")
    lines.append(
        "- `logits_adapted` F32 [2, 12, 128]: the peft model (adapter active, unmerged), eval mode, eager attention, "
        "no attention mask;"
    )
    lines.append("- `logits_merged` F32 [2, 12, 128]: after `merge_and_unload()`;")
    lines.append(
        f"- `merged.{MERGED_WEIGHT}` F32 [64, 64] (cases `lora_qv` and `dora_attn` only): that weight after "
        "`merge_and_unload()`. The script also recomputes it from the files alone (W + s·B·A; DoRA: "
        "m / ‖W + s·B·A‖_row · (W + s·B·A), float64) and asserts agreement to 1e-6.\n"
    )
    lines.append("The un-adapted logits are `tests/fixtures/tiny_hf/llama_untied/logits.safetensors`'s `logits`.\n")
    lines.append(
        "Note: with fewer than 20 resolved modules peft stores an `all-linear` target list as the full module names "
        "(`rslora_all_linear/adapter_config.json`); from 20 on it condenses them to suffixes like `q_proj`.\n"
    )
    lines.append("## Checking an adapter written by tunelab\n")
    lines.append(
        "Save the adapter directory (`adapter_config.json`, `adapter_model.safetensors`) trained/made on "
        "`tests/fixtures/tiny_hf/llama_untied`, plus `logits.safetensors` next to it with `logits` F32 [2, 12, 128] "
        "(tunelab's adapted logits) and optionally `input_ids` I64 [2, 12] (default: the base model's fixture "
        "input_ids). Then:\n"
    )
    lines.append(
        "    /tmp/pyref/venv/bin/python scripts/ref/make_peft_fixtures.py --check-rust-adapter DIR "
        "--base tests/fixtures/tiny_hf/llama_untied [--tol 1e-4]\n"
    )
    lines.append(
        "It loads DIR with `PeftModel.from_pretrained`, fails if the file's tensor names are not exactly those peft "
        "saves for that config (or did not load unchanged), and fails (exit 1) if max |peft logits − tunelab logits| "
        "exceeds the tolerance, both unmerged and after `merge_and_unload()`.\n"
    )
    lines.append(
        "`scripts/ref/check_rust_adapters.sh` does this end to end: it writes adapters with\n"
        "`cargo run --example save_peft_adapter -- BASE_DIR OUT_DIR [lora|rslora|dora]` and, for LoRA's\n"
        "extras (`bias`, `modules_to_save`, PiSSA), `cargo run --example save_peft_extras -- OUT_DIR`\n"
        "(one `OUT_DIR/<case>` per case, its base named in `OUT_DIR/<case>/BASE`), then checks each.\n"
        "Neither program is part of `cargo test`.\n"
    )
    lines.append("## Files\n")
    for p in sorted(out.rglob("*")):
        if p.is_file() and p.name != "README.md":
            lines.append(f"- `{p.relative_to(out)}` ({p.stat().st_size:,} bytes)")
    lines.append("- `README.md`")
    (out / "README.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures/peft")
    ap.add_argument("--skip-4bit", action="store_true", help="leave out the bitsandbytes 4-bit counts")
    ap.add_argument("--check-rust-adapter", metavar="DIR", help="check an adapter directory written by tunelab")
    ap.add_argument("--base", default=TINY, help="base model directory for --check-rust-adapter")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.check_rust_adapter:
        check_adapter(args.check_rust_adapter, args.base, tol=args.tol)
        return

    os.chdir(REPO)  # base_model_name_or_path in the adapter configs is the repo-relative TINY path
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"peft {peft.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")

    print("trainable parameters (SmolLM2-135M architecture):")
    counts = make_trainable_params(out, args.skip_4bit)
    (out / "trainable_params.json").write_text(json.dumps(counts, indent=2) + "\n")

    print("adapters on tiny llama_untied:")
    input_ids = load_file(REPO / TINY / "logits.safetensors")["input_ids"]
    diffs, resolved = {}, {}
    for i, (name, kw, store_weight) in enumerate(CASES):
        diffs[name], resolved[name] = make_case(out, name, kw, store_weight, input_ids, seed=i)

    write_readme(out, counts, diffs, resolved)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total:,} bytes)")
    assert total < 500_000, total


if __name__ == "__main__":
    main()
