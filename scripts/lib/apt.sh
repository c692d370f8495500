# Shared by scripts/ensure-*.sh: installing Debian packages where this machine can.
# shellcheck shell=bash

# can_apt_install: running as root on a machine with apt-get
can_apt_install() { [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; }

# apt_install PACKAGE...: quietly, without recommends; waits for another apt (a parallel make, a
# CI job) instead of failing on its lock, and tries three times (mirrors hiccup)
apt_install() {
  local attempt
  echo "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3; do
    if apt-get update -qq -o DPkg::Lock::Timeout=300 &&
      apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "$@" >/dev/null
    then
      return 0
    fi
    [ "$attempt" = 3 ] || sleep 5
  done
  echo "error: apt-get install $* failed" >&2
  return 1
}
