#!/usr/bin/env python3
"""Peer benchmark: bitsandbytes CPU 4-bit quantize / dequantize throughput.

The peer side of tunelab's NF4 quantization benchmark.  For each weight shape
it times, on the CPU (torch.set_num_threads(--threads), default 2):

* ``quantize_4bit``    ``bitsandbytes.functional.quantize_4bit(w, blocksize=64,
                       quant_type="nf4", compress_statistics=dq)``
* ``dequantize_4bit``  ``bitsandbytes.functional.dequantize_4bit(packed, state)``
                       back to float32 (with dq, this includes restoring the
                       double-quantized absmax)
* ``clone``            ``w.clone()`` of the same float32 tensor: a plain
                       read+write memory copy, the physical reference line
                       (includes allocating the output; for large tensors that
                       means fresh pages and first-touch page faults)
* ``copy_``            ``dst.copy_(w)`` into a preallocated tensor: the same
                       copy without the allocation (pure memory bandwidth)

for dq in {False, True}.  Each figure is the MEDIAN over --runs timed runs
(after --warmup untimed ones) of one call, wall clock (time.perf_counter).

GB/s is defined as (bytes of the float32 input weight) / seconds, i.e.
rows*cols*4 / t / 1e9, for all operations (the dequantize output has the
same size; the packed input is 1/8 of it).  1 GB = 1e9 bytes.

In bitsandbytes 0.50.2 on CPU, quantize_4bit runs the pure-PyTorch "default"
backend kernel (intra-op threads = torch threads), dequantize_4bit runs the
native libbitsandbytes_cpu OpenMP kernel (threads = OMP_NUM_THREADS, which
this script sets to --threads before importing torch).

Setup: /tmp/pyref/venv with ``pip install -r scripts/ref/requirements.txt``.

Usage::

    /tmp/pyref/venv/bin/python benches/peer_bnb_quant.py [--runs 7] [--warmup 2]
        [--threads 2] [--shapes 576x1536,1536x576,4096x4096] [--json]

Prints a compact table; with --json prints one JSON object instead:
{"peer": "bitsandbytes", "version", "torch", "threads", "blocksize": 64,
 "quant_type": "nf4", "gbps_definition", "results": [{"shape", "op", "double_quant",
 "median_s", "gbps", "runs_s": [...]}]}
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description="bitsandbytes CPU NF4 quantize/dequantize throughput")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shapes", default="576x1536,1536x576,4096x4096",
                    help="comma-separated ROWSxCOLS list (SmolLM2-135M: 576 hidden, 1536 MLP)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # native bnb CPU kernels (OpenMP)
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]

    def timeit(fn):
        for _ in range(args.warmup):
            fn()
        ts = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return ts

    results = []
    for (r, c) in shapes:
        w = torch.from_numpy(np.random.default_rng(args.seed).standard_normal((r, c), dtype=np.float32))
        nbytes = w.numel() * w.element_size()

        def record(op, dq, ts):
            med = statistics.median(ts)
            results.append({"shape": [r, c], "op": op, "double_quant": dq, "median_s": med,
                            "gbps": nbytes / med / 1e9, "runs_s": ts})

        record("clone", None, timeit(lambda: w.clone()))
        dst = torch.empty_like(w)
        record("copy_", None, timeit(lambda: dst.copy_(w)))
        del dst
        for dq in (False, True):
            record("quantize_4bit", dq, timeit(
                lambda: F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)))
            packed, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=dq)
            record("dequantize_4bit", dq, timeit(lambda: F.dequantize_4bit(packed, state)))
        del w

    info = {
        "peer": "bitsandbytes", "version": bnb.__version__, "torch": torch.__version__,
        "threads": args.threads, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blocksize": 64, "quant_type": "nf4", "runs": args.runs, "warmup": args.warmup,
        "gbps_definition": "float32 input bytes (rows*cols*4) / median seconds / 1e9",
        "results": results,
    }
    if args.json:
        print(json.dumps(info))
        return
    print(f"bitsandbytes {bnb.__version__} CPU, torch {torch.__version__} "
          f"({info['torch_cpu_capability']}), {args.threads} threads, NF4 blocksize 64, "
          f"median of {args.runs} runs; GB/s = f32 input bytes / time")
    print(f"{'shape':>11} {'op':<16} {'dq':<5} {'median ms':>10} {'GB/s':>7}")
    for x in results:
        dq = "-" if x["double_quant"] is None else ("yes" if x["double_quant"] else "no")
        shape = "x".join(map(str, x["shape"]))
        print(f"{shape:>11} {x['op']:<16} {dq:<5} {x['median_s'] * 1e3:>10.3f} {x['gbps']:>7.2f}")


if __name__ == "__main__":
    sys.exit(main())
