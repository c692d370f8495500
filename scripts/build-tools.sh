#!/usr/bin/env bash
# Builds the test world's binaries from the Go modules committed under tools/<group>/ (no
# release downloads, no Docker). Each group's go.mod names its binaries with `tool` lines and
# pins every version (go.sum holds the checksums); builds run with -mod=readonly, so nothing is
# resolved at build time and a missing go.sum entry fails the build. Adding a binary to a group
# is one `tool` line (then `go mod tidy` in that folder; see tools/README.md).
#
# Built binaries are cached per user outside the clone (CI runs in a fresh clone), in a folder
# keyed by a hash of the group's module files and of this script, and linked into .tools/bin/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.tools/bin"
CACHE="${SERVERLESS_COMFYUI_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-comfyui/tools}"
GROUPS_IN_ORDER=(etcd kubernetes kwok helm)

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed. Install Go >= 1.26 (https://go.dev/dl/ or 'apt-get install golang')" >&2
  echo "       and run 'make tools' again." >&2
  exit 1
fi
# GOTOOLCHAIN=auto lets an older Go fetch the toolchain the modules' `go` line names.
export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOWORK=off GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
mkdir -p "$BIN" "$CACHE"

log() { printf '[tools] %s\n' "$*"; }
fail() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

# module_version DIR MODULE: the version DIR/go.mod pins for MODULE
module_version() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }

# ldflags GROUP DIR: link flags for a group's binaries (version stamps)
ldflags() {
  local flags="-s -w" version minor pkg
  case "$1" in
    kubernetes)
      # Without these the servers report v0.0.0 and helm's kubeVersion checks break.
      version="$(module_version "$2" k8s.io/kubernetes)"
      minor="$(echo "$version" | cut -d. -f2)"
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags="$flags -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags="$flags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done ;;
    helm)
      # Helm v3 assumes Kubernetes 1.20 for template/lint unless told otherwise at link time.
      version="$(module_version "$2" helm.sh/helm/v3)"
      minor="$(module_version "$ROOT/tools/kubernetes" k8s.io/kubernetes | cut -d. -f2)"
      flags="$flags -X helm.sh/helm/v3/internal/version.version=$version"
      flags="$flags -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
      flags="$flags -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" ;;
  esac
  echo "$flags"
}

# binary_name PACKAGE: the file a tool package builds to
binary_name() {
  case "$1" in
    go.etcd.io/etcd/server/v3) echo etcd ;;
    *) basename "$1" ;;
  esac
}

# cache_key GROUP: changes whenever the group's module files or this script change
cache_key() {
  cat "$ROOT/tools/$1/go.mod" "$ROOT/tools/$1/go.sum" "$ROOT/tools/kubernetes/go.mod" "$0" |
    sha256sum | cut -c1-16
}

build_group() {
  local group="$1" dir="$ROOT/tools/$1" out="$2" flags pkg name start
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  flags="$(ldflags "$group" "$dir")" || fail "$group: cannot read versions from tools/$group/go.mod"
  mapfile -t pkgs < <(cd "$dir" && go list tool) || fail "$group: cannot list the tools of tools/$group/go.mod"
  [ "${#pkgs[@]}" -gt 0 ] || fail "$group: tools/$group/go.mod declares no tool"
  for pkg in "${pkgs[@]}"; do
    name="$(binary_name "$pkg")"; start=$SECONDS
    log "building $name ($pkg) ..."
    (cd "$dir" && go build -trimpath -ldflags "$flags" -o "$out.tmp/$name" "$pkg") ||
      fail "building $name ($pkg) from tools/$group failed; see the output above"
    log "built $name in $((SECONDS - start))s"
  done
  rm -rf "$out"; mv "$out.tmp" "$out"
}

total_start=$SECONDS
for group in "${GROUPS_IN_ORDER[@]}"; do
  [ -f "$ROOT/tools/$group/go.mod" ] && [ -f "$ROOT/tools/$group/go.sum" ] ||
    fail "$group: tools/$group/go.mod or go.sum is missing"
  out="$CACHE/$group-$(cache_key "$group")"
  if [ -d "$out" ] && [ -n "$(ls -A "$out")" ]; then
    log "$group: cached ($out)"
  else
    build_group "$group" "$out"
  fi
  for file in "$out"/*; do ln -sf "$file" "$BIN/$(basename "$file")"; done
done
log "all tools ready in .tools/bin ($((SECONDS - total_start))s)"
