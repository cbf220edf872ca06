#!/usr/bin/env bash
# Decode side by side on this machine (the CPU-speed issue's decode targets): graft and llama.cpp,
# 2 threads, batch 1, 4 and 8 sequences (128-token prompts, 64 decoded tokens each), with and
# without an adapter, on this CPU's best instruction set and capped at AVX2 on both sides
# (graft: GRAFT_MAX_ISA=avx2; llama.cpp: a second build with GGML_NATIVE=OFF, AVX2 on,
# AVX-512 off); and graft's opt-in 8-bit-activation path next to its exact one (speed, logits,
# greedy tokens).
#
# Models: SmolLM2-135M-Instruct Q4_1 (no adapter on llama.cpp's side: the demo adapter has no
# GGUF) and Qwen2.5-Coder-0.5B-Instruct Q4_K_M with the r=16 LoRA of scripts/make_bench_lora.py
# (PEFT's folder for graft, llama.cpp's own conversion for llama.cpp).
#
# llama.cpp: the llama-cpp-python 0.3.36 vendor copy (LLAMA_CPP), built twice:
#   cmake -S . -B build      -DGGML_NATIVE=ON  -DLLAMA_CURL=OFF && cmake --build build --target llama-batched-bench
#   cmake -S . -B build-avx2 -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
#         -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DLLAMA_CURL=OFF && cmake --build build-avx2 …
# run with --no-repack (its repacked buffer types crash this AMX CPU's build).
#
#   scripts/fetch_models.sh qwen2.5-coder-0.5b
#   LLAMA_CPP=… /work/py5/bin/python scripts/make_bench_lora.py qwen2.5-coder-0.5b
#   scripts/bench_decode.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_CPP="${LLAMA_CPP:-/work/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp}"
DECODE="${DECODE:-64}"
cargo build --release -q -p graft-cli
G=./target/release/graft
SMOL=models/SmolLM2-135M-Instruct.Q4_1.gguf
QWEN=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
LORA=models/bench-lora/qwen2.5-coder-0.5b
echo "== machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, flags:$(grep -o -w 'avx2\|avx512f\|avx512_vnni\|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' '), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

llama() { # build-dir model [lora]
  local bin="$LLAMA_CPP/$1/bin"
  [[ -x "$bin/llama-batched-bench" ]] || { echo "(no $bin/llama-batched-bench)"; return; }
  LD_LIBRARY_PATH="$bin" "$bin/llama-batched-bench" -m "$2" ${3:+--lora "$3"} -t 2 -tb 2 \
    -c 4096 -b 2048 -ub 512 -npp 128 -ntg "$DECODE" -npl 1,4,8 --no-repack 2>&1 |
    grep -E '^\|' || true
}

for isa in native avx2; do
  if [[ $isa == avx2 ]]; then export GRAFT_MAX_ISA=avx2; build=build-avx2; else unset GRAFT_MAX_ISA; build=build; fi
  echo
  echo "######## $isa"
  echo "== graft $(basename $SMOL), exact, then the 8-bit path"
  $G bench --device cpu --model $SMOL --prompt-tokens 128 --decode-tokens "$DECODE" --runs 3 --batch 1,4,8 2>/dev/null | grep -v '^peak'
  $G bench --device cpu --model $SMOL --prompt-tokens 128 --decode-tokens "$DECODE" --runs 3 --batch 1,4,8 --int8-activations 2>/dev/null | grep -v '^peak'
  echo "== llama.cpp ($build) $(basename $SMOL)"
  llama $build $SMOL
  if [[ -f $QWEN && -d $LORA/adapter ]]; then
    echo "== graft $(basename $QWEN) + LoRA r=16, exact, then the 8-bit path"
    $G bench --device cpu --model $QWEN --adapter $LORA/adapter --prompt-tokens 128 --decode-tokens "$DECODE" --runs 2 --batch 1,4,8 2>/dev/null | grep -v '^peak'
    $G bench --device cpu --model $QWEN --adapter $LORA/adapter --prompt-tokens 128 --decode-tokens "$DECODE" --runs 2 --batch 1,4,8 --int8-activations 2>/dev/null | grep -v '^peak'
    echo "== llama.cpp ($build) $(basename $QWEN), no adapter, then the LoRA"
    llama $build $QWEN
    llama $build $QWEN $LORA/adapter.gguf
  fi
done
