#!/usr/bin/env bash
# graft and llama.cpp side by side on the real Q4_K_M models, on this CPU, 2 threads: prefill of
# a ~128-token prompt and decode of 64 tokens, with no adapter and with one LoRA (r=16, alpha 32,
# on every linear layer: scripts/make_bench_lora.py made it with PEFT and converted it with
# llama.cpp's own convert_lora_to_gguf.py, so both engines run the same adapter, unmerged).
#
#   scripts/bench_models.sh [MODEL.gguf...]     (default: the fetched Qwen2.5-Coder 0.5B and 1.5B)
#
# graft: `graft bench` (best of 3; prefill of 128 ids, 64 decoded; the adapter on and off in one
# process; peak RSS against file + KV cache). llama.cpp: llama-bench (mean of 3, no adapter, the
# usual reference figure), and llama-completion with and without `--lora` (one run each after a
# warm-up run; llama-bench has no LoRA option) on a 128-token prompt, 64 tokens with
# --ignore-eos; its peak RSS from /usr/bin/time. Each figure comes from its own process, one
# after another, on an otherwise idle machine.
#
# Needs: target/release/graft (cargo build --release -p graft-cli), llama.cpp's llama-bench and
# llama-completion built from the pinned source (llama-cpp-python 0.3.36's vendor/llama.cpp; set
# LLAMA_CPP to its folder), and models/bench-lora/ (scripts/make_bench_lora.py). llama.cpp runs
# with --repack 0 / --no-repack: with ggml's extra CPU buffer types this build crashes on
# AMX-capable CPUs (ggml-org/llama.cpp issue #20824).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_CPP="${LLAMA_CPP:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}"
BIN="${LLAMA_CPP}/build/bin"
GRAFT="${ROOT}/target/release/graft"
[[ -x "$GRAFT" ]] || { echo "build graft first: cargo build --release -p graft-cli" >&2; exit 1; }
[[ -x "$BIN/llama-bench" && -x "$BIN/llama-completion" ]] || { echo "llama-bench/llama-completion not found under $BIN (set LLAMA_CPP)" >&2; exit 1; }
MODELS=("$@")
if [[ ${#MODELS[@]} -eq 0 ]]; then
  MODELS=("$ROOT/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" "$ROOT/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
fi
PROMPT=$(mktemp)
trap 'rm -f "$PROMPT"' EXIT
# ~128 tokens of plain English (the exact count is in llama.cpp's report)
for _ in $(seq 1 12); do printf 'The quick brown fox jumps over the lazy dog near the river. '; done > "$PROMPT"
llama_completion() { # MODEL [--lora FILE]: prints llama.cpp's own prefill/decode report and peak RSS
  local args=(-m "$1" -f "$PROMPT" -n 64 -t 2 -tb 2 -c 512 --temp 0 --ignore-eos -no-cnv --no-repack --no-display-prompt "${@:2}")
  LD_LIBRARY_PATH="$BIN" "$BIN/llama-completion" "${args[@]}" >/dev/null 2>&1 || true # warm-up (page cache)
  LD_LIBRARY_PATH="$BIN" /usr/bin/time -f "peak RSS %M KiB" "$BIN/llama-completion" "${args[@]}" 2>&1 >/dev/null |
    grep -E "prompt eval time|^.*[^t] eval time|peak RSS" | sed -E 's/^llama_perf_context_print: *//' || true
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; 2 threads; $(date -u +%FT%TZ)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for m in "${MODELS[@]}"; do
  [[ -f "$m" ]] || { echo "skipping $m (not fetched)"; continue; }
  name=$(basename "$m" | sed -E 's/-instruct-q4_k_m.gguf//')
  lora="$ROOT/models/bench-lora/$name"
  echo "== $(basename "$m") ($(stat -c %s "$m") bytes)"
  echo "-- graft bench, no adapter"
  RAYON_NUM_THREADS=2 "$GRAFT" bench --model "$m" --device cpu --prompt-tokens 128 --decode-tokens 64 --runs 3 2>&1 | grep -E "^\||overhead|peak RSS" || true
  if [[ -d "$lora/adapter" ]]; then
    echo "-- graft bench, LoRA r=16 on every linear layer ($lora/adapter)"
    RAYON_NUM_THREADS=2 "$GRAFT" bench --model "$m" --adapter "$lora/adapter" --device cpu --prompt-tokens 128 --decode-tokens 64 --runs 3 2>&1 | grep -E "^\||overhead|peak RSS" || true
  else
    echo "-- (no $lora/adapter: run scripts/make_bench_lora.py for the adapter rows)"
  fi
  echo "-- llama.cpp: llama-bench, no adapter (--repack 0)"
  LD_LIBRARY_PATH="$BIN" "$BIN/llama-bench" -m "$m" -p 128 -n 64 -t 2 -r 3 --repack 0 2>&1 | grep -E "pp128|tg64" || true
  echo "-- llama.cpp: llama-completion, no adapter"
  llama_completion "$m"
  if [[ -f "$lora/adapter.gguf" ]]; then
    echo "-- llama.cpp: llama-completion, --lora $lora/adapter.gguf"
    llama_completion "$m" --lora "$lora/adapter.gguf"
  fi
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
