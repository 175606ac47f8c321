#!/usr/bin/env bash
# A throwaway OpenBao dev server on a free loopback port, for tests of per-stand credentials:
# in-memory storage, a generated root token, KV v2 mounted at draft/ (DESIGN.md's draft/<team>/<service>)
# and the database secrets engine enabled at database/.
#
#   eval "$(scripts/openbao-dev.sh start DIR)"   # prints exports: BAO_ADDR VAULT_ADDR BAO_TOKEN VAULT_TOKEN BAO_PID
#   scripts/openbao-dev.sh stop DIR              # stops the server started with DIR, by its PID
#
# DIR holds the server's PID file, log and root token (DIR/token, mode 600, removed by stop).
# BAO_DEV_PORT and BAO_DEV_TOKEN, when set, fix the port and root token (tests that stop the server
# and start it again at the same address). BAO_DEV_CONFIG, when set, names a server configuration file
# read beside the dev defaults: OpenBao takes audit devices only from configuration, never the API.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
command="${1:-}"
dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

case "$command" in
  start)
    "$root/scripts/install-openbao.sh" >&2
    bao="$root/.tools/bin/bao"
    mkdir -p "$dir"
    port="${BAO_DEV_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    token="${BAO_DEV_TOKEN:-root-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
    printf '%s' "$token" >"$dir/token"
    chmod 600 "$dir/token"
    "$bao" server -dev -dev-root-token-id="$token" -dev-listen-address="127.0.0.1:$port" \
      ${BAO_DEV_CONFIG:+-config="$BAO_DEV_CONFIG"} >"$dir/bao.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/bao.pid"
    export BAO_ADDR="http://127.0.0.1:$port" BAO_TOKEN="$token"
    for _ in $(seq 100); do
      "$bao" status >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || { echo "openbao-dev: bao exited:" >&2; tail -5 "$dir/bao.log" >&2; exit 1; }
      sleep 0.1
    done
    "$bao" status >/dev/null 2>&1 || { echo "openbao-dev: no answer on $BAO_ADDR" >&2; kill "$pid"; exit 1; }
    "$bao" secrets enable -path=draft -version=2 kv >/dev/null
    "$bao" secrets enable database >/dev/null
    echo "export BAO_ADDR=$BAO_ADDR VAULT_ADDR=$BAO_ADDR BAO_TOKEN=$token VAULT_TOKEN=$token BAO_PID=$pid"
    ;;
  stop)
    [ -f "$dir/bao.pid" ] || exit 0
    pid="$(cat "$dir/bao.pid")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/bao.pid" "$dir/token"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
