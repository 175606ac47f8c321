#!/usr/bin/env bash
# Greps a captured log for every secret the test suite uses (tests/secrets.txt: literal lines, and
# `re:` lines as extended regular expressions). Prints each hit as the secret's line number in
# secrets.txt and the log's line numbers, never the value; exits 1 when any secret shows.
#
#   scripts/check-secrets.sh LOG [SECRETS_FILE]
set -euo pipefail

log="${1:-}"
secrets="${2:-$(cd "$(dirname "$0")/.." && pwd)/tests/secrets.txt}"
[ -n "$log" ] || { echo "usage: $0 LOG [SECRETS_FILE]" >&2; exit 2; }
[ -s "$log" ] || { echo "check-secrets: $log is missing or empty: nothing was captured to check" >&2; exit 2; }
[ -f "$secrets" ] || { echo "check-secrets: $secrets is missing" >&2; exit 2; }

checked=0 found=0 number=0
while IFS= read -r line || [ -n "$line" ]; do
  number=$((number + 1))
  case "$line" in '' | '#'*) continue ;; esac
  if [[ "$line" == re:* ]]; then
    mode=-E pattern="${line#re:}"
  else
    mode=-F pattern="$line"
  fi
  checked=$((checked + 1))
  # grep exits 1 when nothing matches; 2 (a bad pattern) must not pass silently.
  hits="$(grep -n "$mode" -e "$pattern" -- "$log" | cut -d: -f1)" || [ $? -eq 1 ] ||
    { echo "check-secrets: $secrets line $number: grep failed" >&2; exit 2; }
  if [ -n "$hits" ]; then
    found=$((found + 1))
    count="$(wc -l <<<"$hits")"
    shown="$(head -n 20 <<<"$hits" | paste -sd, -)"
    [ "$count" -gt 20 ] && shown="$shown, … ($count lines)"
    echo "check-secrets: the secret on ${secrets#"$PWD/"} line $number shows on $log line(s) $shown" >&2
  fi
done <"$secrets"

if [ "$found" -gt 0 ]; then
  echo "check-secrets: FAILED: $found of $checked secrets appear in $log" >&2
  exit 1
fi
echo "check-secrets: none of $checked secrets appears in $log ($(wc -l <"$log") lines)"
