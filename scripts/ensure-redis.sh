#!/usr/bin/env bash
# Makes `redis-server` available for the generation API's tests (the Redis task store is tested
# against a real server started on a free loopback port; see tests/redis_server.py).
# Installs Debian's redis-server when missing and running as root with apt-get; otherwise
# explains how to install it and exits 1. Never starts a server (the tests start their own).
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"

MIN_MAJOR=6  # LMOVE / BLMOVE need Redis >= 6.2

have_redis() {
  local binary=${REDIS_SERVER:-redis-server}
  command -v "$binary" >/dev/null 2>&1 || return 1
  local version major minor
  version=$("$binary" --version | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p')
  major=${version%%.*}
  minor=$(echo "$version" | cut -d. -f2)
  if [ -z "$major" ] || [ "$major" -lt "$MIN_MAJOR" ] || { [ "$major" -eq 6 ] && [ "$minor" -lt 2 ]; }; then
    echo "redis-server $version is too old: the generation API needs Redis >= 6.2" >&2
    return 1
  fi
  echo "redis-server $version: $(command -v "$binary")"
}

if have_redis; then
  exit 0
fi

if [ -n "${REDIS_SERVER:-}" ]; then
  echo "error: REDIS_SERVER=$REDIS_SERVER is not a usable redis-server >= 6.2" >&2
  exit 1
fi

# --no-install-recommends: no redis-tools daemon config or init scripts beyond the package's.
# The Debian package may start a system service on 127.0.0.1:6379; the tests never use it.
if can_apt_install && apt_install redis-server; then
  if have_redis; then
    exit 0
  fi
fi

cat >&2 <<'MSG'
error: redis-server (>= 6.2) is required by the generation API's tests and was not found.
Install it, then run the tests again:
  Debian/Ubuntu:  sudo apt-get install -y redis-server
  Fedora/RHEL:    sudo dnf install -y redis
  macOS:          brew install redis
  or put any redis-server >= 6.2 binary on PATH (or set REDIS_SERVER=/path/to/redis-server).
MSG
exit 1
