#!/usr/bin/env bash
# Builds the real ComfyUI for the test world (`make comfyui-env`): ComfyUI's source and a
# virtualenv with the ComfyUI image's locked Python environment (images/comfyui/requirements.lock:
# torch 2.14.1 and ComfyUI's requirements, every file checked against its hash), so that the pod
# runner can run the real ComfyUI, on CPU, where the emulator runs by default.
#
# ComfyUI's source: COMFYUI_SOURCE_URL (a URL or a local path to the tag archive) and
# COMFYUI_SHA256; an environment variable wins over images/versions.env, whose default is the
# upstream release on GitHub. Machines without GitHub point them at a local copy.
#
# Cached per user outside the clone, keyed by the archive's digest and the lock, and linked as
# .tools/comfyui (ComfyUI/ and venv/ inside).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SERVERLESS_COMFYUI_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-comfyui/tools}"
LOCK="$ROOT/images/comfyui/requirements.lock"
REQUIREMENTS="$ROOT/images/comfyui/comfyui-requirements.txt"
UV="$ROOT/.tools/uv/bin/uv"
PYTHON="${PYTHON:-python3}"

log() { printf '[comfyui-env] %s\n' "$*"; }
fail() { printf '[comfyui-env] error: %s\n' "$*" >&2; exit 1; }

# versions.env's value unless the environment has one
setting() {
  local name="$1" value
  if [ -n "${!name+set}" ]; then echo "${!name}"; return; fi
  value="$(sed -n "s/^$name=//p" "$ROOT/images/versions.env" | tail -1)"
  echo "$value"
}

version="$(setting COMFYUI_VERSION)"
repo="$(setting COMFYUI_REPO)"
source_url="$(setting COMFYUI_SOURCE_URL)"
source_url="${source_url:-https://github.com/$repo/archive/refs/tags/$version.tar.gz}"
sha256="$(setting COMFYUI_SHA256)"
case "$source_url" in
  *://*) ;;
  /*) source_url="file://$source_url" ;;
  *) source_url="file://$(cd "$(dirname "$source_url")" && pwd)/$(basename "$source_url")" ;;
esac
[ -x "$UV" ] || fail "$UV is missing: run 'make venv' first"

key="$(printf '%s\n%s\n' "${sha256:-$source_url}" "$version" | cat - "$LOCK" "$0" |
  sha256sum | cut -c1-16)"
out="$CACHE/comfyui-$key"
mkdir -p "$ROOT/.tools" "$CACHE"
if [ -f "$out/.complete" ]; then
  log "cached ($out)"
  ln -sfn "$out" "$ROOT/.tools/comfyui"
  exit 0
fi

start=$SECONDS
# Built in place (a virtualenv records its own path), marked complete at the end.
rm -rf "$out"; mkdir -p "$out"
log "ComfyUI $version from $source_url"
"$PYTHON" "$ROOT/images/comfyui/fetch_source.py" --repo "$repo" --ref "$version" \
  --url "$source_url" --sha256 "$sha256" --dest "$out/ComfyUI" ||
  fail "cannot fetch ComfyUI's source (set COMFYUI_SOURCE_URL and COMFYUI_SHA256)"
cmp -s "$out/ComfyUI/requirements.txt" "$REQUIREMENTS" ||
  fail "ComfyUI's requirements.txt differs from images/comfyui/comfyui-requirements.txt: update it and run 'make lock'"
# ComfyUI exits at start without a custom_nodes folder under its base directory.
mkdir -p "$out/ComfyUI/custom_nodes"
log "installing the locked environment (torch and CUDA wheels: ~3 GB the first time) ..."
UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --python "$PYTHON" "$out/venv"
UV_PYTHON_DOWNLOADS=never "$UV" pip sync --quiet --require-hashes \
  --python "$out/venv/bin/python" "$LOCK" || fail "installing $LOCK failed"
touch "$out/.complete"
ln -sfn "$out" "$ROOT/.tools/comfyui"
log "ready in $((SECONDS - start))s: .tools/comfyui -> $out"
