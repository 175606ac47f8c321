#!/usr/bin/env bash
# cargo-deny over draftd's dependency graph (deny.toml): licenses, bans and sources always, offline;
# advisories only when the RustSec advisory database can be fetched (it lives on GitHub). A skipped
# advisories check is said plainly and does not fail the run, unless DRAFTD_DENY_ADVISORIES=required.
#
#   scripts/deny.sh             # installs cargo-deny once (cargo install --locked), then checks
set -euo pipefail
cd "$(dirname "$0")/.."

version="${DRAFTD_CARGO_DENY_VERSION:-0.20.2}"
if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: installing cargo-deny $version (cargo install --locked; a few minutes on two cores)" >&2
  cargo install cargo-deny --locked --version "$version"
fi
echo "deny: $(cargo deny --version)"

# Licenses, bans and sources need only Cargo.lock and the crates' manifests, no network once every
# crate of the lock is in cargo's cache. A build fetches only this platform's crates: `cargo fetch`
# brings the others (Windows, Android, wasm…) that cargo-deny's metadata also reads.
cargo fetch --locked --quiet
cargo deny --offline --locked check --hide-inclusion-graph --show-stats licenses bans sources

db_url="https://github.com/rustsec/advisory-db"
if fetched="$(timeout 300 cargo deny --locked fetch db 2>&1)"; then
  cargo deny --offline --locked check --show-stats advisories
else
  reason="$(grep -m1 -i 'fatal' <<<"$fetched" || grep -m1 -i 'error' <<<"$fetched" || tail -n 1 <<<"$fetched")"
  echo "deny: advisories SKIPPED: the RustSec advisory database could not be fetched from $db_url: $reason" >&2
  echo "deny: licenses, bans and sources were checked; known vulnerabilities were NOT." >&2
  [ "${DRAFTD_DENY_ADVISORIES:-}" = required ] && exit 1
fi
exit 0
