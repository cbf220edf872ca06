#!/usr/bin/env bash
# Prefill side by side on this machine (the CPU-speed issue's first target): graft, llama.cpp
# (llama-bench, built from the pinned llama.cpp source as scripts/bench_models.sh builds it) and
# transformers f32 (scripts/bench_prefill_hf.py), 128- and 512-token prompts, 2 threads, on
# SmolLM2-135M-Instruct Q4_1 and Qwen2.5-Coder-0.5B-Instruct Q4_K_M; and the GEMM against this
# CPU's FMA peak (`graft bench-gemm`). GRAFT_MAX_ISA=avx2 runs graft's AVX2 kernels instead.
#
#   PYTHON=/work/py5/bin/python scripts/bench_prefill.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
LLAMA_CPP="${LLAMA_CPP:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}"
BIN="${LLAMA_CPP}/build/bin"
cargo build --release -q -p graft-cli
echo "== machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
./target/release/graft bench-gemm --runs 5
for m in models/SmolLM2-135M-Instruct.Q4_1.gguf models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; do
  [[ -f "$m" ]] || { echo "missing $m (scripts/fetch_models.sh)"; continue; }
  for p in 128 512; do
    echo "== graft $(basename "$m") prompt $p"
    ./target/release/graft bench --device cpu --model "$m" --prompt-tokens "$p" --decode-tokens 8 --runs 3 2>/dev/null | grep '^| base'
  done
  if [[ -x "$BIN/llama-bench" ]]; then
    echo "== llama.cpp $(basename "$m")"
    LD_LIBRARY_PATH="$BIN" "$BIN/llama-bench" -m "$m" -t 2 -p 128,512 -n 0 -r 3 --repack 0 2>&1 | grep -E "pp128|pp512" || true
  fi
  echo "== transformers f32 $(basename "$m")"
  "$PY" scripts/bench_prefill_hf.py "$m" --prompts 128,512 --threads 2 --runs 3
done
