#!/usr/bin/env bash
# podman with the project's own storage and settings (used by images/build.sh and the image tests):
#   bash images/podman.sh images | run ... | save ...
# Storage: ${SERVERLESS_COMFYUI_IMAGES_CACHE:-~/.cache/serverless-comfyui/containers} (outside the
# clone; shared by the clones of one user), settings: images/containers.conf (runtime runc).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${SERVERLESS_COMFYUI_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-comfyui/containers}
mkdir -p "$cache/root" "$cache/runroot" "$cache/tmp"
export CONTAINERS_CONF=$here/containers.conf
exec podman --root "$cache/root" --runroot "$cache/runroot" --tmpdir "$cache/tmp" \
    --storage-driver "${SERVERLESS_COMFYUI_STORAGE_DRIVER:-overlay}" "$@"
