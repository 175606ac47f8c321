#!/usr/bin/env bash
# The image step's wait against a real registry (benches/image.rs): Debian's docker-registry on loopback
# (tests/support/registry.rs), the library's Engine over the dry-run steps, on a fresh database. Part 1:
# the latency the wait adds after the push, for three poll settings side by side; part 2: registry
# requests (and tokens) per waiting stand per minute, without auth, with htpasswd and with the token flow.
# Prints a table and writes JSON to $CARGO_TARGET_DIR/artifacts/bench-image.json. Arguments go to the
# bench, e.g. `scripts/bench-image.sh --waits 10 --minute 20s`; `scripts/bench-image.sh --help` lists them.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
scripts/install-tools.sh >/dev/null
scripts/install-registry.sh >/dev/null
exec cargo bench --bench image -- "$@"
