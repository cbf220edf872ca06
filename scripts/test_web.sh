#!/usr/bin/env bash
# The browser tests: builds the npm package (scripts/build_web.sh), then runs
# web/tests/run.mjs in Debian's Chromium (WebGPU on SwiftShader) against the local Hub.
# Chromium comes from the system (apt-get install chromium); none is ever downloaded. Without
# one, the tests skip with a message — unless GRAFT_REQUIRE_BROWSER=1 (CI), which installs it
# with apt-get or fails.
set -euo pipefail
cd "$(dirname "$0")/.."
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  if [ "${GRAFT_REQUIRE_BROWSER:-}" = 1 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq chromium >/dev/null
  else
    echo "skipping the browser tests: no Chromium at $CHROMIUM (apt-get install chromium, or set CHROMIUM)"
    exit 0
  fi
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "${GRAFT_REQUIRE_BROWSER:-}" = 1 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "skipping the browser tests: no Node.js (apt-get install nodejs npm)"
    exit 0
  fi
fi
scripts/build_web.sh
cargo build -q -p graft-cli -p graft-hub-server
(cd web/tests && npm ci --no-audit --no-fund --silent)
CHROMIUM=$CHROMIUM node web/tests/run.mjs
