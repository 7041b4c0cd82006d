#!/usr/bin/env bash
# NF4 quantize/dequantize throughput and 4-bit forward time: tunelab vs bitsandbytes on CPU,
# same machine, same run.   benches/run_quant.sh [RUNS]
# Needs a Python with torch + bitsandbytes (scripts/ref/requirements.txt); set PYTHON to it.
# Prints both JSON lines, then markdown rows for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-7}"
PYTHON="${PYTHON:-python3}"
cargo bench --profile dev --bench quant --no-run >/dev/null 2>&1
ours=$(cargo bench --profile dev --bench quant -- --runs "$RUNS" 2>/dev/null | tail -1)
peer=$("$PYTHON" benches/peer_bnb_quant.py --runs "$RUNS" --threads "$(nproc)" --json 2>/dev/null | tail -1)
echo "$ours"
echo "$peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
peer = {("x".join(map(str, r["shape"])), r["op"], r["double_quant"]): r for r in p["results"]}
def pg(shape, op, dq):
    r = peer.get((shape, op, dq)) or peer.get((shape, op, None))
    return r["gbps"] if r else float("nan")
print("| shape | double quant | quantize tunelab / bnb | dequantize tunelab / bnb | tunelab dequantize into a buffer | copy into a buffer, Rust / torch | dequantize-into / copy |")
print("|---|---|---|---|---|---|---|")
for r in o["tunelab"]:
    s, dq = r["shape"], r["double_quant"]
    print(f"| {s} | {'yes' if dq else 'no'} | {r['quantize_gbps']:.2f} / {pg(s,'quantize_4bit',dq):.2f} | "
          f"{r['dequantize_gbps']:.2f} / {pg(s,'dequantize_4bit',dq):.2f} | {r['dequantize_into_gbps']:.2f} | "
          f"{r['copy_gbps']:.2f} / {pg(s,'copy_',None):.2f} | {r['dequantize_into_gbps']/r['copy_gbps']:.2f} |")
print()
print("| weight | tokens | dense f32 ms | NF4+DQ ms | ratio |")
print("|---|---|---|---|---|")
for r in o["forward"]:
    print(f"| {r['shape']} | {r['tokens']} | {r['dense_ms']:.3f} | {r['nf4_ms']:.3f} | {r['ratio']:.2f} |")
PY
