#!/usr/bin/env bash
# Runs one fuzzer for $OMNIBUS_FUZZ_SECONDS seconds (default: 600 in the long variant,
# OMNIBUS_FAULT_VARIANT=long, else 60), from the seed corpus plus what earlier runs found.
# Fails on any crash, sanitizer report, timeout or oversized allocation; the input is kept as
# <work>/crash-* (replay: build-fuzz/tests/fuzz/fuzz_<name> <that file>).
#   run.sh <fuzz executable> <seed corpus> <work dir> <name>
set -euo pipefail
exe=$1 seeds=$2 work=$3 name=${4:-envelope}
if [ -n "${OMNIBUS_FUZZ_SECONDS:-}" ]; then seconds=$OMNIBUS_FUZZ_SECONDS
elif [ "${OMNIBUS_FAULT_VARIANT:-}" = long ]; then seconds=600
else seconds=60; fi
mkdir -p "$work/corpus"
set +e
"$exe" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
  -artifact_prefix="$work/" "$work/corpus" "$seeds" >"$work/fuzz.log" 2>&1
rc=$?
set -e
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/fuzz.log" | grep -o '[0-9]*$' || echo 0)
crashes=$(grep -c -E '^==[0-9]+==ERROR|runtime error:|deadly signal|out-of-memory|timeout after' "$work/fuzz.log" || true)
echo "fuzz: $name seconds=$seconds runs=$runs corpus=$(ls "$work/corpus" | wc -l) crashes=$crashes exit=$rc"
if [ "$rc" -ne 0 ]; then
  tail -n 60 "$work/fuzz.log"
  exit 1
fi
