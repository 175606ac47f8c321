#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the dashboard's real-browser test
# (tests/it/dashboard_browser.rs). No test tool downloads a browser of its own: this machine's network
# reaches only the package registries.
#
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are there.
# Prints the chromedriver path on stdout; exits 1 (with the reason on stderr) when it cannot install.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo /usr/bin/chromedriver
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install-browser: apt-get not found; install chromium and chromedriver yourself" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "install-browser: needs root (or sudo) for apt-get" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-browser: installing chromium and chromium-driver from Debian's packages" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be stale on a fresh machine; an update failure still lets a cached list work.
$sudo apt-get update -qq >&2 || true
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
[ -x /usr/bin/chromedriver ] || { echo "install-browser: /usr/bin/chromedriver missing after install" >&2; exit 1; }
echo /usr/bin/chromedriver
