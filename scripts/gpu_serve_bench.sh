#!/usr/bin/env bash
# graft serve on the GPU with its transformers + PEFT baseline, in one call, on the lent H100 (no
# Rust toolchain, no Vulkan loader, no model files, no internet; 64 MiB of files carried).
#
#   scripts/gpu_serve_bench.sh prepare   # here: Debian's Vulkan loader, graft, the baseline script
#   scripts/gpu_serve_bench.sh run       # there, from the repo root, carrying .gl and .gpu-serve
#
# The model is a random-weight Qwen2.5-Coder-0.5B of the Q4_K_M file's exact shapes and tensor
# types (`graft serve --synthetic`, with --synthetic-adapters 32 random r=16 LoRAs on all 7 linear
# layers); speed depends on shapes and formats, not values. Closed-loop clients on loopback
# (`graft bench-serve`, 32-token answers, EOS ignored): C = 1, 8, 32 for no adapter, one adapter,
# 8 and 32 adapters. Baseline in the same call: scripts/bench_serve_peft.py --synthetic on CUDA in
# bf16 (PEFT's mixed-adapter batches at B = 1, 8, 32). Targets (issue: graft serve): 8 mixed
# adapters at batch 32 >= 0.9x one adapter; >= 3,000 output tokens/s on the 0.5B model.
# Output: $OUT (default ./gpu-serve-out).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
  for d in /.gl/ /.gpu-serve/; do
    grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
  done
  mkdir -p .gl .gpu-serve
  if ! ls .gl/*.deb >/dev/null 2>&1; then
    L=$(mktemp -d); mkdir -p "$L/partial"
    o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$L"
    # shellcheck disable=SC2086
    apt-get $o update -qq
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1)
  fi
  cargo build --release -p graft-cli
  cp target/release/graft .gpu-serve/
  strip .gpu-serve/graft || true
  cp scripts/bench_serve_peft.py .gpu-serve/
  du -sh .gl .gpu-serve
  ;;
run)
  out="${OUT:-gpu-serve-out}"; mkdir -p "$out"
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json 2>/dev/null | head -1)
  export VK_DRIVER_FILES="$icd"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
  date -u | tee -a "$out/device.txt"
  G=.gpu-serve/graft
  PORT=18080
  $G serve --synthetic --synthetic-adapters 32 --device gpu --served-model-name base --port $PORT \
    --max-batch 32 --max-loras 32 --max-lora-rank 16 --max-context 512 --max-queue 256 \
    > "$out/serve.log" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
  cat "$out/serve.log"
  names() { for i in $(seq 0 $(($1 - 1))); do printf 's%02d,' "$i"; done | sed 's/,$//'; }
  bench() { # LABEL ADAPTERS
    local a=(); [[ -n "$2" ]] && a=(--adapters "$2")
    timeout 120 $G bench-serve --url "http://127.0.0.1:$PORT" --base base --label "$1" \
      --clients 1,8,32 --requests-per-client 4 --max-tokens 32 --json "$out/graft.jsonl" "${a[@]}" \
      | tee -a "$out/graft.txt"
  }
  bench "graft-gpu/no-adapter" ""
  bench "graft-gpu/1-adapter" "s00"
  bench "graft-gpu/8-adapters" "$(names 8)"
  bench "graft-gpu/32-adapters" "$(names 32)"
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^graft_(batch|requests)' > "$out/metrics.txt" || true
  kill $SERVER; wait $SERVER 2>/dev/null || true
  timeout 240 /opt/torch/.venv/bin/python3 .gpu-serve/bench_serve_peft.py --synthetic --device cuda \
    --dtype bfloat16 --batch-sizes 1,8,32 --runs 2 --budget 200 | tee "$out/peft.txt"
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
