#!/usr/bin/env bash
# Webhook → verified stand on the local Kubernetes control plane (benches/k8s.rs): the real
# `draftd serve` in kubernetes mode as its ServiceAccount, real helm and Postgres, kwok for kubelets.
# Starts a control plane of its own under .k8s-bench/ unless DRAFTD_K8S_DIR names a running one, and
# stops what it started. Arguments go to the bench: `scripts/bench-k8s.sh --stands 20`, and
# `--stands 0 --wakes 20` for issue 23's wake figure (first request → the app's 200).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
scripts/install-tools.sh >/dev/null
if [ -z "${DRAFTD_K8S_DIR:-}" ]; then
  export DRAFTD_K8S_DIR="$root/.k8s-bench"
  trap 'scripts/k8s-up.sh stop "$DRAFTD_K8S_DIR" >/dev/null 2>&1 || true' EXIT
  scripts/k8s-up.sh start "$DRAFTD_K8S_DIR" >/dev/null
fi
cargo bench --bench k8s -- "$@"
