#!/usr/bin/env bash
# One LoRA training step of SmolLM2-135M-Instruct on CPU (batch 4 x 256, r=16, f32):
# tunelab vs PyTorch + peft, same machine, same run.
#   benches/run_sft_step.sh [RUNS] [ROUNDS] [--gradient-checkpointing]
# Each round runs benches/sft_step.rs and then benches/peer_torch_sft_step.py, each in its own
# process (peak RSS per process), RUNS timed steps each after one warm-up step.
# Needs a Python with torch + transformers + peft (scripts/ref/requirements.txt); set PYTHON.
# The base weights for the peer are tunelab's f32 model exported once to $SFT_BENCH_DIR/hf.
# Prints the JSON lines, then a markdown table (one row per side and round) and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
ROUNDS="${2:-1}"
PYTHON="${PYTHON:-/tmp/pyref/venv/bin/python}"
DIR="${SFT_BENCH_DIR:-/tmp/sft-step-bench}"
EXTRA="${SFT_BENCH_ARGS:-}" # e.g. --profile
# --gradient-checkpointing as a third argument runs both sides with it.
GC="${3:-}"
PEER_EXTRA=""
if [ "$GC" = "--gradient-checkpointing" ]; then EXTRA="$EXTRA $GC"; PEER_EXTRA="$GC"; fi
# Build once and run that executable in every round (no rebuild or cargo lock between rounds).
BIN=$(cargo bench --profile dev --bench sft_step --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "could not build benches/sft_step.rs" >&2; exit 1; }
mkdir -p "$DIR" && cp "$BIN" "$DIR/sft_step.bin" && BIN="$DIR/sft_step.bin"
if [ ! -f "$DIR/hf/model.safetensors" ]; then
  "$BIN" --export "$DIR/hf" >/dev/null
fi
load() { cut -d' ' -f1 /proc/loadavg; }
lines=()
for round in $(seq 1 "$ROUNDS"); do
  l=$(load)
  ours=$("$BIN" --runs "$RUNS" $EXTRA 2>/dev/null | tail -1)
  lines+=("$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["round"]=int(sys.argv[2]); d["load_before"]=float(sys.argv[3]); print(json.dumps(d))' "$ours" "$round" "$l")")
  l=$(load)
  peer=$("$PYTHON" benches/peer_torch_sft_step.py --model "$DIR/hf" --runs "$RUNS" --threads 2 $PEER_EXTRA 2>/dev/null | tail -1)
  lines+=("$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["round"]=int(sys.argv[2]); d["load_before"]=float(sys.argv[3]); print(json.dumps(d))' "$peer" "$round" "$l")")
done
printf '%s\n' "${lines[@]}"
python3 - "${lines[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in sys.argv[1:] if l.strip()]
print()
print("| round | side | load before | step s (median) | tokens/s | CPU s per step | tokens per CPU s "
      "| peak RSS process MB | peak RSS training MB | RSS after load MB | training peak - after load MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    inc = r["peak_rss_training_mb"] - r["rss_after_load_mb"]
    print(f"| {r['round']} | {r['impl']} | {r['load_before']:.2f} | {r['step_s']:.2f} | {r['tokens_per_s']:.1f} "
          f"| {r['cpu_s']:.2f} | {r['tokens_per_cpu_s']:.1f} | {r['peak_rss_process_mb']:.0f} "
          f"| {r['peak_rss_training_mb']:.0f} | {r['rss_after_load_mb']:.0f} | {inc:.0f} |")
def med(side, key):
    return statistics.median(r[key] for r in rows if r["impl"] == side)
def grow(side):
    return statistics.median(r["peak_rss_training_mb"] - r["rss_after_load_mb"] for r in rows if r["impl"] == side)
o, p = "tunelab", "torch+peft"
print()
print(f"tunelab / torch (medians over rounds): tokens/s {med(o, 'tokens_per_s') / med(p, 'tokens_per_s'):.2f}, "
      f"tokens per CPU s {med(o, 'tokens_per_cpu_s') / med(p, 'tokens_per_cpu_s'):.2f}, "
      f"peak RSS (process) {med(o, 'peak_rss_process_mb') / med(p, 'peak_rss_process_mb'):.2f}, "
      f"training peak over post-load RSS {grow(o) / grow(p):.2f}")
for r in rows:
    if "profile" in r:
        print(r["impl"], "round", r["round"], "profile:", json.dumps(r["profile"]))
PY
