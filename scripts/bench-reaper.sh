#!/usr/bin/env bash
# Issue 8's benchmark (benches/reaper.rs): one reaper sweep over 10,000 stands of which 100 expired,
# with the query plans of its look-ups. Uses a throwaway database on the server of DATABASE_URL (or
# the one scripts/pg-env.sh finds). Arguments go to the bench: `--rounds N`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench reaper -- "$@"
