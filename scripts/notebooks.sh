#!/usr/bin/env bash
# Executes every notebook under notebooks/ headless with the real evcxr Rust kernel: part of the
# README's test command. Sets up what is missing first (scripts/lab.sh --setup-only --no-warm:
# evcxr_jupyter 0.22.0, the venv, the kernel spec), then
#   1. fails if a committed notebook carries outputs or execution counts (--check-clean);
#   2. runs each notebook cell by cell, failing on an error reply, a panic on stderr or a missing
#      tagged rich output (scripts/run_notebooks.py), and prints "N passed, M failed".
# Caches (keep them between CI runs): TUNELAB_VENV (default .venv), EVCXR_TMPDIR (the evcxr
# build dir, default /var/tmp/tunelab-evcxr, not under $HOME: see lab.sh; minutes cold for the
# first `:dep` cell, seconds warm),
# TUNELAB_CACHE (the fallback model; fetched here if missing). HF_HUB_OFFLINE=1 unless set.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

python3 scripts/run_notebooks.py --check-clean

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
python3 scripts/fetch_smollm2.py >/dev/null
python3 scripts/fetch_minilm.py >/dev/null
bash scripts/lab.sh --setup-only --no-warm
VENV="${TUNELAB_VENV:-$ROOT/.venv}"
export EVCXR_TMPDIR="${EVCXR_TMPDIR:-/var/tmp/tunelab-evcxr}"

"$VENV/bin/python" scripts/run_notebooks.py "$@"
