#!/usr/bin/env bash
# Builds the test world's binaries from Go modules (no release downloads, no Docker):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm.
# Built binaries are cached per user, keyed by version, outside the clone
# (CI runs in a fresh clone), and linked into .tools/bin/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=tools.env
source "$ROOT/scripts/tools.env"
BIN="$ROOT/.tools/bin"
CACHE="${SERVERLESS_COMFYUI_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-comfyui/tools}"
mkdir -p "$BIN" "$CACHE"

if ! command -v go >/dev/null 2>&1; then
  echo "error: Go is not installed. Install Go >= 1.25 (https://go.dev/dl/ or 'apt-get install golang')" >&2
  echo "       and run 'make tools' again." >&2
  exit 1
fi
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=auto

log() { printf '[tools] %s\n' "$*"; }

# link_tool NAME DIR: link DIR/NAME into .tools/bin
link_tool() { ln -sf "$2/$1" "$BIN/$1"; }

# cached NAME VERSION: true when the cache already has this version of NAME
cached() { [ -x "$CACHE/$1-$2/$1" ]; }

timed() {
  local name="$1"; shift
  local start=$SECONDS
  log "building $name ..."
  "$@"
  log "built $name in $((SECONDS - start))s"
}

build_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION" work
  work="$(mktemp -d)"
  (
    cd "$work"
    go mod init tools.local/etcd >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    mkdir -p "$out.tmp"
    go build -trimpath -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$work" "$out"; mv "$out.tmp" "$out"
}

build_kubernetes() {
  local out="$CACHE/kubernetes-$KUBERNETES_VERSION" work gomod minor staging
  work="$(mktemp -d)"
  staging="v0.${KUBERNETES_VERSION#v1.}"
  minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  (
    cd "$work"
    go mod init tools.local/kubernetes >/dev/null 2>&1
    gomod="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    # kubernetes maps its staging modules to ./staging/src/...; pin each to its published version.
    grep -oE 'k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk '{print $1}' | sort -u |
      while read -r m; do echo "replace $m => $m $staging"; done >>go.mod
    go get "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null 2>&1 || true
    go get k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl >/dev/null
    local ld="" pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p "$out.tmp"
    go build -trimpath -ldflags "-s -w $ld" -o "$out.tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  )
  rm -rf "$work" "$out"; mv "$out.tmp" "$out"
}

build_kwok() {
  local out="$CACHE/kwok-$KWOK_VERSION"
  mkdir -p "$out.tmp"
  GOBIN="$out.tmp" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_helm() {
  local out="$CACHE/helm-$HELM_VERSION" minor
  minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  mkdir -p "$out.tmp"
  # Helm v3 assumes Kubernetes 1.20 for template/lint unless told otherwise at link time.
  GOBIN="$out.tmp" go install -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

total_start=$SECONDS
if cached etcd "$ETCD_VERSION"; then log "etcd $ETCD_VERSION: cached"; else timed "etcd $ETCD_VERSION" build_etcd; fi
link_tool etcd "$CACHE/etcd-$ETCD_VERSION"

if cached kubectl "$KUBERNETES_VERSION" 2>/dev/null || [ -x "$CACHE/kubernetes-$KUBERNETES_VERSION/kube-apiserver" ]; then
  log "kubernetes $KUBERNETES_VERSION: cached"
else
  timed "kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION" build_kubernetes
fi
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  link_tool "$b" "$CACHE/kubernetes-$KUBERNETES_VERSION"
done

if cached kwok "$KWOK_VERSION"; then log "kwok $KWOK_VERSION: cached"; else timed "kwok $KWOK_VERSION" build_kwok; fi
link_tool kwok "$CACHE/kwok-$KWOK_VERSION"

if cached helm "$HELM_VERSION"; then log "helm $HELM_VERSION: cached"; else timed "helm $HELM_VERSION" build_helm; fi
link_tool helm "$CACHE/helm-$HELM_VERSION"

log "all tools ready in .tools/bin ($((SECONDS - total_start))s)"
