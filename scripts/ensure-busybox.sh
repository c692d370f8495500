#!/usr/bin/env bash
# Makes /bin/busybox (Debian's busybox-static, pinned to the release's version) available for the
# test world's busybox image (images/pause/Dockerfile, --target busybox): installs it with
# apt-get when missing and running as root; otherwise says what to install and exits 1.
set -euo pipefail
if dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends busybox-static >/dev/null
  printf 'busybox-static %s\n' "$(dpkg-query -W -f='${Version}' busybox-static)"
  exit 0
fi
echo "error: a static /bin/busybox is missing: sudo apt-get install -y busybox-static" >&2
exit 1
