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
# Debian's docker-registry (distribution 2.8.2) and htpasswd for the registry tests (tests/support/registry.rs),
# a no-op once installed; DRAFTD_REQUIRE_REGISTRY=1 then makes a missing registry a failure, never a skip.
# DRAFTD_SKIP_REGISTRY=1: no install, and the registry tests skip, saying so, where docker-registry is missing.
if [ "${DRAFTD_SKIP_REGISTRY:-}" != 1 ]; then scripts/install-registry.sh >/dev/null; export DRAFTD_REQUIRE_REGISTRY=1; fi
# schemathesis (PyPI) into .tools/ for tests/it/schemathesis.rs, a no-op once installed; DRAFTD_REQUIRE_SCHEMATHESIS=1
# then makes a missing `st` a failure. DRAFTD_SKIP_SCHEMATHESIS=1: no install, and that test skips, saying so.
if [ "${DRAFTD_SKIP_SCHEMATHESIS:-}" != 1 ]; then scripts/install-schemathesis.sh >/dev/null; export DRAFTD_REQUIRE_SCHEMATHESIS=1; fi
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
# A real Kubernetes control plane for the Kubernetes-mode suite (tests/it/k8s.rs), one for the whole run,
# built once from Go modules (scripts/install-k8s.sh) and stopped when the tests end. draftd runs
# against it as its own ServiceAccount. DRAFTD_K8S_DIR set: use the one already running there;
# DRAFTD_SKIP_K8S=1: skip that suite, saying so.
if [ "${DRAFTD_SKIP_K8S:-}" != 1 ] && [ -z "${DRAFTD_K8S_DIR:-}" ]; then
  export DRAFTD_K8S_DIR="$root/.k8s"
  trap 'scripts/k8s-up.sh stop "$DRAFTD_K8S_DIR" >/dev/null 2>&1 || true' EXIT
  scripts/k8s-up.sh start "$DRAFTD_K8S_DIR" >/dev/null
fi
# Every test's output, passing or failing, is kept in one log, then grepped for every secret the suite
# uses (tests/secrets.txt, scripts/check-secrets.sh): a secret in any output fails the run.
# DRAFTD_SECRET_SCAN=0 runs the tests alone, with cargo's usual output.
if [ "${DRAFTD_SECRET_SCAN:-1}" = 0 ]; then
  # No exec: the trap above stops the control plane afterwards.
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast "$@"
  else
    cargo test --workspace --no-fail-fast "$@"
  fi
  exit
fi
artifacts="${CARGO_TARGET_DIR:-$root/target}/artifacts"
mkdir -p "$artifacts"
log="$artifacts/test-output.log"
if cargo nextest --version >/dev/null 2>&1; then
  run=(cargo nextest run --workspace --no-fail-fast --success-output final --failure-output final "$@")
else
  # Arguments after `--` go to the test binaries; --nocapture joins them.
  case " $* " in *" -- "*) run=(cargo test --workspace --no-fail-fast "$@" --nocapture) ;;
    *) run=(cargo test --workspace --no-fail-fast "$@" -- --nocapture) ;;
  esac
fi
set +e
"${run[@]}" 2>&1 | tee "$log"
tests=${PIPESTATUS[0]}
set -e
echo "test output: $log"
scan=0
scripts/check-secrets.sh "$log" || scan=$?
# The tests' own status first; a clean run still fails when a secret shows.
[ "$tests" -ne 0 ] && exit "$tests"
exit "$scan"
