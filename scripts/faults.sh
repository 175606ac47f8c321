#!/usr/bin/env bash
# The fault-injection suite in full: every test of the modules of tests/it below, including the long
# ones that .ci/run leaves out (#[ignore]: every DRAFTD_FAULT point of a deploy). .ci/run runs the same
# modules without the ignored tests.
#
#   scripts/faults.sh            # about two minutes once built
#   scripts/faults.sh killed     # only those whose name holds `killed`
#
# What each module injects:
#   cli              serve aborted at step boundaries (DRAFTD_FAULT), two replicas with one dying
#   faults_postgres  Postgres restarted mid-run, then down for longer than a lease
#   credentials      OpenBao cut off mid-life (a proxy that drops connections), unreachable Vault
#   pipeline         steps failing, stalling and timing out; lost leases; workers killed mid-step
#   reporter, forge_github, forge_gitlab, forge_listing
#                    forge 5xx, 429 and secondary limits, timeouts, garbled and partial answers
#   helm, cluster, kube_runner
#                    helm failing and hanging, Kubernetes API refusals and 5xx, failed verify and rollback
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
scripts/install-tools.sh >/dev/null
scripts/install-openbao.sh >/dev/null
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
modules=(cli faults_postgres credentials pipeline reporter forge_github forge_gitlab forge_listing helm cluster kube_runner)
if cargo nextest --version >/dev/null 2>&1; then
  pattern="$(IFS='|'; echo "${modules[*]}")"
  exec cargo nextest run --no-fail-fast --test it -E "test(/^($pattern)::/)" --run-ignored all "$@"
else
  # libtest's filters add up, so a filter given here could not narrow a list of modules: the other
  # modules of tests/it are skipped instead, and a filter given here narrows what is left.
  skips=()
  for m in $(sed -n 's/^mod \([a-z0-9_]*\);$/\1/p' tests/it/main.rs); do
    case " support ${modules[*]} " in *" $m "*) ;; *) skips+=(--skip "$m::") ;; esac
  done
  exec cargo test --no-fail-fast --test it "$@" -- --include-ignored "${skips[@]}"
fi
