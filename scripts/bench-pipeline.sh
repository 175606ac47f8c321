#!/usr/bin/env bash
# The run engine's benchmark (benches/pipeline.rs): the library's Engine with a fake step runner that
# sleeps, on a fresh database: per-run overhead over the critical path, and a burst of opened PRs
# drained by one engine and by two engines sharing the database. Arguments go to the bench, e.g.
# `scripts/bench-pipeline.sh --burst 100 --runs 5`; `scripts/bench-pipeline.sh --help` lists them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench pipeline -- "$@"
