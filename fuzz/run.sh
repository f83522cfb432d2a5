#!/usr/bin/env bash
# Runs each fuzz target for a bounded time, one after the other, one
# libFuzzer process each (no -jobs), and prints per target: executions,
# exec/s, coverage, corpus size and findings.
# Not part of CI.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#   FUZZ_SECONDS=300 fuzz/run.sh
#
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# FUZZ_TOOLCHAIN (default nightly) picks the toolchain; CARGO_TARGET_DIR is
# honoured. Corpora are kept in fuzz/corpus/<target>, crashes in
# fuzz/artifacts/<target>, logs in fuzz/logs/<target>.log (all ignored by git).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

seconds=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(parse_client validate_published resume handshake engineio)
fi
toolchain=${FUZZ_TOOLCHAIN:-nightly}

if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz on $toolchain is needed: rustup toolchain install $toolchain --profile minimal; cargo install cargo-fuzz" >&2
    exit 2
fi

mkdir -p logs
cargo "+$toolchain" fuzz build -O

summary=()
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seed="seeds/$t"
    dirs=("corpus/$t")
    [ -d "$seed" ] && dirs+=("$seed")
    dict=()
    [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
    before=$(find "artifacts/$t" -type f | wc -l)
    stamp=$(mktemp)
    echo "== $t: ${seconds}s"
    set +e
    cargo "+$toolchain" fuzz run -O "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 \
        -rss_limit_mb=4096 -timeout=10 "${dict[@]}" >"logs/$t.log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*')
    corpus=$(find "corpus/$t" -type f | wc -l)
    after=$(find "artifacts/$t" -type f | wc -l)
    findings=$((after - before))
    line=$(printf '%-20s execs %-10s exec/s %-7s cov %-6s corpus %-6s new findings %s (exit %s)' \
        "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corpus" "$findings" "$rc")
    echo "$line"
    if [ "$rc" -ne 0 ] || [ "$findings" -gt 0 ]; then
        status=1
        grep -m3 -E 'panicked|ERROR: libFuzzer|SUMMARY' "logs/$t.log" | sed 's/^/    /' || true
        find "artifacts/$t" -type f -newer "$stamp" | sed 's/^/    artifact: /' | head -5
    fi
    rm -f "$stamp"
    summary+=("$line")
done

echo
echo "== summary (${seconds}s per target; logs in fuzz/logs)"
printf '%s\n' "${summary[@]}"
exit $status
