#!/usr/bin/env bash
# The README's benchmark: the release draftd binary on a fresh database, fed signed GitHub deliveries
# from concurrent senders, against the raw Postgres insert+commit rate on the same server
# (benches/intake.rs). Arguments go to the bench, e.g. `scripts/bench.sh --deliveries 2000`;
# `scripts/bench.sh --help` lists them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench intake -- "$@"
