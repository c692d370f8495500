#!/usr/bin/env bash
# Makes the container tools available for `make images` and the test world's real node
# (no Docker engine on our machines): podman and buildah with runc (crun fails here: no
# CAP_SYS_RESOURCE, hybrid cgroups), containerd, the CNI plugins, mmdebstrap for a local base
# image, iptables and iproute2. Installs Debian's packages when missing and running as root
# with apt-get; otherwise says what to install and exits 1. Starts nothing.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"

PACKAGES=(podman buildah runc containerd containernetworking-plugins mmdebstrap uidmap
  fuse-overlayfs skopeo iptables iproute2 ca-certificates)
COMMANDS=(podman buildah runc containerd ctr mmdebstrap iptables ip)

missing=()
for command in "${COMMANDS[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("$command")
done
[ -x /usr/lib/cni/bridge ] || missing+=("/usr/lib/cni/bridge")
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if can_apt_install; then
  apt_install "${PACKAGES[@]}" || exit 1
  still=()
  for command in "${COMMANDS[@]}"; do
    command -v "$command" >/dev/null 2>&1 || still+=("$command")
  done
  if [ ${#still[@]} -eq 0 ]; then
    for package in podman buildah runc containerd; do
      printf '%s %s\n' "$package" "$(dpkg-query -W -f='${Version}' "$package")"
    done
    exit 0
  fi
  missing=("${still[@]}")
fi

cat >&2 <<MSG
error: the container tools are missing (${missing[*]}). Install them, then run again:
  Debian/Ubuntu:  sudo apt-get install -y ${PACKAGES[*]}
MSG
exit 1
