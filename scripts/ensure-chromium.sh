#!/usr/bin/env bash
# Makes a headless `chromium` available for the web UI test (tests/integration/
# test_comfyui_web_ui.py opens ComfyUI's editor through the proxy and keeps a screenshot).
# Installs Debian's chromium when missing and running as root with apt-get; otherwise explains
# how to install it and exits 1. CHROMIUM=/path/to/chromium names another binary.
set -euo pipefail

have_chromium() {
  local binary=${CHROMIUM:-chromium}
  command -v "$binary" >/dev/null 2>&1 || return 1
  local version
  version=$("$binary" --version 2>/dev/null) || return 1
  echo "$version: $(command -v "$binary")"
}

if have_chromium; then
  exit 0
fi

if [ -n "${CHROMIUM:-}" ]; then
  echo "error: CHROMIUM=$CHROMIUM is not a runnable chromium" >&2
  exit 1
fi

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends chromium >/dev/null
  if have_chromium; then
    exit 0
  fi
fi

cat >&2 <<'MSG'
error: chromium is required by the web UI test (headless, loopback only) and was not found.
Install it, then run the tests again:
  Debian/Ubuntu:  sudo apt-get install -y chromium   (Ubuntu: chromium-browser)
  Fedora/RHEL:    sudo dnf install -y chromium
  macOS:          brew install --cask chromium
  or set CHROMIUM=/path/to/chromium (any Chromium or Chrome with --headless=new).
MSG
exit 1
