#!/bin/sh
# Runs every libFuzzer target of a FORQ_FUZZ build for SECONDS each, one
# after the other, starting from the committed seeds (fuzz/corpus/<target>)
# and the inputs earlier runs found (BUILD/corpus/<target>, not committed).
# Crash reproducers land in BUILD/artifacts/; the exit status is non-zero if
# any target crashed. Usage: fuzz/run.sh BUILD SECONDS [TARGET...]
set -eu
build=$1
seconds=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
targets=${*:-"fuzz_frame_decoder fuzz_manager_codec fuzz_local_socket fuzz_rest_json fuzz_route_match"}
mkdir -p "$build/artifacts"
failed=""
for t in $targets; do
  mkdir -p "$build/corpus/$t"
  log="$build/$t.log"
  echo "== $t: ${seconds}s"
  # -timeout: an input taking longer than 10 s is a hang (e.g. superlinear
  # parsing). -rss_limit_mb: forq must stay far below it.
  if "$build/fuzz/$t" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$t-" \
      "$build/corpus/$t" "$src/corpus/$t" >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed="$failed $t"
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "   $status: ${execs:-?} executions, $cov (log: $log)"
done
if [ -n "$failed" ]; then
  echo "crashed:$failed (reproducers in $build/artifacts/)" >&2
  exit 1
fi
