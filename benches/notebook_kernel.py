#!/usr/bin/env python3
"""Wall times of the notebook kernel: the first `:dep tunelab-prelude` cell, cold and warm, and a
simple later cell. Each run starts a new evcxr kernel, as opening a notebook does.

Usage (with the venv of scripts/lab.sh):
  .venv/bin/python benches/notebook_kernel.py [--cold N] [--warm N] [--later N]

- cold: EVCXR_TMPDIR is a fresh empty directory, so the cell compiles candle, tokenizers, tunelab and the prelude;
- warm: EVCXR_TMPDIR is the persistent build dir that scripts/lab.sh prebuilds (the value of
  $EVCXR_TMPDIR, default /var/tmp/tunelab-evcxr), in a new kernel each run;
- later: `let x = 40 + 2; x * 2` in the warm kernel, after the `:dep` cell.
Prints every run and the medians.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
DEP_CELL = ':dep tunelab-prelude = { path = "../prelude" }\nuse tunelab_prelude::*;'
LATER_CELL = "let x = 40 + 2;\nx * 2"


def run(tmpdir, later):
    """(kernel start s, first cell s, [later cell s]) in a new kernel with EVCXR_TMPDIR=tmpdir."""
    from jupyter_client.manager import start_new_kernel

    os.environ["EVCXR_TMPDIR"] = tmpdir
    t0 = time.monotonic()
    km, kc = start_new_kernel(kernel_name="rust", cwd=NOTEBOOKS, env={**os.environ})
    try:
        start = time.monotonic() - t0

        def cell(code):
            t = time.monotonic()
            reply = kc.execute_interactive(code, timeout=1800, output_hook=lambda m: None)
            if reply["content"]["status"] != "ok":
                sys.exit(f"cell failed: {reply['content']}")
            return time.monotonic() - t

        first = cell(DEP_CELL)
        rest = [cell(LATER_CELL) for _ in range(later)]
        return start, first, rest
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cold", type=int, default=1)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--later", type=int, default=10)
    a = ap.parse_args()
    warm_dir = os.environ.get("EVCXR_TMPDIR") or "/var/tmp/tunelab-evcxr"
    colds, warms, laters = [], [], []
    for i in range(a.cold):
        d = tempfile.mkdtemp(prefix="evcxr-cold-", dir="/var/tmp")
        try:
            s, f, _ = run(d, 0)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        colds.append(f)
        print(f"cold {i}: kernel start {s:.2f} s, first cell {f:.2f} s", flush=True)
    for i in range(a.warm):
        s, f, rest = run(warm_dir, a.later if i == 0 else 3)
        warms.append(f)
        laters.extend(rest)
        print(f"warm {i}: kernel start {s:.2f} s, first cell {f:.2f} s, later cells "
              + ", ".join(f"{x:.2f}" for x in rest), flush=True)
    if colds:
        print(f"cold first cell median: {statistics.median(colds):.1f} s (n={len(colds)})")
    if warms:
        print(f"warm first cell median: {statistics.median(warms):.1f} s (n={len(warms)})")
    if laters:
        print(f"later cell median: {statistics.median(laters):.2f} s (n={len(laters)})")


if __name__ == "__main__":
    main()
