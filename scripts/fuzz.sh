#!/usr/bin/env bash
# Builds the fuzz targets (Tests/Fuzz) with libFuzzer and runs each for FUZZ_SECONDS (default 60),
# from the seed corpus in Tests/Fuzz/corpus; what libFuzzer adds goes to .build/fuzz/corpus.
# A crash leaves its input in .build/fuzz/crashes/ and fails the run (fix it, then copy the input
# into Tests/Fuzz/corpus/<target>/ as its regression test: `make test` replays the corpus).
#
#   scripts/fuzz.sh                          # every target, 60 s each
#   FUZZ_SECONDS=30 scripts/fuzz.sh          # what .ci/run does
#   FUZZ_TARGETS="webhooks dns-answer" FUZZ_SECONDS=600 scripts/fuzz.sh
#   FUZZ_RUNS=10000000 FUZZ_SECONDS=3600 scripts/fuzz.sh   # BENCHMARKS.md: 10 million executions each
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
runs=${FUZZ_RUNS:--1}
targets=${FUZZ_TARGETS:-"grpc-framing http2-server protobuf webhooks nginx-config kubernetes-status dns-answer"}
build=.build/fuzz
swift build -c release --build-path "$build" --product slipway-fuzz \
    -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING -Xswiftc -enable-testing 2>&1 | grep -v "^\[" || true
binary="$build/release/slipway-fuzz"
[ -x "$binary" ] || { echo "fuzz: the build failed" >&2; exit 1; }
mkdir -p "$build/crashes"
failed=0
printf '%-18s %12s %10s %8s %s\n' target executions exec/s corpus result
for target in $targets; do
    mkdir -p "$build/corpus/$target"
    log="$build/$target.log"
    status=ok
    SLIPWAY_FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -runs="$runs" -print_final_stats=1 -rss_limit_mb=4096 -timeout=10 \
        -artifact_prefix="$build/crashes/$target-" "$build/corpus/$target" "Tests/Fuzz/corpus/$target" > "$log" 2>&1 || status=CRASH
    executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    corpus=$(ls "$build/corpus/$target" | wc -l)
    printf '%-18s %12s %10s %8s %s\n' "$target" "$executed" "$speed" "$corpus" "$status"
    if [ "$status" != ok ]; then
        failed=1
        grep -E "ERROR|Fatal error|Precondition failed|SUMMARY|artifact" "$log" | head -10 >&2
    fi
done
exit $failed
