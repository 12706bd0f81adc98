#!/usr/bin/env bash
# A throwaway PostgreSQL server for the sweep tests (tests/test_sweep.py), on the loopback address only.
#
#   pg_env="$(bash .ci/postgres.sh)" && eval "$pg_env"   # start (or find) it; sets AFFECTUS_TEST_POSTGRES_URL
#   bash .ci/postgres.sh stop                           # stop the server this script started
#
# Installs Debian's `postgresql` package when no server binaries are found (needs root), makes a
# cluster in $AFFECTUS_PG_DATA (default /tmp/affectus-pg-PORT) with `initdb`, starts it with `pg_ctl`
# on 127.0.0.1:$AFFECTUS_PG_PORT (default 54329), and creates the user and database the tests use.
# Idempotent: when the server is already up, it only prints the export line. Everything it says
# goes to stderr; stdout carries the one `export ...` line, so `eval` is safe. Any failure exits 1
# with a line saying why.
set -euo pipefail

PORT="${AFFECTUS_PG_PORT:-54329}"
DATA="${AFFECTUS_PG_DATA:-/tmp/affectus-pg-$PORT}"
DB=affectus_test
ROLE=affectus
PASSWORD=affectus
URL="postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"

say() { echo "postgres.sh: $*" >&2; }
die() { echo "postgres.sh: ERROR: $*" >&2; exit 1; }

find_bindir() {
  # the newest installed server version; Debian keeps each under /usr/lib/postgresql/<version>/bin
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
    echo "$dir"
  elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  fi
}

BIN="$(find_bindir)"

if [ "${1:-start}" = "stop" ]; then
  [ -n "$BIN" ] || die "no PostgreSQL binaries found; nothing to stop"
  if [ -f "$DATA/postmaster.pid" ]; then
    as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
    as_owner "$BIN/pg_ctl" stop -D "$DATA" -m fast -w >&2 || die "pg_ctl stop failed for $DATA"
    say "stopped the server in $DATA"
  else
    say "no server running from $DATA"
  fi
  exit 0
fi
[ "${1:-start}" = "start" ] || die "usage: postgres.sh [start|stop]"

if [ -z "$BIN" ]; then
  [ "$(id -u)" = 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
  say "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || die "apt-get update failed"
  apt-get install -y -qq postgresql >&2 || die "apt-get install postgresql failed"
  BIN="$(find_bindir)"
  [ -n "$BIN" ] || die "postgresql installed but initdb / pg_ctl not found under /usr/lib/postgresql"
fi

# initdb and the server refuse to run as root: as root we use the `postgres` account the package made
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "no 'postgres' user to run the server as"
  as_owner() { runuser -u postgres -- "$@"; }
  OWNER=postgres
else
  as_owner() { "$@"; }
  OWNER="$(id -un)"
fi
# superuser access goes through the Unix socket in the data directory, never over TCP
psql_admin() { as_owner "$BIN/psql" -h "$DATA" -p "$PORT" -U "$OWNER" -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; then
  if [ ! -f "$DATA/PG_VERSION" ]; then
    say "creating a cluster in $DATA"
    mkdir -p "$DATA"
    chmod 700 "$DATA"
    [ "$OWNER" = "$(id -un)" ] || chown "$OWNER" "$DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U "$OWNER" --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 >"$DATA.initdb.log" 2>&1 || die "initdb failed: see $DATA.initdb.log"
  fi
  say "starting the server on 127.0.0.1:$PORT"
  as_owner "$BIN/pg_ctl" start -D "$DATA" -w -t 60 -l "$DATA/server.log" \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DATA" >&2 \
    || die "the server did not start (port $PORT taken?): $(tail -n 3 "$DATA/server.log" 2>/dev/null | tr '\n' ' ')"
fi

psql_admin -c "select 1" >/dev/null 2>&1 \
  || die "something answers on 127.0.0.1:$PORT but it is not the server in $DATA; set AFFECTUS_PG_PORT"
if [ "$(psql_admin -c "select 1 from pg_roles where rolname = '$ROLE'")" != 1 ]; then
  psql_admin -c "create role $ROLE login password '$PASSWORD'" || die "could not create role $ROLE"
fi
if [ "$(psql_admin -c "select 1 from pg_database where datname = '$DB'")" != 1 ]; then
  psql_admin -c "create database $DB owner $ROLE" || die "could not create database $DB"
fi
PGPASSWORD="$PASSWORD" "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" -qtA -c "select 1" >/dev/null \
  || die "cannot log in as $ROLE to $DB on 127.0.0.1:$PORT"
say "ready: $DB on 127.0.0.1:$PORT (data in $DATA)"
echo "export AFFECTUS_TEST_POSTGRES_URL=$URL"
