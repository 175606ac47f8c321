#!/usr/bin/env bash
# Reporting under GitHub's secondary rate limits (benches/forge_pacing.rs): 200 stands' comments written at once,
# through the real GitHub client paced and unpaced, side by side, to the tests' fake GitHub enforcing the documented
# limits, on a fresh database. Arguments go to the bench, e.g. `scripts/bench-forge-pacing.sh --scale 1` (GitHub's
# own clock, minutes); `scripts/bench-forge-pacing.sh --help` lists them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench forge_pacing -- "$@"
