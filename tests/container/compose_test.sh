#!/usr/bin/env bash
# `make test-compose`: brings up docker-compose.yml with podman-compose (or
# COMPOSE="docker compose") under a private project name and free host
# ports, with tokens made by deploy/make-tokens.sh, and checks from the host:
#   - every service's healthcheck passes;
#   - forqd answers /metrics 401 without a token;
#   - a task submitted to each forqd node succeeds;
#   - with several nodes on the shared PostgreSQL store: tasks submitted to
#     the first node run on the workers of more than one node, each once,
#     and a Wait on the last node returns them;
#   - Prometheus's targets API shows every forqd node up (scraped with the
#     read token of the metrics-token secret), its rules API
#     shows forq's alert rules loaded;
#   - every Grafana dashboard expression returns data from that Prometheus;
#   - `promtool test rules` passes.
#   tests/container/compose_test.sh HOST_FORQ_CLI
set -euo pipefail
cd "$(dirname "$0")/../.."
CLI="$(readlink -f "${1:-build/client/forq}")"
ENGINE="${CONTAINER_ENGINE:-podman}"
read -r -a COMPOSE <<< "${COMPOSE:-podman-compose}"
PY=/usr/bin/python3
[ "$ENGINE" = podman ] && deploy/install-container-deps.sh
if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF="$PWD/deploy/podman/containers.conf"
fi
# podman-compose builds without --format; docker format keeps HEALTHCHECK
# and shares the layer cache with container_test.sh's build of the image.
[ "$ENGINE" = podman ] && export BUILDAH_FORMAT=docker
project="forqtest$$"
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export FORQ_GRPC_PORT="$(free_port)" FORQ_HTTP_PORT="$(free_port)" PROMETHEUS_PORT="$(free_port)"
for n in 2 3; do
  export "FORQ_GRPC_PORT_$n=$(free_port)" "FORQ_HTTP_PORT_$n=$(free_port)"
done
PROM="http://127.0.0.1:$PROMETHEUS_PORT"
tmp="$(mktemp -d)"
export FORQ_SECRETS_DIR="$tmp/secrets"
deploy/make-tokens.sh "$FORQ_SECRETS_DIR" 2>/dev/null
export FORQ_TOKEN="$(cat "$FORQ_SECRETS_DIR/admin.token")"
READ="$(cat "$FORQ_SECRETS_DIR/metrics.token")"
compose() { "${COMPOSE[@]}" -p "$project" -f docker-compose.yml "$@"; }

cleanup() {
  compose down -v >/dev/null 2>&1 || true
  # podman-compose 1.0 leaves the project's network behind.
  "$ENGINE" network rm -f "${project}_default" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  for c in $("$ENGINE" ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}' 2>/dev/null); do
    echo "--- logs of $c (tail)" >&2
    "$ENGINE" logs "$c" 2>&1 | tail -20 >&2 || true
  done
  exit 1
}
ok() { echo "ok: $*"; }

[ -x "$CLI" ] || fail "host CLI $CLI not found (make build first)"
deploy/base-image.sh
services="$(compose config --services 2>/dev/null || $PY -c 'import yaml; print("\n".join(yaml.safe_load(open("docker-compose.yml"))["services"]))')"
forqd_services="$(echo "$services" | grep '^forqd')"
echo "services: $(echo $services)"

t0=$SECONDS
compose up -d --build > "/tmp/$project.up.log" 2>&1 || { tail -30 "/tmp/$project.up.log"; fail "compose up failed"; }
ok "compose up --build in $((SECONDS - t0))s"

# Health: run each service's healthcheck (podman runs them from systemd
# timers, absent here) until it reports healthy; bounded.
for s in $services; do
  c="$("$ENGINE" ps -a --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$s" --format '{{.Names}}' | head -1)"
  [ -n "$c" ] || c="${project}_${s}_1"
  deadline=$((SECONDS + 90))
  until [ "$("$ENGINE" inspect --format '{{.State.Health.Status}}' "$c" 2>/dev/null)" = healthy ]; do
    [ $SECONDS -lt $deadline ] || fail "$s ($c) not healthy within 90 s"
    "$ENGINE" healthcheck run "$c" >/dev/null 2>&1 || sleep 1
  done
  ok "$s is healthy"
done

# A task on each node (one node publishes the FORQ_*_PORT ports; nodes
# added to the file publish their own, see docs/deploy.md).
addrs=()
http_ports=()
for s in $forqd_services; do
  c="$("$ENGINE" ps --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$s" --format '{{.Names}}' | head -1)"
  port="$("$ENGINE" port "$c" 50051/tcp | head -1)"
  port="${port##*:}"
  out="$(FORQ_ADDR="127.0.0.1:$port" "$CLI" submit primes 2000000 --wait)" ||
    fail "submit to $s failed: $out"
  [ "$out" = 148933 ] || fail "$s answered '$out'"
  ok "$s (127.0.0.1:$port): forq submit primes 2000000 --wait printed $out"
  addrs+=(--forq-addr "127.0.0.1:$port")
  hport="$("$ENGINE" port "$c" 8080/tcp | head -1)"
  http_ports+=("${hport##*:}")
  code="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:${hport##*:}/metrics")"
  [ "$code" = 401 ] || fail "$s answered /metrics without a token with $code"
  ok "$s: /metrics without a token answers 401"
done

# One queue: tasks submitted to the first node run on several nodes'
# workers (attempts counted by each node's /metrics), each exactly once,
# and a Wait on the last node sees them finish.
n_nodes="$(echo "$forqd_services" | wc -w)"
if [ "$n_nodes" -gt 1 ]; then
  attempts() {  # attempts HTTP_PORT: attempts run by that node's workers
    curl -fsS -H "Authorization: Bearer $READ" "http://127.0.0.1:$1/metrics" |
      awk '/^forq_task_duration_seconds_count/ { s += $2 } END { print s + 0 }'
  }
  before=()
  for p in "${http_ports[@]}"; do before+=("$(attempts "$p")"); done
  first="${addrs[1]}" last="${addrs[$((${#addrs[@]} - 1))]}"
  ids=()
  for i in $(seq 1 12); do ids+=("$(FORQ_ADDR="$first" "$CLI" submit sleep 400)") ||
    fail "submit $i to $first"; done
  for id in "${ids[@]}"; do
    FORQ_ADDR="$last" "$CLI" wait "$id" --timeout 120 >/dev/null ||
      fail "wait on $last for task $id submitted to $first"
  done
  ran=() total=0 busy=0
  for i in "${!http_ports[@]}"; do
    d=$(( $(attempts "${http_ports[$i]}") - ${before[$i]} ))
    ran+=("$d")
    total=$((total + d))
    [ "$d" -gt 0 ] && busy=$((busy + 1))
  done
  [ "$total" = 12 ] || fail "12 tasks took $total attempts (per node: ${ran[*]})"
  [ "$busy" -ge 2 ] || fail "12 tasks submitted to $first ran on $busy node(s): ${ran[*]}"
  ok "12 tasks submitted to $first, waited for on $last: attempts per node ${ran[*]} ($busy of $n_nodes nodes ran some, 12 attempts in all)"
fi

# Prometheus sees every node up.
deadline=$((SECONDS + 60))
while :; do
  up="$(curl -fsS "$PROM/api/v1/targets" 2>/dev/null | $PY -c '
import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
print(sum(1 for x in t if x["labels"]["job"] == "forqd" and x["health"] == "up"))' 2>/dev/null || echo 0)"
  [ "$up" = "$n_nodes" ] && break
  [ $SECONDS -lt $deadline ] || fail "Prometheus shows $up of $n_nodes forqd targets up"
  sleep 1
done
ok "Prometheus targets API: $up/$n_nodes forqd nodes up (scraped with the read token)"

rules="$(curl -fsS "$PROM/api/v1/rules" | $PY -c '
import json, sys
g = json.load(sys.stdin)["data"]["groups"]
print(" ".join(r["name"] for x in g for r in x["rules"]))')"
[ "$(echo "$rules" | wc -w)" = "$(grep -c -- '- alert:' deploy/prometheus/alerts.yml)" ] ||
  fail "alert rules loaded: $rules"
ok "Prometheus loaded alert rules: $rules"

$PY tests/container/dashboard_test.py --dashboard deploy/grafana/forq.json \
  --cli "$CLI" --prometheus "$PROM" "${addrs[@]}" --deadline 180 ||
  fail "dashboard expressions"
(cd deploy/prometheus && promtool test rules alerts_test.yml) || fail "promtool test rules"
# Stop drains: every forqd exits 0.
compose stop -t 30 >/dev/null 2>&1 || fail "compose stop"
for s in $forqd_services; do
  c="$("$ENGINE" ps -a --filter "label=com.docker.compose.project=$project" \
        --filter "label=com.docker.compose.service=$s" --format '{{.Names}}' | head -1)"
  code="$("$ENGINE" inspect --format '{{.State.ExitCode}}' "$c")"
  [ "$code" = 0 ] || fail "$s exited $code on stop"
done
ok "compose stop: every forqd drained and exited 0"
echo "PASS: compose test ($(echo $services))"
