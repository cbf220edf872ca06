#!/usr/bin/env bash
# Training throughput and peak memory, side by side on this machine: graft (release build) with
# the SmolLM2-135M-Instruct Q4_1 base and with the same base expanded to f32, and transformers +
# PEFT on the f32 base (scripts/bench_train.py), all training a LoRA r=8 on q_proj,v_proj with
# AdamW on batch 4 × 128 tokens (1 warm-up + STEPS measured steps). The machine should be idle.
#
# Usage: PYTHON=/path/to/venv/bin/python scripts/bench_train.sh [STEPS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
STEPS="${1:-5}"
cd "$ROOT"
scripts/fetch_default_model.sh >/dev/null
cargo build --release -q -p graft-cli
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
target/release/graft bench-train --steps "$STEPS" 2>/dev/null
target/release/graft bench-train --steps "$STEPS" --f32 2>/dev/null
"$PY" scripts/bench_train.py --steps "$STEPS" 2>/dev/null | tail -1
