#!/usr/bin/env bash
# Source this (as root): start a throwaway PostgreSQL cluster of the tests' own, on
# 127.0.0.1 only, and export AUDITOR_TEST_POSTGRES. Installs nothing itself: .ci/run
# apt-installs `postgresql` first.
#
# The cluster is made with initdb in a folder of its own rather than by starting Debian's
# "main" cluster: a fresh machine's /run/postgresql, /dev/shm or packaged cluster may be
# missing or in any state (CI once failed here with `pg_ctlcluster status` = 3, "not
# running", and nothing printed). Every step that fails prints why and the server log.
set -euo pipefail
pg_version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
pg_bin="/usr/lib/postgresql/$pg_version/bin"
pg_port="${AUDITOR_CI_PG_PORT:-55432}"
pg_root="${AUDITOR_CI_PG_DIR:-/var/tmp/auditor-ci-pg}"
pg_data="$pg_root/data"
pg_sock="$pg_root/sock"
pg_log="$pg_root/server.log"

_pg() { su postgres -s /bin/sh -c "$*"; }
_pg_fail() {
  echo "postgres.sh: $1" >&2
  tail -n 30 "$pg_log" >&2 2>/dev/null || true
  return 1
}

if ! _pg "'$pg_bin/pg_ctl' -D '$pg_data' status" >/dev/null 2>&1; then
  rm -rf "$pg_root"
  mkdir -p "$pg_data" "$pg_sock"
  chown -R postgres:postgres "$pg_root"
  chmod 0700 "$pg_data"
  _pg "'$pg_bin/initdb' -D '$pg_data' -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8" >"$pg_root/initdb.log" 2>&1 \
    || { cat "$pg_root/initdb.log" >&2; _pg_fail "initdb failed"; }
  # mmap dynamic shared memory: no dependence on the size of /dev/shm
  _pg "'$pg_bin/pg_ctl' -D '$pg_data' -l '$pg_log' -w -t 60 -o \
      \"-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$pg_sock \
        -c dynamic_shared_memory_type=mmap -c max_connections=200 -c fsync=off\" start" \
    >/dev/null || _pg_fail "the server did not start on 127.0.0.1:$pg_port"
fi
_pg "'$pg_bin/psql' -qAt -h '$pg_sock' -p $pg_port -c 'select 1'" >/dev/null \
  || _pg_fail "the server does not answer on $pg_sock"
# one password per cluster, kept beside it (root only): sourcing again must not cut off
# a test run that is already using the URL
if [ ! -s "$pg_root/password" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$pg_root/password")
fi
pg_password="$(cat "$pg_root/password")"
_pg "'$pg_bin/psql' -q -v ON_ERROR_STOP=1 -h '$pg_sock' -p $pg_port" <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'auditor_ci') THEN
    CREATE ROLE auditor_ci LOGIN;
  END IF;
END \$\$;
ALTER ROLE auditor_ci PASSWORD '$pg_password' CREATEDB CREATEROLE;  -- CREATEROLE: the tests of audit store roles
SQL
_pg "'$pg_bin/psql' -qAt -h '$pg_sock' -p $pg_port -c \"select 1 from pg_database where datname='auditor_ci'\"" \
  | grep -q 1 || _pg "'$pg_bin/createdb' -h '$pg_sock' -p $pg_port -O auditor_ci auditor_ci"
export AUDITOR_TEST_POSTGRES="postgresql+psycopg://auditor_ci:${pg_password}@127.0.0.1:${pg_port}/auditor_ci"
echo "postgres.sh: PostgreSQL $pg_version on 127.0.0.1:$pg_port (data $pg_data)"
