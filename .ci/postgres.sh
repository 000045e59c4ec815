#!/usr/bin/env bash
# Source this (as root): start Debian's PostgreSQL on 127.0.0.1 only, create a role and a
# database for the tests, and export AUDITOR_TEST_POSTGRES. Installs nothing itself:
# .ci/run apt-installs `postgresql` first.
set -euo pipefail
pg_version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
pg_port="${AUDITOR_CI_PG_PORT:-5432}"
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$pg_version main"; then
  pg_createcluster -p "$pg_port" "$pg_version" main >/dev/null
fi
pg_conftool "$pg_version" main set listen_addresses 127.0.0.1
pg_port="$(pg_conftool -s "$pg_version" main show port)"
pg_ctlcluster "$pg_version" main start >/dev/null 2>&1 || pg_ctlcluster "$pg_version" main status >/dev/null
for _ in $(seq 30); do
  su postgres -c "psql -qAt -p $pg_port -c 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
pg_password="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
su postgres -c "psql -q -p $pg_port" <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'auditor_ci') THEN
    CREATE ROLE auditor_ci LOGIN;
  END IF;
END \$\$;
ALTER ROLE auditor_ci PASSWORD '$pg_password' CREATEDB;
SQL
su postgres -c "psql -qAt -p $pg_port -c \"select 1 from pg_database where datname='auditor_ci'\"" \
  | grep -q 1 || su postgres -c "createdb -p $pg_port -O auditor_ci auditor_ci"
export AUDITOR_TEST_POSTGRES="postgresql+psycopg://auditor_ci:${pg_password}@127.0.0.1:${pg_port}/auditor_ci"
