#!/usr/bin/env bash
# The reverse direction of the PEFT round trip: adapters saved by tunelab load in Python peft and
# give the same logits (to 1e-4), unmerged and merged. Needs the dev venv (scripts/ref/requirements.txt).
#   PYTHON=/tmp/pyref/venv/bin/python scripts/ref/check_rust_adapters.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
BASE=tests/fixtures/tiny_hf/llama_untied
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
for kind in lora rslora dora; do
  cargo run -q --example save_peft_adapter -- "$BASE" "$OUT/$kind" "$kind"
  "$PYTHON" scripts/ref/make_peft_fixtures.py --check-rust-adapter "$OUT/$kind" --base "$BASE"
done
# LoRA's extras (bias, modules_to_save, PiSSA), each on the tiny base named in <case>/BASE.
cargo run -q --example save_peft_extras -- "$OUT/extras"
for dir in "$OUT"/extras/*/; do
  "$PYTHON" scripts/ref/make_peft_fixtures.py --check-rust-adapter "$dir" \
    --base "tests/fixtures/tiny_hf/$(cat "$dir/BASE")"
done
