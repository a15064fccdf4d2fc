#!/usr/bin/env bash
# Set up everything hurdxen needs on a fresh Debian 12 machine; safe to run again.
# Host packages (as root, or through sudo), a Python virtual environment with pinned dependencies, and a running
# Docker engine (Debian's docker.io, started with --bridge=none when nothing answers).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

HOST_PACKAGES=(
  docker.io mmdebstrap debian-archive-keyring gnupg gpgv dpkg-dev python3-venv git
  qemu-system-x86 e2fsprogs cpio xz-utils gcc gcc-multilib grub-common
)
# A machine that already has a Docker engine (GitHub's runners ship Moby/Docker CE) keeps it: docker.io would
# conflict with its containerd/runc packages. A docker client alone is no engine, so look for the daemon.
if command -v dockerd >/dev/null 2>&1 && ! dpkg-query -W -f '${Status}' docker.io 2>/dev/null | grep -q "ok installed"; then
  HOST_PACKAGES=("${HOST_PACKAGES[@]/docker.io}")
fi
missing=()
for p in "${HOST_PACKAGES[@]}"; do
  [ -n "$p" ] || continue
  dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# `--tests` (scripts/test.sh): tools only some tests use (a local OCI registry to publish to, the host executor's
# MIG build tools, Debian's 64-bit MIG for the fake GNU Mach tree). One at a time, and a miss is one line: a distribution
# without one (it is Debian-first) still runs every other test, and the tests that need it say why they skip.
if [ "${1:-}" = --tests ]; then
  missing=()
  for p in docker-registry flex bison automake patch mig-x86-64-gnu; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing the test tools ${missing[*]}"
    $SUDO apt-get update -q >/dev/null 2>&1 || true
    for p in "${missing[@]}"; do
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "$p" >/dev/null 2>&1 \
        || echo "setup: could not install the test tool $p; the tests that need it will skip"
    done
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! cmp -s requirements.txt .venv/.requirements.installed 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  cp requirements.txt .venv/.requirements.installed
fi
if [ "${HURDXEN_EXECUTOR:-docker}" = docker ] && [ -z "${DOCKER_HOST:-}" ]; then
  if ! $SUDO docker version >/dev/null 2>&1 && ! .venv/bin/python -c 'import docker; docker.APIClient(version="auto").ping()' 2>/dev/null; then
    echo "setup: starting dockerd --bridge=none (log: /var/log/hurdxen-dockerd.log)"
    $SUDO sh -c 'nohup dockerd --bridge=none --iptables=false >/var/log/hurdxen-dockerd.log 2>&1 &'
    for _ in $(seq 60); do
      .venv/bin/python -c 'import docker; docker.APIClient(version="auto").ping()' 2>/dev/null && break
      sleep 0.5
    done
    .venv/bin/python -c 'import docker; docker.APIClient(version="auto").ping()' \
      || { echo "setup: dockerd did not start; see /var/log/hurdxen-dockerd.log" >&2; exit 1; }
  fi
fi
echo "setup: ready"
