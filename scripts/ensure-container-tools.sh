#!/usr/bin/env bash
# Makes the container tools available for `make images` and the test world's real node
# (no Docker engine on our machines): podman and buildah with runc (crun fails here: no
# CAP_SYS_RESOURCE, hybrid cgroups), containerd, the CNI plugins, mmdebstrap for a local base
# image, iptables and iproute2. Installs Debian's packages when missing and running as root
# with apt-get; otherwise says what to install and exits 1. Starts nothing.
set -euo pipefail

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

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing container tools with apt-get (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  # One apt at a time: wait for another install (a parallel make, a CI job) to finish.
  for attempt in 1 2 3; do
    if apt-get update -qq -o DPkg::Lock::Timeout=300 &&
      apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends \
        "${PACKAGES[@]}" >/dev/null; then
      break
    fi
    [ "$attempt" = 3 ] && { echo "error: apt-get install ${PACKAGES[*]} failed" >&2; exit 1; }
    sleep 5
  done
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
