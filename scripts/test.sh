#!/usr/bin/env bash
# The README's second command, and what .ci/run runs: every test, against a real Postgres
# (see scripts/pg-env.sh), each test in a fresh database of its own.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
# Helm 4 and kubectl into .tools/bin (a no-op once there): the helm tests run the real binary.
scripts/install-tools.sh >/dev/null
# OpenBao's bao into .tools/bin once, before tests start dev servers side by side.
scripts/install-openbao.sh >/dev/null
# Debian's chromium and chromedriver for the dashboard's real-browser test (a no-op once installed).
[ "${DRAFTD_SKIP_BROWSER:-}" = 1 ] || scripts/install-browser.sh >/dev/null
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
