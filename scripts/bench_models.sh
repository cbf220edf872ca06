#!/usr/bin/env bash
# graft and llama.cpp side by side on the real Q4_K_M models, on this CPU: prefill of a
# 128-token prompt and decode of 64 tokens, 2 threads, best of 3 (graft bench) and mean of 3
# (llama-bench), with no adapter; graft also with a LoRA (its overhead, unmerged).
#
#   scripts/bench_models.sh [MODEL.gguf...]     (default: the fetched Qwen2.5-Coder 0.5B and 1.5B)
#
# Needs: target/release/graft (cargo build --release -p graft-cli) and llama.cpp's llama-bench
# built from the pinned source (llama-cpp-python 0.3.36's vendor/llama.cpp; set LLAMA_CPP to
# its folder). llama-bench runs with --repack 0: with ggml's extra CPU buffer types this build
# crashes on AMX-capable CPUs (ggml-org/llama.cpp issue #20824). llama-bench has no LoRA option,
# so llama.cpp's adapter row is not measured here yet.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_CPP="${LLAMA_CPP:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}"
BIN="${LLAMA_CPP}/build/bin"
GRAFT="${ROOT}/target/release/graft"
[[ -x "$GRAFT" ]] || { echo "build graft first: cargo build --release -p graft-cli" >&2; exit 1; }
[[ -x "$BIN/llama-bench" ]] || { echo "llama-bench not found under $BIN (set LLAMA_CPP)" >&2; exit 1; }
MODELS=("$@")
if [[ ${#MODELS[@]} -eq 0 ]]; then
  MODELS=("$ROOT/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" "$ROOT/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
fi
ADAPTER="$ROOT/tests/fixtures/real_arch/qwen2.5-coder-0.5b/adapter"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; 2 threads"
for m in "${MODELS[@]}"; do
  [[ -f "$m" ]] || { echo "skipping $m (not fetched)"; continue; }
  echo "== $(basename "$m")"
  echo "-- graft, no adapter"
  RAYON_NUM_THREADS=2 "$GRAFT" bench --model "$m" --device cpu --prompt-tokens 128 --decode-tokens 64 --runs 3 2>&1 | grep -E "^\||overhead|memory" || true
  if [[ "$m" == *0.5b* ]]; then
    echo "-- graft, LoRA r=4 on q_proj/v_proj (tests/fixtures/real_arch)"
    RAYON_NUM_THREADS=2 "$GRAFT" bench --model "$m" --adapter "$ADAPTER" --device cpu --prompt-tokens 128 --decode-tokens 64 --runs 3 2>&1 | grep -E "^\||overhead|memory" || true
  fi
  echo "-- llama.cpp (llama-bench, --repack 0)"
  LD_LIBRARY_PATH="$BIN" "$BIN/llama-bench" -m "$m" -p 128 -n 64 -t 2 -r 3 --repack 0 2>&1 | grep -E "pp128|tg64" || true
done
