#!/usr/bin/env bash
# Runs every crossflow fuzz target for RUNS executions each (default 20000),
# one job at a time, and prints one line per target: executions, corpus
# size, and whether it crashed. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Crashing inputs land in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [RUNS] [TARGET...]
#
# Seeds: fuzz/seeds/<target>/ (committed) are read as well as the working
# corpus fuzz/corpus/<target>/ (not committed). The regression inputs in
# fuzz/regressions/<target>/ are replayed first.
set -euo pipefail
cd "$(dirname "$0")"

RUNS=${1:-20000}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(cargo +nightly fuzz list)
fi

# safe Rust only (unsafe is forbidden workspace-wide): no sanitizer needed,
# and without one the targets run several times faster. Debug assertions
# (overflow checks) stay on.
FLAGS=(--sanitizer none)
cargo +nightly fuzz build "${FLAGS[@]}" >/dev/null

status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds+=("seeds/$t")
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        # Replay every kept crash: each must now pass.
        if ! cargo +nightly fuzz run "${FLAGS[@]}" "$t" regressions/"$t"/* -- -runs=1 \
            >"artifacts/$t/regressions.log" 2>&1; then
            echo "$t: a regression input fails again (artifacts/$t/regressions.log)"
            status=1
        fi
    fi
    log="artifacts/$t/run.log"
    start=$(date +%s)
    # One in-process job (libFuzzer's default). `-jobs=1` would fork a
    # worker that logs to fuzz-0.log instead of here.
    if cargo +nightly fuzz run "${FLAGS[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
        -runs="$RUNS" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log)"
        status=1
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    corpus=$(ls "corpus/$t" | wc -l)
    # The fixture's federation (keys, store) of the process that just ended.
    rm -rf /dev/shm/crossflow-fuzz-* "${TMPDIR:-/tmp}"/crossflow-fuzz-*
    echo "$t: executions=$execs cov=$cov corpus=$corpus seconds=$(( $(date +%s) - start )) $result"
done
exit $status
