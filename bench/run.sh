#!/usr/bin/env bash
# Runs every benchmark program with short settings and keeps the raw output.
#
#   bench/run.sh <build dir>            # what `make bench` runs
#   OUT=/tmp/forq-bench bench/run.sh build-bench
#   ONLY="forq_bench" bench/run.sh build-bench      # a subset, by program
#   FORQ_BENCH_ARGS="--reps=5" bench/run.sh build-bench
#   ONLY=peers bench/run.sh build   # forq vs multiprocessing only
#
# "peers" (on when ../shared/peers or $PEERS_DIR holds bench_mp_pool.py, and
# Debian's /usr/bin/python3 exists) runs forq_bench's e2e, rtt, map and
# manager sections with --durability=sync,none (both wait modes), then
# multiprocessing.Pool(2) (bench_mp_pool.py pool) and mp.Manager
# (bench_ipc.py manager), one repetition of each in turn, and prints the
# ratios of the medians (ratios.py): the peers are measured seconds from
# forq on the same machine. PEER_REPS sets the repetitions (3);
# PEER_FORQ_FLAGS replaces forq_bench's wait/submit/map choices.
#
# Output: $OUT (default <build dir>/bench-results/<UTC timestamp>) holds
# machine.txt, one <program>.txt per program (stdout + stderr) and
# summary.txt (every RESULT line). Takes about 6-8 minutes on 2 vCPUs. The
# load-sensitive end-to-end figures (forq_bench) run last.
set -euo pipefail

die() {
  echo "run.sh: $*" >&2
  exit 1
}

[[ $# -eq 1 ]] || die "usage: $0 <build dir>"
BUILD=$1
BIN="$BUILD/bench"
[[ -d "$BIN" ]] || die "no $BIN: configure and build first (make build, or cmake + ninja forq_bench pool_bench store_bench http_bench map_bench)"

HERE=$(cd "$(dirname "$0")" && pwd)
PEERS_DIR=${PEERS_DIR:-$HERE/../../shared/peers}
PROGRAMS=(store_bench pool_bench http_bench map_bench forq_bench)
if [[ -f "$PEERS_DIR/bench_mp_pool.py" && -x /usr/bin/python3 ]]; then
  PROGRAMS+=(peers)
fi
ONLY=${ONLY:-${PROGRAMS[*]}}
for p in $ONLY; do
  [[ $p == peers ]] && continue
  [[ -x "$BIN/$p" ]] || die "missing $BIN/$p: build it (ninja -C $BUILD $p forqd forq)"
done

OUT=${OUT:-"$BUILD/bench-results/$(date -u +%Y%m%dT%H%M%SZ)"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
echo "run.sh: writing to $OUT"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Real parallelism check: one busy loop alone vs two at once, plus steal.
cpu_check() {
  local code='import time;t=time.perf_counter();sum(i*i for i in range(3_000_000));print(round(time.perf_counter()-t,4))'
  if ! command -v python3 >/dev/null; then
    echo "cpu_check: skipped (no python3)"
    return
  fi
  local s0 s1 one two
  s0=$(awk '/^cpu /{print $9}' /proc/stat)
  one=$(python3 -c "$code")
  two=$( (python3 -c "$code" & python3 -c "$code" & wait) | tr '\n' ' ')
  s1=$(awk '/^cpu /{print $9}' /proc/stat)
  echo "cpu_check one_alone_s=$one two_parallel_s=\"$two\" steal_ticks=$((s1 - s0)) loadavg=\"$(loadavg)\""
}

# Cost of one small synchronous write on the disk that holds $TMPDIR (the
# forqd data dirs): --durability=sync figures scale with it.
fsync_probe() {
  local f="${TMPDIR:-/tmp}/forq-bench-fsync.$$" out
  out=$(dd if=/dev/zero of="$f" bs=4k count=300 oflag=dsync 2>&1 | tail -n 1)
  rm -f "$f"
  awk -v s="$(echo "$out" | awk '{print $(NF-3)}')" \
    'BEGIN { printf "fsync_probe: dd bs=4k count=300 oflag=dsync: %.0f us per write\n", s / 300 * 1e6 }'
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc: $(nproc)"
  echo "uname -r: $(uname -r)"
  echo "cpu: $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
  echo "build: $BUILD ($(grep -m1 '^CMAKE_BUILD_TYPE' "$BUILD/CMakeCache.txt" 2>/dev/null || echo 'build type unknown'))"
  echo "git: $(git -C "$(dirname "$0")/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "loadavg: $(loadavg)"
  # Round trips on a VM depend on how long an idle vCPU polls before it
  # halts (docs/operations.md, "Latency on virtual machines").
  echo "cpuidle: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)," \
    "guest_halt_poll_ns: $(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || echo n/a)"
  cpu_check
  fsync_probe
} | tee "$OUT/machine.txt"

# run <label> <program> <args...>: output to $OUT/<label>.txt (appended to
# with RUN_APPEND=1), load before and after.
FAILED=()
run() {
  local label=$1 name=$2
  shift 2
  case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
  local log="$OUT/$label.txt"
  [[ ${RUN_APPEND:-0} == 1 ]] || : >"$log"
  echo "run.sh: $name $* (load $(loadavg))"
  {
    echo "# command: $BIN/$name $*"
    echo "# load before: $(loadavg)"
  } >>"$log"
  local start=$SECONDS rc=0
  "$BIN/$name" "$@" >>"$log" 2>&1 || rc=$?
  echo "# load after: $(loadavg); $((SECONDS - start)) s; exit $rc" >>"$log"
  if [[ $rc -ne 0 ]]; then
    echo "run.sh: $label FAILED (exit $rc); last lines of $log:" >&2
    tail -n 15 "$log" >&2
    FAILED+=("$label")
  else
    echo "run.sh: $label done in $((SECONDS - start)) s"
  fi
}

# shellcheck disable=SC2086  # FORQ_BENCH_ARGS is a list of flags
{
  run store_bench store_bench --seconds=1 --runs=1
  run pool_bench_respawn pool_bench respawn 50
  run pool_bench_speedup pool_bench speedup 1500000 8
  run http_bench http_bench --tasks=2000 --latency_tasks=500 --conns=16
  run map_bench map_bench --n=20000 --window=1000 --workers=2 \
    --forqd_flag=--durability=none
  # Ingest alone (dispatch drained), to set against the figures with workers.
  run forq_bench_paused forq_bench --sections=submit,batch --reps=1 \
    --seconds=1 --paused
  run forq_bench forq_bench --reps=3 --seconds=2 ${FORQ_BENCH_ARGS:-}
}

# forq vs Python's multiprocessing, interleaved: one repetition of forq,
# then one of each peer, PEER_REPS times, so a slow or fast spell of the
# machine falls on both sides alike.
run_peers() {
  case " $ONLY " in *" peers "*) ;; *) return 0 ;; esac
  [[ -f "$PEERS_DIR/bench_mp_pool.py" ]] || die "no peers in $PEERS_DIR"
  local reps=${PEER_REPS:-3}
  local saved_only=$ONLY t rep
  : >"$OUT/forq_bench_peers.txt"
  for t in pool manager; do : >"$OUT/peers_$t.txt"; done
  for ((rep = 1; rep <= reps; rep++)); do
    ONLY="forq_bench"
    # PEER_FORQ_FLAGS narrows forq's side (e.g. "--wait=stream
    # --submit=batch,async --map=batched" when fsync is slow: unary Submit
    # x N in sync mode costs one fsync per task).
    # shellcheck disable=SC2086  # word splitting of the flags is wanted
    RUN_APPEND=1 run forq_bench_peers forq_bench \
      --sections=e2e,rtt,map,manager --durability=sync,none \
      ${PEER_FORQ_FLAGS:---wait=stream,rpc --map=batched,single} --reps=1
    ONLY=$saved_only
    for t in "bench_mp_pool.py pool" "bench_ipc.py manager"; do
      local log="$OUT/peers_${t##* }.txt"
      echo "run.sh: peers $t, repetition $rep of $reps (load $(loadavg))"
      {
        echo "# command: REPS=1 /usr/bin/python3 $PEERS_DIR/$t"
        echo "# load before: $(loadavg)"
      } >>"$log"
      # shellcheck disable=SC2086  # $t is "script test"
      (cd "$PEERS_DIR" && REPS=1 /usr/bin/python3 $t) >>"$log" 2>&1 ||
        FAILED+=("peers $t")
      echo "# load after: $(loadavg)" >>"$log"
    done
  done
  echo
  /usr/bin/python3 "$HERE/ratios.py" "$OUT/forq_bench_peers.txt" \
    "$OUT/peers_pool.txt" "$OUT/peers_manager.txt" | tee "$OUT/ratios.txt"
}
run_peers

# Every log but the summary itself (an OUT used before already holds one).
find "$OUT" -maxdepth 1 -name '*.txt' ! -name summary.txt -print0 |
  sort -z | xargs -0 grep -h '^RESULT' >"$OUT/summary.txt" || true
{
  echo "after: $(cpu_check)"
  echo "after: $(fsync_probe)"
} | tee -a "$OUT/machine.txt"

if [[ -f "$OUT/forq_bench.txt" ]]; then
  echo
  sed -n '/^| operation/,$p' "$OUT/forq_bench.txt"
fi
echo
echo "run.sh: raw output in $OUT"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  die "failed: ${FAILED[*]}"
fi
