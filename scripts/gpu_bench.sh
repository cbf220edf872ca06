#!/usr/bin/env bash
# The GPU benchmark with its PyTorch + PEFT baseline, in one call, on a machine with an
# NVIDIA GPU but no Rust toolchain, no Vulkan loader and no internet (the project's lent H100).
#
#   scripts/gpu_bench.sh prepare   # here: fetch Debian's Vulkan loader, build graft, copy the baseline
#   scripts/gpu_bench.sh run       # there, from the repo root, carrying .gl and .gpu-bench
#
# graft runs a model of SmolLM2-135M's exact shape and formats made in memory (`--synthetic`:
# the 96 MB GGUF does not fit what can be carried); speed depends on shapes and formats only.
# Each graft run also prints the decode mat-vec's bandwidth for every GGUF block type (Q8_0,
# Q4_0, Q4_1, Q5_0, Q5_1, Q2_K…Q6_K) next to a copy kernel's, so the K-quant decoders are
# measured too. The baseline is ../shared/reference/hf_bench.py (transformers + PEFT on the same shape, f32 and
# bf16, eager). Output goes to $OUT (or ./gpu-bench-out).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  for d in /.gl/ /.gpu-bench/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
  done
  mkdir -p .gl .gpu-bench
  L=$(mktemp -d); mkdir -p "$L/partial"
  o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$L"
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1)
  cargo build --release -p graft-cli
  cp target/release/graft .gpu-bench/
  cp ../shared/reference/hf_bench.py .gpu-bench/
  du -sh .gl .gpu-bench
  ;;
run)
  out="${OUT:-gpu-bench-out}"; mkdir -p "$out"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json 2>/dev/null | head -1)
  export VK_DRIVER_FILES="$icd"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
  date -u | tee -a "$out/device.txt"
  b=".gpu-bench/graft bench --device gpu --synthetic --prompt-tokens 512 --decode-tokens 256 --runs 3"
  $b --json "$out/graft_q4_1.json" | tee "$out/graft_q4_1.txt"
  $b --f16-weights --json "$out/graft_f16.json" | tee "$out/graft_f16.txt"
  timeout 300 /opt/torch/.venv/bin/python3 .gpu-bench/hf_bench.py | tee "$out/pytorch_peft.txt"
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
