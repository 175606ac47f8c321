#!/usr/bin/env bash
# Issue 23's fleet figure (benches/fleet.rs): a day of a 100-stand fleet, awake around the clock
# against sleep after [sleep] idle_after, on one simulated activity trace. Pure: no database, no
# cluster. Arguments go to the bench: `--seed N`, `--idle-after 15m,1h,2h`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench fleet -- "$@"
