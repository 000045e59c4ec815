#!/usr/bin/env bash
# Make a docker engine and the debootstrap base image available; safe to run again.
#
# 1. installs docker.io and debootstrap with apt when they are missing;
# 2. starts `dockerd --bridge=none --iptables=false` in the background (log:
#    ${DOCKERD_LOG:-/tmp/dockerd.log}) when no engine answers, and waits up to 60 s;
# 3. builds the base image auditor-base:bookworm once (reused when present) with
#    `python -m auditor.env.baseimage` (the package must be installed: .ci/run does that first).
# Runs as root (apt, dockerd, debootstrap). No registry is needed at any step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
BASE_TAG="${AUDITOR_BASE_TAG:-auditor-base:bookworm}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  echo "docker-setup: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

engine_answers() { "$PY" -c 'import docker; docker.from_env(timeout=3).ping()' >/dev/null 2>&1; }

if ! engine_answers; then
  echo "docker-setup: starting dockerd (log: $DOCKERD_LOG)"
  setsid nohup dockerd --bridge=none --iptables=false >"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 60); do
    engine_answers && break
    sleep 1
  done
  if ! engine_answers; then
    echo "docker-setup: dockerd did not answer within 60 s; see $DOCKERD_LOG" >&2
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    exit 1
  fi
fi

"$PY" -m auditor.env.baseimage --tag "$BASE_TAG" --quiet
