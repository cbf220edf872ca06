#!/usr/bin/env bash
# Download speed of one large LFS file from the local Hub (graft-hub-server on loopback):
# `graft download` (verifies sha256 while downloading) side by side with Python's
# huggingface_hub `hf_hub_download` (checks only the size), each into a fresh cache, best of 3.
# Usage: scripts/bench_download.sh [FILE] [PYTHON]   (default: the SmolLM2 GGUF, /work/pyenv/venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PY=${2:-/work/pyenv/venv/bin/python}
cargo build -q -p graft-cli -p graft-hub-server
T=$(mktemp -d)
trap 'kill $SRV 2>/dev/null || true; rm -rf "$T"' EXIT
mkdir -p "$T/root/models/bench/big/branches/main"
ln -s "$(realpath "$FILE")" "$T/root/models/bench/big/branches/main/$(basename "$FILE")"
target/debug/graft-hub-server --root "$T/root" > "$T/srv.txt" &
SRV=$!
for _ in $(seq 50); do [ -s "$T/srv.txt" ] && break; sleep 0.1; done
EP=$(awk '{print $2}' "$T/srv.txt")
NAME=$(basename "$FILE")
# Warm the server's hash cache and the page cache once.
HF_ENDPOINT=$EP HF_HUB_CACHE=$T/warm target/debug/graft download --quiet bench/big "$NAME" >/dev/null
best() { sort -n | head -1; }
g=$(for _ in 1 2 3; do rm -rf "$T/c"; s=$(date +%s.%N); HF_ENDPOINT=$EP HF_HUB_CACHE=$T/c target/debug/graft download --quiet bench/big "$NAME" >/dev/null; echo "$(date +%s.%N) - $s" | bc; done | best)
p=$(for _ in 1 2 3; do rm -rf "$T/c"; s=$(date +%s.%N); HF_ENDPOINT=$EP HF_HUB_CACHE=$T/c HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_TELEMETRY=1 "$PY" -c "from huggingface_hub import hf_hub_download; hf_hub_download('bench/big', '$NAME')"; echo "$(date +%s.%N) - $s" | bc; done | best)
size=$(stat -L -c %s "$FILE")
echo "file: $NAME, $size bytes"
echo "graft download (sha256 verified): $g s ($(echo "$size / $g / 1000000" | bc) MB/s)"
echo "huggingface_hub hf_hub_download:  $p s ($(echo "$size / $p / 1000000" | bc) MB/s)"
