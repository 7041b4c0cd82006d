#!/usr/bin/env bash
# Greedy generation speed, tunelab vs llama-cpp-python, same GGUF, same machine, same run.
#   benches/run.sh [TOKENS] [RUNS]
# Needs a Python with llama-cpp-python (scripts/ref/requirements.txt); set PYTHON to it.
# Prints both JSON lines and a markdown row for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS="${1:-64}"
RUNS="${2:-5}"
PROMPT="Once upon a time, in a small village by the sea, there lived"
PYTHON="${PYTHON:-python3}"
GGUF="$(python3 scripts/fetch_smollm2.py)"

# The dev profile builds dependencies (candle, gemm) at opt-level 3; see Cargo.toml.
cargo bench --profile dev --bench generate --no-run >/dev/null 2>&1
ours=$(cargo bench --profile dev --bench generate -- --tokens "$TOKENS" --runs "$RUNS" --prompt "$PROMPT" 2>/dev/null | tail -1)
peer=$("$PYTHON" benches/peer_llamacpp.py --gguf "$GGUF" --prompt "$PROMPT" --tokens "$TOKENS" --runs "$RUNS" --threads "$(nproc)" 2>/dev/null | tail -1)
echo "$ours"
echo "$peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"| {o['tokens']} | {o['median_tok_s']:.1f} | {p['median_tok_s']:.1f} | {o['median_tok_s']/p['median_tok_s']:.2f} | {o['median_prompt_ms']:.0f} | {p['median_prompt_ms']:.0f} |")
PY
