#!/usr/bin/env bash
# Packaging: every crate graft publishes packages (names free on crates.io, a version on every
# path dependency, the metadata crates.io wants), and every file a crate includes at compile
# time (include_str!/include_bytes!, e.g. graft-gpu's WGSL) is inside its own package; the npm
# package (built by scripts/build_web.sh) packs the files its package.json promises.
set -euo pipefail
cd "$(dirname "$0")/.."
CRATES=(graft-adapters graft-quant graft-text graft-arch graft-cpu graft-gpu graft-hub graft-models graft-train graft-serve graft-cli)
args=()
for c in "${CRATES[@]}"; do args+=(-p "$c"); done
rm -rf target/package
cargo package --no-verify --allow-dirty --quiet "${args[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bad=0
for c in "${CRATES[@]}"; do
  crate=$(ls target/package/"$c"-*.crate)
  tar -xzf "$crate" -C "$work"
  dir=$(ls -d "$work/$c"-*/)
  # every literal path in include_str!/include_bytes! under src/, resolved from its file
  while IFS=: read -r file path; do
    if [ ! -f "$(dirname "$file")/$path" ]; then
      echo "$c: ${file#$dir} includes $path, which is not in the package"
      bad=1
    fi
  done < <(grep -rhoP --include=*.rs -H 'include_(str|bytes)!\(\s*"\K[^"]+' "$dir/src" || true)
done
[ "$bad" = 0 ] || exit 1
echo "crates package: ${CRATES[*]}"
if [ -f web/npm/wasm/graft_wasm_bg.wasm ]; then
  listing=$(cd web/npm && npm pack --dry-run --json 2>/dev/null)
  for f in index.js index.d.ts wasm/graft_wasm.js wasm/graft_wasm_bg.wasm; do
    echo "$listing" | grep -q "\"path\": \"$f\"" || { echo "npm package lacks $f"; exit 1; }
  done
  echo "npm package packs: $(echo "$listing" | grep -o '"name": "[^"]*"' | head -1)"
else
  echo "npm package not checked: web/npm/wasm is not built (scripts/build_web.sh)"
  [ "${GRAFT_REQUIRE_BROWSER:-}" != 1 ] || exit 1
fi
