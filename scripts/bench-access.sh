#!/usr/bin/env bash
# Issue 24's access-check figure (benches/access.rs): the release draftd binary with [access], asked
# /access/check (with a cookie, and with an access token) by concurrent keep-alive connections,
# beside the same connections asking /health. Arguments go to the bench: `--connections N`,
# `--seconds S`, `--rounds N`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench access -- "$@"
