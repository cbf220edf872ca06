#!/usr/bin/env bash
# graft serve against llama.cpp's llama-server, side by side on this machine, on Qwen2.5-Coder-0.5B
# Q4_K_M with 32 LoRA adapters (r=16 on every linear layer, made by PEFT and converted to GGUF by
# llama.cpp's own converter: scripts/make_bench_lora.py --count 32), closed-loop clients on
# loopback (`graft bench-serve`): C = 1, 8, 32 clients, each sending requests one after another,
# a fixed ~30-token prompt and 32 output tokens (EOS ignored), greedy. Cases: no adapter, one
# adapter for all requests, requests spread over 8 and over 32 adapters.
#
#   scripts/bench_serve.sh            (results: target/bench-serve.jsonl, and the tables on stdout)
#
# graft: `graft serve --max-batch 32` (each request's adapter in `model`). llama-server: the same
# GGUF and adapters (`--lora-init-without-apply`, per-request `lora` list; its README: "requests
# with different LoRA configurations will not be batched together"; every request sends its
# `lora` list, and `cache_prompt: false`, since the prompt is the same each time), 32 slots (-np 32, context
# 512 each), continuous batching (its default), --no-repack (AMX crash, ggml-org/llama.cpp#20824).
# Both on 2 threads. Needs target/release/graft, llama-server built from the pinned llama.cpp
# source (LLAMA_CPP, as scripts/bench_models.sh), and the adapters. transformers + PEFT mixed
# batches: scripts/bench_serve_peft.py (separately; it needs Python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_CPP="${LLAMA_CPP:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}"
BIN="${LLAMA_CPP}/build/bin"
GRAFT="${ROOT}/target/release/graft"
MODEL="${ROOT}/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MANY="${ROOT}/models/bench-lora/qwen2.5-coder-0.5b/many"
CLIENTS="${CLIENTS:-1,8,32}"
OUT="${ROOT}/target/bench-serve.jsonl"
PORT=18080
[[ -x "$GRAFT" ]] || { echo "build graft first: cargo build --release -p graft-cli" >&2; exit 1; }
[[ -d "$MANY/a31" ]] || { echo "make the adapters first: scripts/make_bench_lora.py --count 32" >&2; exit 1; }
[[ -z "${ONLY:-}" ]] && rm -f "$OUT"
names() { for i in $(seq 0 $(($1 - 1))); do printf 'a%02d,' "$i"; done | sed 's/,$//'; }
wait_up() { for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return 0; sleep 0.5; done; echo "server did not come up" >&2; return 1; }
bench() { # API BASE LABEL ADAPTERS
  local adapters=()
  [[ -n "$4" ]] && adapters=(--adapters "$4")
  "$GRAFT" bench-serve --url "http://127.0.0.1:$PORT" --api "$1" --base "$2" --label "$3" \
    --clients "$CLIENTS" --requests-per-client 2 --max-tokens 32 --json "$OUT" "${adapters[@]}"
}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%FT%TZ)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

ONLY="${ONLY:-}"   # graft or llama: run one side only
if [[ "$ONLY" != llama ]]; then
echo "== graft serve"
adapter_args=()
for i in $(seq 0 31); do n=$(printf 'a%02d' "$i"); adapter_args+=(--adapter "$n=$MANY/$n/adapter"); done
RAYON_NUM_THREADS=2 "$GRAFT" serve --model "$MODEL" --served-model-name base --port $PORT \
  --max-batch 32 --max-context 512 --max-queue 256 "${adapter_args[@]}" 2>/dev/null &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
wait_up
bench graft base "graft/no-adapter" ""
bench graft base "graft/1-adapter" "a00"
bench graft base "graft/8-adapters" "$(names 8)"
bench graft base "graft/32-adapters" "$(names 32)"
kill $SERVER; wait $SERVER 2>/dev/null || true
fi
[[ "$ONLY" == graft ]] && exit 0

echo "== llama-server"
loras=$(for i in $(seq 0 31); do printf '%s/a%02d/adapter.gguf,' "$MANY" "$i"; done | sed 's/,$//')
LD_LIBRARY_PATH="$BIN" "$BIN/llama-server" -m "$MODEL" --port $PORT -t 2 -tb 2 -np 32 -c $((32 * 512)) \
  --no-repack --lora "$loras" --lora-init-without-apply --no-webui >/dev/null 2>&1 &
SERVER=$!
wait_up
bench llama base "llama-server/no-adapter" ""
bench llama base "llama-server/1-adapter" "a00"
bench llama base "llama-server/8-adapters" "$(names 8)"
bench llama base "llama-server/32-adapters" "$(names 32)"
kill $SERVER; wait $SERVER 2>/dev/null || true
echo "results: $OUT"
