#!/usr/bin/env bash
# `make test-container`: builds the forqd image with a real container engine
# (podman by default, CONTAINER_ENGINE=docker works too), runs it with its
# ports published on 127.0.0.1 and checks, from the host:
#   - without a token file forqd refuses to start on 0.0.0.0, saying why;
#   - with one (deploy/make-tokens.sh, mounted at /run/secrets/forq-tokens),
#     calls without a token are refused, a read token cannot submit, and
#     the host CLI's `forq submit primes 2000000 --wait` with the admin
#     token (FORQ_TOKEN) prints 148933; the CLI inside the image works too;
#   - /metrics is refused without a token (401), scraped from the host with
#     the read token and passes `promtool check metrics`;
#   - forqd runs as a non-root uid, the HEALTHCHECK passes, and ldd finds
#     every library inside the image;
#   - `stop` (SIGTERM) drains: a short running task finishes, a long one is
#     re-queued, forqd exits 0 within the grace;
#   - restarted on the same volume, the re-queued task runs again and
#     succeeds, nothing lost;
#   - with --cpus 1 forqd runs 1 worker.
# Prints image size, build and start times.
#   tests/container/container_test.sh HOST_FORQ_CLI
set -euo pipefail
cd "$(dirname "$0")/../.."
CLI="$(readlink -f "${1:-build/client/forq}")"
ENGINE="${CONTAINER_ENGINE:-podman}"
IMAGE="${FORQ_IMAGE:-localhost/forq:latest}"
PY=/usr/bin/python3
# Without systemd, podman cannot schedule periodic healthchecks and says so
# on every run/stop; the test runs the healthcheck itself.
quiet_engine() { "$ENGINE" "$@" 2> >(grep -v "systemd connection" >&2); }
[ "$ENGINE" = podman ] && deploy/install-container-deps.sh
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"
fi
tag="forq-test-$$"
vol="$tag-data"
containers=()
tmp="$(mktemp -d)"
secrets="$tmp/secrets"  # deploy/make-tokens.sh

cleanup() {
  for c in "${containers[@]}"; do quiet_engine rm -f -v "$c" >/dev/null 2>&1 || true; done
  "$ENGINE" volume rm -f "$vol" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for c in "${containers[@]}"; do
    echo "--- logs of $c (tail)" >&2
    "$ENGINE" logs "$c" 2>&1 | tail -30 >&2 || true
  done
  exit 1
}
ok() { echo "ok: $*"; }
now() { date +%s.%N; }
elapsed() { $PY -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json_field() {  # json_field FIELD < json
  $PY -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1"
}

# Waits (bounded; there is no notification to wait on) until forqd in the
# container answers /readyz with 200.
wait_ready() {
  local port="$1" deadline=$((SECONDS + 90))
  until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "forqd not ready on port $port within 90 s"
    sleep 0.1
  done
}
# Polls the task until it reaches STATE (bounded).
wait_state() {
  local id="$1" want="$2" deadline=$((SECONDS + 60)) st=""
  while :; do
    st="$("$CLI" get "$id" --json | json_field state)"
    [ "$st" = "$want" ] && return 0
    [ $SECONDS -lt $deadline ] || fail "task $id is $st, not $want, after 60 s"
    sleep 0.1
  done
}
run_forqd() {  # run_forqd NAME EXTRA_ARGS... ; publishes $GRPC/$HTTP
  local name="$1"
  shift
  containers+=("$name")
  quiet_engine run -d --name "$name" \
    -p "127.0.0.1:$GRPC:50051" -p "127.0.0.1:$HTTP:8080" \
    -v "$secrets/forq-tokens:/run/secrets/forq-tokens:ro" \
    --read-only --stop-timeout 40 "$@" "$IMAGE" >/dev/null
}

[ -x "$CLI" ] || fail "host CLI $CLI not found (make build first)"
command -v "$ENGINE" >/dev/null || fail "$ENGINE is not installed"

# ---- build (FORQ_SKIP_BUILD=1 reuses an existing $IMAGE while iterating)
build_s=skipped
if [ "${FORQ_SKIP_BUILD:-0}" != 1 ]; then
  deploy/base-image.sh
  t0="$(now)"
  fmt=()
  [ "$ENGINE" = podman ] && fmt=(--format docker)  # keeps HEALTHCHECK
  "$ENGINE" build "${fmt[@]}" -q -f deploy/Dockerfile -t "$IMAGE" . >/dev/null ||
    fail "image build failed"
  build_s="$(elapsed "$t0" "$(now)")"
fi
size="$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")"
ok "image $IMAGE built in ${build_s} s, size $((size / 1000000)) MB"

# ---- libraries and user inside the image
missing="$(quiet_engine run --rm --entrypoint /usr/bin/ldd "$IMAGE" /usr/local/bin/forqd | grep -c 'not found' || true)"
[ "$missing" = 0 ] || fail "forqd misses $missing libraries in the image"
ok "ldd finds every forqd library inside the image"

# ---- without a token file forqd does not start on 0.0.0.0
out="$("$ENGINE" run --rm --read-only "$IMAGE" 2>&1)" &&
  fail "forqd started without its token file: $out"
grep -q "cannot read --auth_tokens_file /run/secrets/forq-tokens" <<< "$out" ||
  fail "no token file: forqd said '$out'"
out="$("$ENGINE" run --rm --read-only -e FORQ_AUTH_TOKENS_FILE= "$IMAGE" 2>&1)" &&
  fail "forqd listened on 0.0.0.0 without tokens or TLS: $out"
grep -q "refusing to listen on 0.0.0.0:50051" <<< "$out" ||
  fail "no tokens: forqd said '$out'"
ok "without a token file forqd refuses to start (exit != 0): 'cannot read --auth_tokens_file', and with none configured 'refusing to listen on 0.0.0.0:50051'"

# ---- first start on a fresh volume, with tokens
deploy/make-tokens.sh "$secrets" 2>/dev/null
ADMIN="$(cat "$secrets/admin.token")"
READ="$(cat "$secrets/metrics.token")"
"$ENGINE" volume create "$vol" >/dev/null
GRPC="$(free_port)"
HTTP="$(free_port)"
export FORQ_ADDR="127.0.0.1:$GRPC"
export FORQ_TOKEN="$ADMIN"
t0="$(now)"
run_forqd "$tag" -v "$vol:/data" -e FORQ_WORKERS=2 -e FORQ_DRAIN_GRACE=5s
wait_ready "$HTTP"
start_s="$(elapsed "$t0" "$(now)")"
ok "container started and ready (/readyz 200) in ${start_s}s"

uid="$("$ENGINE" exec "$tag" awk '/^Uid:/ { print $2 }' /proc/1/status)"
[ -n "$uid" ] && [ "$uid" != 0 ] || fail "forqd (PID 1) runs as uid '$uid'"
ok "forqd runs as uid $uid (non-root)"

if [ "$ENGINE" = podman ]; then
  "$ENGINE" healthcheck run "$tag" || fail "HEALTHCHECK failed"
else
  "$ENGINE" exec "$tag" /usr/local/bin/forq-healthcheck || fail "HEALTHCHECK failed"
fi
ok "HEALTHCHECK (/healthz) passes"

notoken="$(FORQ_TOKEN= "$CLI" submit echo x 2>&1)" && fail "submit without a token succeeded: $notoken"
grep -qi "requires a token" <<< "$notoken" || fail "submit without a token said '$notoken'"
out="$(FORQ_TOKEN="$READ" "$CLI" submit echo x 2>&1)" && fail "a read token submitted: $out"
grep -qi "permission" <<< "$out" || fail "submit with a read token said '$out'"
ok "submit without a token refused: '$(head -1 <<< "$notoken" | cut -c1-100)'; with the read token: '$(head -1 <<< "$out" | cut -c1-100)'"

out="$("$CLI" submit primes 2000000 --wait)" || fail "submit primes failed: $out"
[ "$out" = 148933 ] || fail "forq submit primes 2000000 --wait printed '$out'"
ok "forq submit primes 2000000 --wait printed $out"

code="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP/metrics")"
[ "$code" = 401 ] || fail "GET /metrics without a token answered $code"
curl -fsS -H "Authorization: Bearer $READ" "http://127.0.0.1:$HTTP/metrics" \
  > "/tmp/$tag.metrics" || fail "GET /metrics with the read token failed"
grep -q '^forq_tasks_finished_total{.*state="succeeded".*} 1$' "/tmp/$tag.metrics" ||
  fail "/metrics lacks the finished task: $(grep finished "/tmp/$tag.metrics")"
lint="$(promtool check metrics < "/tmp/$tag.metrics" 2>&1)" || fail "promtool: $lint"
[ -z "$lint" ] || fail "promtool check metrics: $lint"
rm -f "/tmp/$tag.metrics"
ok "/metrics: 401 without a token; scraped from the host with the read token: forq_tasks_finished_total{state=\"succeeded\"} 1, promtool clean"

size_in="$("$ENGINE" exec -e FORQ_TOKEN="$ADMIN" "$tag" forq workers --json |
  $PY -c 'import json,sys; print(json.load(sys.stdin).get("size", 0))')" ||
  fail "the CLI inside the image failed with FORQ_TOKEN"
[ "$size_in" = 2 ] || fail "forq workers inside the image says $size_in workers"
"$ENGINE" exec "$tag" forq workers >/dev/null 2>&1 &&
  fail "the CLI inside the image worked without a token"
ok "the CLI inside the image (podman exec -e FORQ_TOKEN) sees $size_in workers; refused without FORQ_TOKEN"

# ---- stop drains: the short task finishes, the long one is re-queued
short="$("$CLI" submit sleep 1500)"
long="$("$CLI" submit sleep 12000)"
wait_state "$short" RUNNING
wait_state "$long" RUNNING
t0="$(now)"
quiet_engine stop "$tag" >/dev/null
stop_s="$(elapsed "$t0" "$(now)")"
code="$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$tag")"
[ "$code" = 0 ] || fail "forqd exited $code after stop"
logs="$("$ENGINE" logs "$tag" 2>&1)"
grep -q "1 running tasks re-queued" <<< "$logs" || fail "forqd did not re-queue the long task"
$PY -c "import sys; sys.exit(0 if float(sys.argv[1]) < 15 else 1)" "$stop_s" ||
  fail "stop took ${stop_s}s (drain grace 5s)"
ok "$ENGINE stop: drained and exited 0 in ${stop_s}s (grace 5s), 1 task re-queued"

# ---- restart from the same volume: nothing lost
quiet_engine rm "$tag" >/dev/null
t0="$(now)"
run_forqd "$tag-2" -v "$vol:/data" -e FORQ_WORKERS=2
wait_ready "$HTTP"
restart_s="$(elapsed "$t0" "$(now)")"
st="$("$CLI" get "$short" --json | json_field state)"
[ "$st" = SUCCEEDED ] || fail "short task finished during drain is $st"
"$CLI" wait "$long" --timeout 60 >/dev/null || fail "re-queued task did not succeed"
att="$("$CLI" get "$long" --json | json_field attempt)"
[ "$att" = 1 ] || fail "re-queued task used attempt $att (drain must not spend one)"
n="$("$CLI" list --all --json | $PY -c 'import json,sys; print(len(json.load(sys.stdin).get("tasks", [])))')"
[ "$n" = 3 ] || fail "expected 3 tasks after restart, found $n"
ok "restarted on the same volume in ${restart_s}s: the task running at stop re-ran and SUCCEEDED (attempt 1), short one SUCCEEDED during drain, 3/3 tasks kept"
quiet_engine stop "$tag-2" >/dev/null

# ---- the CPU quota sets the worker count
workers_now() { "$CLI" workers --json | $PY -c 'import json,sys; print(json.load(sys.stdin).get("size", 0))'; }
run_forqd "$tag-cpus-all"
wait_ready "$HTTP"
all="$(workers_now)"
[ "$all" = "$(nproc)" ] || fail "without a CPU limit forqd runs $all workers, host has $(nproc) CPUs"
quiet_engine rm -f -v "$tag-cpus-all" >/dev/null
run_forqd "$tag-cpu" --cpus 1
wait_ready "$HTTP"
workers="$(workers_now)"
[ "$workers" = 1 ] || fail "with --cpus 1 forqd runs $workers workers"
ok "with --cpus 1 forqd runs $workers worker (without a limit: $all, one per host CPU)"
quiet_engine stop "$tag-cpu" >/dev/null

echo "PASS: container test (image $((size / 1000000)) MB, build ${build_s} s, start ${start_s} s, stop ${stop_s} s)"
