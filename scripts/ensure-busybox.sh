#!/usr/bin/env bash
# Makes /bin/busybox (Debian's busybox-static, pinned to the release's version) available for the
# test world's busybox image (images/pause/Dockerfile, --target busybox): installs it with
# apt-get when missing and running as root; otherwise says what to install and exits 1.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"
if dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  exit 0
fi
if can_apt_install && apt_install busybox-static; then
  printf 'busybox-static %s\n' "$(dpkg-query -W -f='${Version}' busybox-static)"
  exit 0
fi
echo "error: a static /bin/busybox is missing: sudo apt-get install -y busybox-static" >&2
exit 1
