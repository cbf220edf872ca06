#!/usr/bin/env bash
# Trains a LoRA (+ lm_head in modules_to_save) with `graft train` on the default model
# (SmolLM2-135M-Instruct, Q4_1 GGUF) and the demo data, then checks with Python PEFT that the
# saved adapter loads with no missing or unexpected keys and gives the logits graft computes
# (transformers dequantizes the GGUF to f32; graft runs the Q4_1 base: 1e-4 relative).
#
# Usage: PYTHON=/path/to/venv/bin/python scripts/check_graft_training_with_peft.sh
# Needs: torch 2.5.1, transformers 4.57.1, peft 0.21.2, gguf 0.19.0 in $PYTHON; the model
# (scripts/fetch_default_model.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
scripts/fetch_default_model.sh >/dev/null
cargo build --release -q -p graft-cli
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
TOKENS="1,9690,314,253,3575,282,4649,47,2"
for extra in "" "--modules-to-save lm_head" "--method ia3"; do
    echo "== graft train $extra"
    rm -rf "$TMP/out"
    # shellcheck disable=SC2086
    target/release/graft train --data adapters/smollm2-pirate/train.jsonl --out "$TMP/out" \
        --steps 3 --lr 1e-2 --lora-dropout 0 --quiet $extra
    target/release/graft logits --model models/SmolLM2-135M-Instruct.Q4_1.gguf --adapter "$TMP/out" \
        --tokens "$TOKENS" --out "$TMP/logits.safetensors" --device cpu
    "$PY" scripts/check_peft_loads_graft_adapter.py --base models --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
        --adapter "$TMP/out" --logits "$TMP/logits.safetensors" --tokens "$TOKENS"
done
