#!/usr/bin/env python3
"""Execute tunelab's notebooks headless with the evcxr Rust kernel, and check them.

Usage (from the venv that scripts/lab.sh or scripts/notebooks.sh set up):
  run_notebooks.py [NOTEBOOK ...]      execute (default: every notebooks/*.ipynb, sorted)
  run_notebooks.py --check-clean [NB]  fail if a committed notebook has outputs or execution counts
  run_notebooks.py --warm              execute only the first code cell of the first notebook
                                       (the `:dep` cell), to prebuild the evcxr build dir

A notebook fails on the first cell that
  - gets an error reply (compile errors, `?` on an Err in a cell, a dead kernel, a timeout);
  - prints "panicked at" on stderr: a panic inside a cell replies "ok" in evcxr, with the
    panic message on stderr only;
  - is tagged `expect-html` (cell metadata "tags") and has no text/html output;
  - is tagged `expect-svg` and has no `<svg` in a text/html or image/svg+xml output;
  - writes to stderr (unless it is a `:dep` cell, whose cargo output goes there, or is tagged
    `allow-stderr`): evcxr replies "ok" to a cell whose `?` meets an Err and prints the error on
    stderr only, so stderr is how a failed `?` shows;
  - is tagged `raises-exception` (a cell that shows an error on purpose) and gives no error
    (an error reply, or the error of a `?` on stderr).
The kernel runs with cwd = notebooks/, so `:dep tunelab-prelude = { path = "../prelude" }`
resolves (evcxr canonicalizes relative dep paths against the kernel's working directory).
A cell with `:dep` gets a long timeout (a cold evcxr build dir compiles candle and tunelab);
other cells get a short one. Prints per-cell and per-notebook wall times, then "N passed, M failed".
"""
import argparse
import glob
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
KERNEL = os.environ.get("TUNELAB_KERNEL", "rust")
DEP_TIMEOUT = int(os.environ.get("TUNELAB_DEP_TIMEOUT", "1200"))
# How long to wait for a cell's late stderr after its reply (see drain_late_output).
LATE_OUTPUT_WAIT = float(os.environ.get("TUNELAB_LATE_OUTPUT_WAIT", "0.3"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CELL_TIMEOUT = int(os.environ.get("TUNELAB_CELL_TIMEOUT", "300"))


def notebook_paths(args):
    paths = args or sorted(glob.glob(os.path.join(NOTEBOOKS, "*.ipynb")))
    if not paths:
        sys.exit(f"run_notebooks: no notebooks under {NOTEBOOKS}")
    return [os.path.abspath(p) for p in paths]


def rel(path):
    return os.path.relpath(path, ROOT)


def check_clean(paths):
    """Committed notebooks carry no outputs and no execution counts (plain json: no venv needed)."""
    import json

    bad = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        for i, cell in enumerate(nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            problems = []
            if cell.get("outputs"):
                problems.append(f"{len(cell['outputs'])} output(s)")
            if cell.get("execution_count") is not None:
                problems.append(f"execution_count {cell['execution_count']}")
            if problems:
                bad += 1
                print(f"{rel(path)}: cell {i}: committed with {', '.join(problems)}; "
                      f"clear outputs before committing (Edit > Clear Outputs of All Cells)")
    if bad:
        print(f"check-clean: {bad} cell(s) with outputs in {len(paths)} notebook(s)")
        return 1
    print(f"check-clean: {len(paths)} notebook(s) clean")
    return 0


def cell_problem(cell):
    """Why an executed cell failed, or None."""
    html, svg, errored = False, False, False
    tags = cell.get("metadata", {}).get("tags", [])
    stderr_ok = ":dep" in cell.get("source", "") or "allow-stderr" in tags
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "error" and "raises-exception" in tags:
            errored = True
        elif kind == "error":
            tb = ANSI.sub("", "\n".join(out.get("traceback", [])))
            return f"error: {out.get('ename', '')}: {out.get('evalue', '')}\n{tb}".rstrip()
        if kind == "stream" and out.get("name") == "stderr":
            text = out.get("text", "")
            if "panicked at" in text:
                return "panic (evcxr replied ok):\n" + text.rstrip()
            if "raises-exception" in tags:
                errored = True
            elif not stderr_ok:
                return ("wrote to stderr (a `?` on an Err replies ok in evcxr and prints the "
                        "error there; tag the cell `allow-stderr` if this is expected):\n"
                        + text.rstrip())
        if kind in ("display_data", "execute_result"):
            data = out.get("data", {})
            if "text/html" in data:
                html = True
                svg = svg or "<svg" in data["text/html"]
            if "image/svg+xml" in data:
                svg = True
    if "raises-exception" in tags and not errored:
        return "tagged raises-exception but produced no error"
    if "expect-html" in tags and not html:
        return "tagged expect-html but produced no text/html output"
    if "expect-svg" in tags and not svg:
        return "tagged expect-svg but produced no <svg> (text/html or image/svg+xml) output"
    return None


def short(text, limit=3000):
    return text if len(text) <= limit else text[:limit] + f"\n... ({len(text) - limit} more characters)"


def drain_late_output(client, cell, wait=LATE_OUTPUT_WAIT):
    """Appends stream output that arrives after a cell's reply to that cell.

    evcxr forwards the compiled cell's stderr (where a `?` error and a panic go) from another
    thread, and it can reach iopub after the reply and the idle status, when nbclient has
    stopped listening for that cell. Returns how many late messages were attached."""
    import queue

    from nbclient.util import run_sync
    import nbformat

    late = 0
    while True:
        try:
            msg = run_sync(client.kc.get_iopub_msg)(timeout=wait)
        except queue.Empty:
            return late
        if msg.get("msg_type") == "stream":
            c = msg["content"]
            cell.outputs.append(nbformat.v4.new_output("stream", name=c["name"], text=c["text"]))
            late += 1


def run_notebook(path, only_first_code_cell=False):
    """Executes one notebook; returns (ok, seconds). Prints one line per cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": NOTEBOOKS}})
    print(f"== {rel(path)} (kernel {KERNEL}, cwd {rel(NOTEBOOKS)})", flush=True)
    start = time.monotonic()
    ok = True
    try:
        with client.setup_kernel():
            print(f"  kernel   {time.monotonic() - start:8.2f} s  started", flush=True)
            for i, cell in enumerate(nb.cells):
                if cell.cell_type != "code":
                    continue
                client.timeout = DEP_TIMEOUT if ":dep" in cell.source else CELL_TIMEOUT
                t0 = time.monotonic()
                problem, dt = None, None
                try:
                    client.execute_cell(cell, i)
                    dt = time.monotonic() - t0
                    drain_late_output(client, cell)
                    problem = cell_problem(cell)
                except CellExecutionError as e:
                    # The error output carries rustc's or the library's message.
                    problem = cell_problem(cell) or f"error reply: {e}"
                except Exception as e:  # timeout, dead kernel, protocol trouble
                    problem = f"{type(e).__name__}: {e}"
                if dt is None:
                    dt = time.monotonic() - t0
                status = "ok" if problem is None else "FAILED"
                first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                print(f"  cell {i:2d} {dt:8.2f} s  {status}  {first[:70]}", flush=True)
                if problem is not None:
                    print(f"{rel(path)}: cell {i}: {short(problem)}", flush=True)
                    ok = False
                    break
                if only_first_code_cell:
                    break
    except Exception as e:  # the kernel did not start
        print(f"{rel(path)}: kernel `{KERNEL}` failed: {type(e).__name__}: {e}", flush=True)
        ok = False
    secs = time.monotonic() - start
    print(f"== {rel(path)}: {'passed' if ok else 'FAILED'} in {secs:.1f} s", flush=True)
    return ok, secs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*")
    ap.add_argument("--check-clean", action="store_true",
                    help="only check that notebooks are committed without outputs")
    ap.add_argument("--warm", action="store_true",
                    help="only run the first code cell of the first notebook (prebuild evcxr)")
    args = ap.parse_args()
    paths = notebook_paths(args.notebooks)
    if args.check_clean:
        return check_clean(paths)
    if args.warm:
        ok, _ = run_notebook(paths[0], only_first_code_cell=True)
        return 0 if ok else 1
    passed = failed = 0
    for path in paths:
        ok, _ = run_notebook(path)
        if ok:
            passed += 1
        else:
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
