#!/bin/sh
# Example smoke test of a draft stand, run by draftd's smoke step as a Job in the stand's namespace
# (the project replaces it with its own). POSIX sh and curl only, so it runs in slim images.
#
# Checks, in order, against $STAND_URL, and stops at the first failure with one line on stderr
# saying which check failed and why (that line lands in the PR comment):
#   1. login:  POST /api/login {"username","password"}            -> 200 with {"token": "..."}
#   2. task:   POST /api/tasks {"title"} with the bearer token      -> 201 with {"id": ...}
#   3. sync:   POST /api/sync  {"changes": [a task made offline]}  -> 200, then
#              GET  /api/tasks/<client id>                          -> 200: the offline task is online
#
# Settings (environment): STAND_URL (required), SMOKE_USER and SMOKE_PASSWORD (default demo/demo:
# the mocks in values/draft.yaml accept them), SMOKE_TIMEOUT seconds per request (default 10).
set -eu

: "${STAND_URL:?STAND_URL is not set: the smoke step passes the stand URL}"
user="${SMOKE_USER:-demo}"
password="${SMOKE_PASSWORD:-demo}"
timeout="${SMOKE_TIMEOUT:-10}"
base="${STAND_URL%/}"
body="$(mktemp)"
trap 'rm -f "$body"' EXIT

fail() {
    echo "smoke: $1" >&2
    exit 1
}

# request METHOD PATH [JSON] -> sets $status, response body in $body
request() {
    set -- "$1" "$2" "${3:-}"
    if [ -n "$3" ]; then
        status="$(curl -sS -o "$body" -w '%{http_code}' --max-time "$timeout" -X "$1" \
            -H 'content-type: application/json' ${token:+-H "authorization: Bearer $token"} \
            --data "$3" "$base$2" 2>&1)" || fail "$2: $(echo "$status" | head -n 1)"
    else
        status="$(curl -sS -o "$body" -w '%{http_code}' --max-time "$timeout" -X "$1" \
            ${token:+-H "authorization: Bearer $token"} "$base$2" 2>&1)" || fail "$2: $(echo "$status" | head -n 1)"
    fi
}

# field NAME: a top-level string or number from the JSON in $body (no jq in slim images)
field() {
    sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}\([^\",}]*\).*/\1/p" "$body" | head -n 1
}

token=""
request POST /api/login "{\"username\":\"$user\",\"password\":\"$password\"}"
[ "$status" = 200 ] || fail "login: HTTP $status"
token="$(field token)"
[ -n "$token" ] || fail "login: no token in the answer"

request POST /api/tasks '{"title":"smoke test task"}'
[ "$status" = 201 ] || fail "create task: HTTP $status"
[ -n "$(field id)" ] || fail "create task: no id in the answer"

client_id="smoke-$(date +%s)-$$"
request POST /api/sync "{\"changes\":[{\"op\":\"create\",\"client_id\":\"$client_id\",\"title\":\"made offline\"}]}"
[ "$status" = 200 ] || fail "sync offline->online: HTTP $status"
request GET "/api/tasks/$client_id"
[ "$status" = 200 ] || fail "sync offline->online: the offline task is not online (HTTP $status)"

echo "smoke: login, create task, offline->online sync: ok"
