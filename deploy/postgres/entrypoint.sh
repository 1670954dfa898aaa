#!/bin/bash
# Entry point of the forq-postgres image: on the first start (empty
# $PGDATA) makes the database cluster with role and database `forq`, the
# password read from $POSTGRES_PASSWORD_FILE; then runs postgres in the
# foreground, listening on every interface of the container.
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw="$(cat "$POSTGRES_PASSWORD_FILE" 2>/dev/null)" || {
    echo "forq-postgres: cannot read the password file $POSTGRES_PASSWORD_FILE" >&2
    exit 1
  }
  [[ "$pw" =~ ^[A-Za-z0-9]{16,}$ ]] || {
    echo "forq-postgres: the password must be 16 or more letters and digits" >&2
    exit 1
  }
  "$bin/initdb" --pgdata="$PGDATA" --username=postgres --encoding=UTF8 \
    --locale=C --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  # TCP logins from the other containers, with a password.
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
    >> "$PGDATA/pg_hba.conf"
  single() { "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null <<< "$1"; }
  single "CREATE ROLE forq LOGIN PASSWORD '$pw';"
  single "CREATE DATABASE forq OWNER forq;"
  echo "forq-postgres: made the database cluster in $PGDATA (role and database forq)" >&2
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' \
  -c unix_socket_directories=/tmp
