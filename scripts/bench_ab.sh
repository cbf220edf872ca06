#!/usr/bin/env bash
# Two graft binaries side by side on the CPU: `graft bench` (SmolLM2-135M Q4_1, 128-token
# prefill, 64 decode steps) run alternately, A then B, ROUNDS times, base model and the demo
# LoRA; prints every run and the median prefill/decode tokens/s of each binary with B/A.
# For refactors that must not change speed: keep the old release binary, build the new one,
#   scripts/bench_ab.sh /path/to/old/graft target/release/graft [ROUNDS]
# Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: scripts/bench_ab.sh GRAFT_A GRAFT_B [ROUNDS]}
B=${2:?usage: scripts/bench_ab.sh GRAFT_A GRAFT_B [ROUNDS]}
ROUNDS=${3:-7}
scripts/fetch_default_model.sh >/dev/null
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "== machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
for r in $(seq 1 "$ROUNDS"); do
  for which in A B; do
    bin=$A; [ "$which" = B ] && bin=$B
    for cfg in base lora; do
      extra=(); [ "$cfg" = lora ] && extra=(--model adapters/smollm2-pirate)
      "$bin" bench "${extra[@]}" --device cpu --runs 3 --json "$OUT/$which-$cfg-$r.json" >/dev/null 2>&1
      python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(f'round $r $which $cfg prefill {d[\"prefill_tps\"]:.1f} decode {d[\"decode_tps\"]:.1f}')" "$OUT/$which-$cfg-$r.json"
    done
  done
done
python3 - "$OUT" <<'EOF'
import glob, json, statistics, sys
out = sys.argv[1]
print("| config | metric | A median | B median | B/A |")
print("|---|---|---:|---:|---:|")
for cfg in ["base", "lora"]:
    for m in ["prefill_tps", "decode_tps"]:
        med = {w: statistics.median(json.load(open(f))[m] for f in glob.glob(f"{out}/{w}-{cfg}-*.json")) for w in "AB"}
        print(f"| {cfg} | {m} | {med['A']:.1f} | {med['B']:.1f} | {med['B'] / med['A']:.3f} |")
EOF
