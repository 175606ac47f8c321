#!/usr/bin/env bash
# The README's first command: draftd on defaults (dry-run cluster mode, local Postgres), fed one real
# opened-PR webhook; a worker runs the stand's steps (manifests rendered to disk, nothing applied) and
# the reporter posts the sticky comment to a local fake GitHub. Prints the stand, its files and the comment.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
source scripts/pg-env.sh
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/draftd-target ]; then export CARGO_TARGET_DIR=/var/tmp/draftd-target; fi

echo "==> installing Helm 4 into .tools/bin (once)"
scripts/install-tools.sh | sed 's/^/    /'
echo "==> building draftd"
cargo build --quiet --bin draftd
bin="${CARGO_TARGET_DIR:-$root/target}/debug/draftd"

# A fresh database for the demo, on the server pg-env.sh found, so every run shows the same thing.
db="draftd_demo"
admin_url="$DATABASE_URL"
PGOPTIONS="-c client_min_messages=warning" psql "$admin_url" -qAtc "drop database if exists $db with (force)" >/dev/null
psql "$admin_url" -qAtc "create database $db" >/dev/null
export DRAFTD_DATABASE_URL="${admin_url%/*}/$db"
port="${DRAFTD_DEMO_PORT:-18080}"
export DRAFTD_LISTEN="127.0.0.1:$port"
# Demo-only secrets, generated per run; real ones come from your secret store.
export HELLO_WORLD_WEBHOOK_SECRET="demo-$(openssl rand -hex 16)"
export GITLAB_TEST_WEBHOOK_SECRET="demo-$(openssl rand -hex 16)"

# A local stand-in for GitHub's comment API; the reporter talks to it as it would to api.github.com.
forge_port="${DRAFTD_DEMO_FORGE_PORT:-18081}"
comments="$(mktemp -t draftd-demo-comments.XXXXXX)"
python3 scripts/fake-github.py "$forge_port" "$comments" 2>/dev/null &
forge_pid=$!
export DRAFTD_GITHUB__API_URL="http://127.0.0.1:$forge_port"
export DRAFTD_GITHUB__TOKEN_ENV="DEMO_GITHUB_TOKEN"
export DEMO_GITHUB_TOKEN="demo-$(openssl rand -hex 8)"
export DRAFTD_CLUSTER__DRY_RUN_DIR="$root/stands"
rm -rf "$root/stands/draft-feature-login-form"

log="$(mktemp -t draftd-demo.XXXXXX.log)"
"$bin" serve --config examples/draftd.toml >"$log" 2>&1 &
pid=$!
trap 'kill -TERM $pid $forge_pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
echo "==> draftd serve on 127.0.0.1:$port (log: $log)"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$port/health/ready"; echo

# The recorded payload's branch is "changes"; the project's globs take feature/** and bugfix/**, so
# the demo renames it to the kind of branch draftd is for. The body is re-signed after the change.
body="$(mktemp -t draftd-demo-body.XXXXXX.json)"
python3 - "$root/tests/fixtures/webhooks/github/pull_request.opened.json" "$body" <<'PY'
import json, sys
payload = json.load(open(sys.argv[1]))
payload["pull_request"]["head"]["ref"] = "feature/login-form"
json.dump(payload, open(sys.argv[2], "w"))
PY
sig="sha256=$(openssl dgst -sha256 -hmac "$HELLO_WORLD_WEBHOOK_SECRET" -hex <"$body" | sed 's/^.*= //')"
echo "==> replaying tests/fixtures/webhooks/github/pull_request.opened.json (branch feature/login-form)"
curl -sS -X POST "http://127.0.0.1:$port/webhooks/github" \
  -H 'Content-Type: application/json' -H 'X-GitHub-Event: pull_request' \
  -H "X-GitHub-Delivery: $(python3 -c 'import uuid; print(uuid.uuid4())')" \
  -H "X-Hub-Signature-256: $sig" --data-binary @"$body" -w '  (HTTP %{http_code})\n'
rm -f "$body"

echo "==> waiting for the run and the comment"
for _ in $(seq 1 150); do
  grep -q "ready" "$comments" 2>/dev/null && break
  grep -q "failed" "$comments" 2>/dev/null && break
  sleep 0.2
done

echo "==> draftd stands show hello-world/feature/login-form"
"$bin" stands show hello-world/feature/login-form --config examples/draftd.toml
echo
echo "==> what dry-run mode wrote under stands/draft-feature-login-form/ (nothing was applied)"
(cd "$root/stands/draft-feature-login-form" && find . -type f | sort | sed 's|^\./|    |')
grep -E '^kind:' "$root/stands/draft-feature-login-form/manifests.yaml" | sort | uniq -c | sed 's/^/   /'
echo
echo "==> the sticky comment as posted to the local fake GitHub"
if [ -s "$comments" ]; then cat "$comments"; else echo "(no comment arrived; see $log)"; exit 1; fi
echo
echo "==> a few of the Prometheus figures at http://127.0.0.1:$port/metrics (the dashboard is at /stands)"
curl -sS "http://127.0.0.1:$port/metrics" |
  grep -E '^draftd_(webhook_deliveries_total|runs_total|time_to_url_seconds_count|stands_active|queue_depth)' | sed 's/^/    /'
