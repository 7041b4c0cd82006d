#!/usr/bin/env bash
# The lab command of the README: sets up the Rust Jupyter kernel and opens JupyterLab on notebooks/.
#
#   scripts/lab.sh               install what is missing, prebuild the notebooks' `:dep`, open JupyterLab
#   scripts/lab.sh --setup-only  the same without opening JupyterLab (also: --no-open)
#   scripts/lab.sh --no-warm     skip the prebuild (the first `:dep` cell then compiles, ~3 min cold)
#   scripts/lab.sh -- --no-browser --port 8899   pass options on to `jupyter lab`
#   (as root, e.g. in a container, --allow-root is added: JupyterLab refuses to start otherwise)
#
# What it installs, each step skipped when already done:
#   1. evcxr_jupyter 0.22.0 with `cargo install --locked` (~11 min on 2 cores; needs rustc >= 1.95);
#   2. a Python venv ($TUNELAB_VENV, default .venv) with the pinned scripts/lab-requirements.txt
#      (JupyterLab, nbclient); reinstalled only when that file changes;
#   3. the kernel spec `rust` inside the venv ($VENV/share/jupyter/kernels/rust), not in $HOME;
#      kernels inherit EVCXR_TMPDIR from the jupyter this script starts (the spec does not pin it,
#      so CI can point it at its own cache);
#   4. a persistent evcxr build dir ($EVCXR_TMPDIR, default /var/tmp/tunelab-evcxr), prebuilt by
#      running the first cell of notebooks/00 once: the first `:dep tunelab-prelude` cell of a
#      new kernel then takes seconds instead of minutes.
#      Not inside the repository: cargo refuses a package nested under our workspace root that
#      the workspace does not list. Not under $HOME either: on this machine evcxr's dlopen of the
#      compiled cell failed ("dlopen failed") for every build dir under /root, cause not found.
# Environment: TUNELAB_VENV, EVCXR_TMPDIR (cache locations), PYTHON (default python3).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

OPEN=1
WARM=1
LAB_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --setup-only | --no-open) OPEN=0 ;;
    --no-warm) WARM=0 ;;
    --) shift; LAB_ARGS=("$@"); break ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "lab.sh: unknown argument $1 (JupyterLab's own options go after --)" >&2; exit 2 ;;
  esac
  shift
done

EVCXR_VERSION=0.22.0
VENV="${TUNELAB_VENV:-$ROOT/.venv}"
export EVCXR_TMPDIR="${EVCXR_TMPDIR:-/var/tmp/tunelab-evcxr}"
PYTHON="${PYTHON:-python3}"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# 1. evcxr_jupyter, pinned.
# (evcxr_jupyter has no --version; cargo's install list knows.)
if ! command -v evcxr_jupyter >/dev/null || ! cargo install --list | grep -q "^evcxr_jupyter v$EVCXR_VERSION:"; then
  echo "lab: installing evcxr_jupyter $EVCXR_VERSION (cargo install, ~11 minutes on 2 cores) ..."
  cargo install evcxr_jupyter --version "$EVCXR_VERSION" --locked
fi

# 2. The venv, reinstalled when the requirements change.
REQ="$ROOT/scripts/lab-requirements.txt"
STAMP="$VENV/.tunelab-requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  echo "lab: setting up the Python venv at $VENV ..."
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQ"
  echo "$want" > "$STAMP"
fi

# 3. The kernel spec, inside the venv (the venv's jupyter looks in $VENV/share/jupyter first).
KDIR="$VENV/share/jupyter"
JUPYTER_PATH="$KDIR" evcxr_jupyter --install >/dev/null

# 4. The persistent evcxr build dir, prebuilt. (Seeding it with the workspace's Cargo.lock to pin
#    versions made evcxr's first dlopen fail at kernel start with 0.22.0, so it resolves on its own.)
mkdir -p "$EVCXR_TMPDIR"
if [ "$WARM" = 1 ]; then
  echo "lab: prebuilding tunelab-prelude in $EVCXR_TMPDIR (minutes the first time, seconds after) ..."
  "$VENV/bin/python" "$ROOT/scripts/run_notebooks.py" --warm
fi

echo "lab: kernel ready (evcxr_jupyter $EVCXR_VERSION, venv $VENV, EVCXR_TMPDIR $EVCXR_TMPDIR)"
if [ "$OPEN" = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    LAB_ARGS=(--allow-root "${LAB_ARGS[@]}")
  fi
  exec "$VENV/bin/jupyter" lab --ServerApp.root_dir="$ROOT/notebooks" "${LAB_ARGS[@]}"
fi
