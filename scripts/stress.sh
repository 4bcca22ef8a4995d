#!/usr/bin/env bash
# Runs integration-test suites over and over beside each other, to bring out failures that
# only the concurrency of a full run shows (issue 15). Builds once, then runs the built test
# binaries directly: no rebuild per run.
#
#   STRESS_MINUTES      how long new runs are started (default 10; decimals allowed)
#   STRESS_SUITES       the tests/*.rs suites (default: close_semantics load upgrade hub)
#   STRESS_MAX_RUNS     at most this many runs of each suite (default 1000)
#   STRESS_RUN_TIMEOUT  seconds one run may take before it counts as failed (default 600)
#
# A failing run's whole output stays in target/stress/SUITE-N.log; its path and the failing
# tests' names are printed at once. Ends with the runs and failures of each suite; exit
# status 1 if any run failed.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${STRESS_MINUTES:-10}
read -r -a suites <<<"${STRESS_SUITES:-close_semantics load upgrade hub}"
max_runs=${STRESS_MAX_RUNS:-1000}
run_timeout=${STRESS_RUN_TIMEOUT:-600}
dir=target/stress

rm -rf "$dir"
mkdir -p "$dir"

# Build once; cargo names every test binary in its JSON messages.
targets=()
for suite in "${suites[@]}"; do targets+=(--test "$suite"); done
cargo test --locked --no-run --message-format=json "${targets[@]}" >"$dir/build.json"

binary_of() { # the executable cargo built for the test target $1
    grep '"kind":\["test"\]' "$dir/build.json" | grep "\"name\":\"$1\"" |
        grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -n 1
}

# Runs suite $1 (binary $2) until the deadline or max_runs; leaves "RUNS FAILED" in SUITE.count.
run_suite() {
    local suite=$1 binary=$2 runs=0 failed=0 log status names
    while ((runs < max_runs && $(date +%s) < deadline)); do
        runs=$((runs + 1))
        log="$dir/$suite-$runs.log"
        status=0
        timeout "$run_timeout" "$binary" >"$log" 2>&1 || status=$?
        if ((status == 0)); then
            rm -f "$log"
            echo "ok    $suite run $runs"
            continue
        fi
        failed=$((failed + 1))
        names=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | tr '\n' ' ')
        ((status == 124)) && names+="(timed out after $run_timeout s)"
        echo "FAIL  $suite run $runs: ${names:-exit status $status}; log: $log"
    done
    echo "$runs $failed" >"$dir/$suite.count"
}

deadline=$(($(date +%s) + $(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')))
echo "stress: ${suites[*]} side by side for $minutes min (at most $max_runs runs each); logs in $dir/"
for suite in "${suites[@]}"; do
    binary=$(binary_of "$suite")
    [[ -x $binary ]] || { echo "stress: no test binary for $suite" >&2; exit 2; }
    run_suite "$suite" "$binary" &
done
wait

total_failed=0
echo "stress summary (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)):"
for suite in "${suites[@]}"; do
    read -r runs failed <"$dir/$suite.count"
    printf '  %-16s %4d runs  %3d failed\n' "$suite" "$runs" "$failed"
    total_failed=$((total_failed + failed))
done
if ((total_failed > 0)); then
    echo "stress: $total_failed failed runs; their logs: $dir/*.log"
    exit 1
fi
echo "stress: no failure"
