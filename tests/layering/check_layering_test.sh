#!/usr/bin/env bash
# Proves check_layering.sh catches each rule: plants one bad #include in a
# scratch copy of the source tree per case and expects a failure naming that
# file; also expects the untouched copy and allowed includes to pass.
# Usage: check_layering_test.sh SOURCE_DIR
set -euo pipefail

src=$(cd "${1:?usage: check_layering_test.sh SOURCE_DIR}" && pwd)
checker="$src/tests/layering/check_layering.sh"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failures=0

fresh_copy() {
  rm -rf "$scratch/tree"
  mkdir -p "$scratch/tree"
  for dir in common worker client server; do
    cp -r "$src/$dir" "$scratch/tree/$dir"
  done
}

# expect_fail FILE INCLUDE: appending INCLUDE to FILE must fail the check and
# name FILE in the report.
expect_fail() {
  local file=$1 include=$2 out rc=0
  fresh_copy
  echo "$include" >>"$scratch/tree/$file"
  out=$("$checker" "$scratch/tree" 2>&1) || rc=$?
  if [ "$rc" -ne 1 ] || ! grep -qF "$file:" <<<"$out"; then
    echo "FAIL: '$include' in $file: rc=$rc, output:"
    echo "$out"
    failures=$((failures + 1))
  else
    echo "ok: caught '$include' in $file"
  fi
}

# expect_pass FILE INCLUDE: appending INCLUDE to FILE (or nothing, when FILE
# is empty) must pass.
expect_pass() {
  local file=$1 include=$2 out rc=0
  fresh_copy
  [ -n "$file" ] && echo "$include" >>"$scratch/tree/$file"
  out=$("$checker" "$scratch/tree" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAIL: expected pass for '$include' in ${file:-<untouched tree>}:"
    echo "$out"
    failures=$((failures + 1))
  else
    echo "ok: allowed '${include:-<untouched tree>}' ${file}"
  fi
}

expect_pass "" ""
expect_pass common/scoped_fd_test.cc '#include "tests/testing/status_matchers.h"'
expect_pass worker/pool.h '#include "absl/status/status.h"'
expect_pass server/server.cc '#include "worker/pool.h"'

expect_fail worker/pool.h '#include <grpcpp/grpcpp.h>'
expect_fail worker/fork_pool.cc '#include "grpcpp/server_context.h"'
expect_fail worker/protocol.cc '#include "forq/v1/task.pb.h"'
expect_fail worker/shm_ring.cc '#include <google/protobuf/message.h>'
expect_fail common/mutex.h '#include "google/protobuf/arena.h"'
expect_fail common/logging.cc '  #  include <grpc/grpc.h>'
expect_fail client/src/client.cc '#include "server/scheduler/scheduler.h"'
expect_fail client/cli/main.cc '#include "worker/pool.h"'
expect_fail worker/fork_pool.cc '#include "server/server.h"'
expect_fail worker/handler.h '#include "forq/client.h"'
expect_fail common/logging.cc '#include "worker/pool.h"'
expect_fail common/scoped_fd.h '#include "forq/client.h"'
expect_fail common/errno_status.cc '#include "tests/testing/status_matchers.h"'
expect_fail server/server.cc '#include "../worker/pool.h"'

if [ "$failures" -ne 0 ]; then
  echo "check_layering_test: $failures case(s) failed" >&2
  exit 1
fi
echo "check_layering_test: all cases passed"
