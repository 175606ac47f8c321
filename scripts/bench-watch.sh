#!/usr/bin/env bash
# Issue 24's benchmark (benches/watch.rs): the health watch's database and Kubernetes API load over
# one [watch] interval with 1,000 awake stands (simulated clock), all healthy, then 1% failing, then
# recovering. Uses a throwaway database on the server of DATABASE_URL (or the one scripts/pg-env.sh
# finds). Arguments go to the bench: `--stands N`, `--interval 5m`, `--failing N`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench watch -- "$@"
