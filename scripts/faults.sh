#!/usr/bin/env bash
# The fault-injection suite in full: every test of the files below, including the long ones that
# .ci/run leaves out (#[ignore]: every DRAFTD_FAULT point of a deploy). .ci/run runs the same files
# without the ignored tests.
#
#   scripts/faults.sh            # about two minutes once built
#
# What each file injects:
#   tests/cli.rs              serve aborted at step boundaries (DRAFTD_FAULT), two replicas with one dying
#   tests/faults_postgres.rs  Postgres restarted mid-run, then down for longer than a lease
#   tests/credentials.rs      OpenBao cut off mid-life (a proxy that drops connections), unreachable Vault
#   tests/pipeline.rs         steps failing, stalling and timing out; lost leases; workers killed mid-step
#   tests/reporter.rs, tests/forge_github.rs, tests/forge_gitlab.rs, tests/forge_listing.rs
#                             forge 5xx, 429 and secondary limits, timeouts, garbled and partial answers
#   tests/helm.rs, tests/cluster.rs, tests/kube_runner.rs
#                             helm failing and hanging, Kubernetes API refusals and 5xx, failed verify and rollback
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
scripts/install-tools.sh >/dev/null
scripts/install-openbao.sh >/dev/null
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
tests=(cli faults_postgres credentials pipeline reporter forge_github forge_gitlab forge_listing helm cluster kube_runner)
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --no-fail-fast "${args[@]}" --run-ignored all "$@"
else
  exec cargo test --no-fail-fast "${args[@]}" "$@" -- --include-ignored
fi
