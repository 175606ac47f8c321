#!/usr/bin/env bash
# Issue 6's benchmark (benches/databases.rs): a stand database cloned from a ~100 MB seeded template
# against pg_dump | pg_restore of the same seed, and stand database + credentials ready time over 50
# stands with OpenBao (started by scripts/openbao-dev.sh) and without. Arguments go to the bench:
# `--rounds N --stands N --seed-mb N`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
scripts/install-openbao.sh >&2
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi
exec cargo bench --bench databases -- "$@"
