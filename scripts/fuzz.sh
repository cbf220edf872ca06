#!/usr/bin/env bash
# Fuzzes graft's parsers of untrusted input with cargo-fuzz (libFuzzer + AddressSanitizer):
# GGUF headers and whole GGUF models, the quantized block decoders and matmuls, safetensors,
# adapter_config.json (and whole adapter loads), config.json, and GGUF tokenizers / chat
# templates. See fuzz/README.md.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 seconds, every target)
#
# Installs cargo-fuzz (and the nightly toolchain's use) if missing, builds the corpora from the
# fixtures (fuzz/make_corpus.py; fuzz/corpus/ is git-ignored and grows across runs), builds the
# targets, then runs one target at a time under `nice -n 19` with an RSS limit, a per-allocation
# limit and a per-input timeout, so that crashes, hangs and memory blow-ups are all findings.
# Prints executions, wall and CPU seconds per target; exits non-zero if any target found a
# crash, hang or out-of-memory (the input is saved under fuzz/artifacts/<target>/; replay it
# with `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>`).
#
# Environment: FUZZ_RSS_MB (default 2048), FUZZ_MALLOC_MB (largest single allocation, default
# 512), FUZZ_TIMEOUT (seconds per input, default 20), FUZZ_JOBS_NICE (default 19).
set -uo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
shift || true
ALL=(gguf_header gguf_model quant_blocks safetensors_header adapter_config model_config gguf_tokenizer)
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL[@]}")
RSS="${FUZZ_RSS_MB:-2048}"
MALLOC="${FUZZ_MALLOC_MB:-512}"
TIMEOUT="${FUZZ_TIMEOUT:-20}"
NICE="${FUZZ_JOBS_NICE:-19}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal || exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    nice -n "$NICE" cargo install cargo-fuzz --locked || exit 1
fi

echo "== corpora from the fixtures"
python3 fuzz/make_corpus.py || echo "(make_corpus.py failed: fuzzing from what fuzz/corpus/ has)"

echo "== building the fuzz targets (release, debug assertions, AddressSanitizer)"
(cd fuzz && nice -n "$NICE" cargo +nightly fuzz build -O -a) || exit 1
BIN=fuzz/target/x86_64-unknown-linux-gnu/release

mkdir -p fuzz/logs
failed=()
summary=()
total_cpu=0
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="fuzz/logs/$t.log"
    echo "== $t: ${SECS}s"
    # One core per process (graft's spinning pool and rayon's), so a run takes one core.
    # Leak detection is off: the thread pools a Model starts leave glibc's thread-local
    # destructor records behind, which LeakSanitizer reports; memory growth is still caught by
    # the RSS limit.
    GRAFT_THREADS=1 RAYON_NUM_THREADS=1 /usr/bin/time -f "%e %U %S" -o "fuzz/logs/$t.time" \
        nice -n "$NICE" "$BIN/$t" "fuzz/corpus/$t" -detect_leaks=0 \
        -max_total_time="$SECS" -rss_limit_mb="$RSS" -malloc_limit_mb="$MALLOC" \
        -timeout="$TIMEOUT" -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 \
        -close_fd_mask=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # after a crash there are no final stats: the last status line's count
    [ -z "$execs" ] && execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    # (time prints "Command exited with non-zero status N" first when it did)
    read -r wall user sys < <(tail -1 "fuzz/logs/$t.time" 2>/dev/null) || true
    cpu=$(awk -v u="${user:-0}" -v s="${sys:-0}" 'BEGIN { printf "%.0f", u + s }')
    total_cpu=$((total_cpu + cpu))
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    corpus=$(ls "fuzz/corpus/$t" | wc -l)
    status=ok
    if [ "$rc" -ne 0 ]; then
        status="FAILED (exit $rc): $(grep -m1 -E 'ERROR: libFuzzer|ERROR: AddressSanitizer|panicked at|SUMMARY' "$log" | cut -c1-200)"
        failed+=("$t")
        grep -E 'Test unit written to|^artifact_prefix' "$log" | tail -2
    fi
    line=$(printf '%-20s %12s execs  %6ss wall  %6ss cpu  %-10s corpus %5s  %s' "$t" "${execs:-?}" "${wall:-?}" "$cpu" "${cov:-}" "$corpus" "$status")
    echo "$line"
    summary+=("$line")
done

echo
echo "== summary (${SECS}s per target; logs in fuzz/logs/)"
printf '%s\n' "${summary[@]}"
echo "total CPU time: ${total_cpu}s"
if [ ${#failed[@]} -ne 0 ]; then
    echo "crashes, hangs or out-of-memory in: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
