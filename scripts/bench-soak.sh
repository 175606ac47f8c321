#!/usr/bin/env bash
# Soak and burst: the release draftd binary in dry-run mode on a fresh database, reporting to an
# in-process fake GitHub that fails a share of calls, fed 5,000 signed deliveries for 500 stands
# (opened, pushes, redeliveries, out-of-order pushes, closes) by concurrent senders while draftd is
# killed with SIGKILL and restarted; then drained and checked for anything lost or orphaned
# (benches/soak.rs). Arguments go to the bench, e.g. `scripts/bench-soak.sh --deliveries 500 --stands 50`;
# `scripts/bench-soak.sh --help` lists them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
if [ ! -x .tools/bin/helm ]; then scripts/install-tools.sh; fi
exec cargo bench --bench soak -- "$@"
