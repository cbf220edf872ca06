#!/usr/bin/env bash
# Builds the npm package in web/npm: graft-wasm for wasm32 (release), then wasm-bindgen's
# `--target web` glue into web/npm/wasm. Offline-friendly: wasm-bindgen-cli comes from
# crates.io at the exact version of the wasm-bindgen crate (no binary download).
set -euo pipefail
cd "$(dirname "$0")/.."
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/,""); print; exit}' Cargo.lock)
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$WB_VERSION" ]; then
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi
PROFILE=${GRAFT_WASM_PROFILE:-release}
cargo build -p graft-wasm --target wasm32-unknown-unknown --profile "$PROFILE"
DIR=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
rm -rf web/npm/wasm
wasm-bindgen --target web --out-dir web/npm/wasm "target/wasm32-unknown-unknown/$DIR/graft_wasm.wasm"
ls -l web/npm/wasm
echo "gzip size of the wasm: $(gzip -9 -c web/npm/wasm/graft_wasm_bg.wasm | wc -c) bytes"
