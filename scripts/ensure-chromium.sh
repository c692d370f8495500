#!/usr/bin/env bash
# Makes a headless `chromium` available for the web UI test (tests/integration/
# test_comfyui_web_ui.py opens ComfyUI's editor through the proxy and keeps a screenshot).
# Installs Debian's chromium when missing and running as root with apt-get; otherwise explains
# how to install it and exits 1. CHROMIUM=/path/to/chromium names another binary.
set -euo pipefail
# shellcheck source=lib/apt.sh
source "$(dirname "$0")/lib/apt.sh"

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

if can_apt_install && apt_install chromium; then
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
