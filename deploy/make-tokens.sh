#!/usr/bin/env bash
# Makes the tokens a containerised forqd runs with (docs/deploy.md):
#   DIR/forq-tokens    forqd's --auth_tokens_file: sha256 digests only, one
#                      'sha256:HEX ROLE' line per token; mounted into the
#                      forqd container at /run/secrets/forq-tokens.
#   DIR/admin.token    an admin token in clear, for the forq CLI
#                      (FORQ_TOKEN="$(cat DIR/admin.token)").
#   DIR/metrics.token  a read token in clear, for Prometheus's scrapes of
#                      /metrics (mounted into the Prometheus container).
#   DIR/postgres-password, DIR/forq.pgpass
#                      the compose cluster's PostgreSQL password: for the
#                      PostgreSQL container's first start, and as a libpq
#                      password file for forqd (PGPASSFILE).
# DIR (default ./secrets) is created with mode 0700 and is never
# overwritten: remove it to make new tokens.
#
# The container processes must be able to read their file: forqd runs as
# uid 10001, the Prometheus image (deploy/prometheus) as uid 10002, the
# PostgreSQL image (deploy/postgres) as uid 10003. As root
# (rootful docker/podman) the files are given to those uids; as a user with
# rootless podman, `podman unshare chown` does the same in the user
# namespace. Otherwise the two files become world-readable inside the 0700
# directory (bind mounts do not pass through it) and forqd logs a warning.
#
#   deploy/make-tokens.sh [DIR]
set -euo pipefail
dir="${1:-secrets}"
FORQD_UID=10001
PROMETHEUS_UID=10002
POSTGRES_UID=10003

if [ -e "$dir/forq-tokens" ]; then
  echo "make-tokens.sh: $dir/forq-tokens exists; remove $dir to make new tokens" >&2
  exit 1
fi
new_token() {
  if command -v openssl >/dev/null; then
    openssl rand -hex 32
  else
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'
  fi
}
digest() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"
admin="$(new_token)"
metrics="$(new_token)"
pgpass="$(new_token)"
printf '%s\n' "$admin" > "$dir/admin.token"
printf '%s\n' "$metrics" > "$dir/metrics.token"
{
  echo "# forqd --auth_tokens_file (digests of the tokens; roles: admin, submit, read)."
  echo "# Add a client: echo \"sha256:\$(printf %s TOKEN | sha256sum | cut -c1-64) ROLE\""
  echo "sha256:$(digest "$admin") admin"
  echo "sha256:$(digest "$metrics") read"
} > "$dir/forq-tokens"
printf '%s\n' "$pgpass" > "$dir/postgres-password"
printf '*:*:forq:forq:%s\n' "$pgpass" > "$dir/forq.pgpass"

# give UID FILE: makes FILE readable by UID inside a container.
give() {
  if [ "$(id -u)" = 0 ]; then
    chown "$1:$1" "$2"
  elif [ "${CONTAINER_ENGINE:-podman}" = podman ] && command -v podman >/dev/null &&
       podman unshare chown "$1:$1" "$2" 2>/dev/null; then
    :
  else
    chmod 0644 "$2"
    echo "make-tokens.sh: $2 made readable by all (inside the 0700 $dir):" \
         "not root and no rootless podman to give it to uid $1" >&2
  fi
}
give "$FORQD_UID" "$dir/forq-tokens"
give "$PROMETHEUS_UID" "$dir/metrics.token"
give "$POSTGRES_UID" "$dir/postgres-password"
give "$FORQD_UID" "$dir/forq.pgpass"
echo "make-tokens.sh: tokens in $dir; for the CLI: export FORQ_TOKEN=\"\$(cat $dir/admin.token)\"" >&2
