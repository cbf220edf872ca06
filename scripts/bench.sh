#!/usr/bin/env bash
# Side-by-side CPU benchmark for docs/benchmarks.md: graft, llama.cpp and transformers+PEFT on
# SmolLM2-135M-Instruct Q4_1 with and without the demo LoRA, the same workload for all
# (128-token prompt prefill, 64 greedy decode tokens, best of 3, 2 threads).
# Needs the Python venv of scripts/bench_baselines.py (llama-cpp-python 0.3.36 built from
# source, torch, transformers, peft). Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
scripts/fetch_default_model.sh >/dev/null
cargo build --release -q -p graft-cli
mkdir -p models/bench
echo "== machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "== graft, base"
./target/release/graft bench --json models/bench/graft-base.json
echo "== graft, demo adapter (unmerged)"
./target/release/graft bench --model adapters/smollm2-pirate --json models/bench/graft-lora.json
echo "== llama.cpp and transformers+PEFT"
"$PY" scripts/bench_baselines.py --warmup 0 --out models/bench/baselines.json
