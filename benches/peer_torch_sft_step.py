#!/usr/bin/env python3
"""Peer benchmark: one LoRA training step of SmolLM2-135M-Instruct with PyTorch + peft on CPU.

The peer side of tunelab's ``benches/sft_step.rs`` (both run by ``benches/run_sft_step.sh``).
The same step as the Rust side:

* base weights: the HF directory that ``cargo bench --bench sft_step -- --export DIR`` writes
  (tunelab's f32 dequantization of the cached Q4_1 GGUF), loaded with
  ``AutoModelForCausalLM.from_pretrained(DIR, dtype=torch.float32)`` (default attention: sdpa);
* ``LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0)``;
* batch 4 x 256 tokens from the same 64-bit LCG as the Rust side, ``labels = input_ids``
  (transformers shifts them: 4 x 255 targets, mean cross-entropy);
* ``torch.optim.AdamW(lr=1e-4, weight_decay=0)`` (tunelab's default decay is 0; torch's is
  0.01), ``clip_grad_norm_(1.0)`` as the Trainer does by default;
* ``torch.set_num_threads(--threads)`` (2), OMP_NUM_THREADS set before importing torch.

One step = zero_grad + forward + backward + clip + optimizer.step, timed with perf_counter
(the CPU runs synchronously); the parts are timed too, and the CPU time of the step
(time.process_time: user + system, all threads). Median over --runs steps after --warmup
untimed ones.

Memory from /proc/self/status: ``rss_after_load_mb`` (VmRSS once model and adapters are
built), ``peak_rss_process_mb`` (VmHWM at the end: the whole process, imports and model load
included) and ``peak_rss_training_mb`` (VmHWM of the steps alone: reset through
/proc/self/clear_refs after loading).

Setup: /tmp/pyref/venv with ``pip install -r scripts/ref/requirements.txt`` (torch, transformers,
peft). Not run in CI.

Usage::

    /tmp/pyref/venv/bin/python benches/peer_torch_sft_step.py --model DIR [--runs 5]
        [--warmup 1] [--threads 2] [--batch 4] [--seq 256]

Prints one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time


def status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


MASK64 = (1 << 64) - 1


def lcg_row(row, length, vocab):
    """Row `row` of the data, as `lcg_row` in benches/sft_step.rs."""
    x = ((row + 1) * 0x9E3779B97F4A7C15) & MASK64
    out = []
    for _ in range(length):
        x = (x * 6364136223846793005 + 1442695040888963407) & MASK64
        out.append((x >> 33) % vocab)
    return out


def main():
    ap = argparse.ArgumentParser(description="PyTorch + peft LoRA step on CPU")
    ap.add_argument("--model", required=True, help="HF dir written by sft_step --export")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--gradient-checkpointing", action="store_true",
                    help="model.gradient_checkpointing_enable() (non-reentrant), as the trainer's option")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import transformers
    import peft
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    cfg = peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0,
                          task_type="CAUSAL_LM")
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = peft.get_peft_model(model, cfg)
    load_s = time.perf_counter() - t
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    vocab = model.config.vocab_size
    steps = args.warmup + args.runs
    batches = [
        torch.tensor([lcg_row(s * args.batch + r, args.seq, vocab) for r in range(args.batch)])
        for s in range(steps)
    ]

    rss_after_load = status_mb("VmRSS:")
    hwm_load = status_mb("VmHWM:")
    hwm_reset = reset_hwm()

    secs, cpu, losses = [], [], []
    parts = {"forward": [], "backward": [], "clip": [], "adamw": []}
    for i, ids in enumerate(batches):
        c0 = time.process_time()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        c4 = time.process_time()
        losses.append(loss.item())
        if i >= args.warmup:
            secs.append(t4 - t0)
            cpu.append(c4 - c0)
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k].append(v)
    peak_training = status_mb("VmHWM:")
    step_s = statistics.median(secs)
    print(json.dumps({
        "impl": "torch+peft",
        "gradient_checkpointing": args.gradient_checkpointing,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "peft": peft.__version__, "threads": torch.get_num_threads(),
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "batch": args.batch, "seq": args.seq, "runs": args.runs, "warmup": args.warmup,
        "trainable": sum(p.numel() for p in trainable),
        "load_s": load_s,
        "step_s": step_s,
        "tokens_per_s": args.batch * args.seq / step_s,
        "steps_s": secs,
        "cpu_s": statistics.median(cpu),
        "tokens_per_cpu_s": args.batch * args.seq / statistics.median(cpu),
        "losses": losses,
        "profile": {f"{k}_s": statistics.median(v) for k, v in parts.items()},
        "rss_after_load_mb": rss_after_load,
        "peak_rss_load_mb": hwm_load,
        "peak_rss_training_mb": peak_training if hwm_reset else float("nan"),
        "peak_rss_process_mb": max(status_mb("VmHWM:"), hwm_load),
    }))


if __name__ == "__main__":
    sys.exit(main())
