#!/usr/bin/env bash
# A throwaway Postgres cluster that checks passwords on TCP (scram-sha-256), for tests of short-lived
# stand credentials: VALID UNTIL is only enforced where passwords are, and the machine's own server
# trusts loopback. Made with Debian's initdb/pg_ctl, on a free loopback port, under DIR.
#
#   eval "$(scripts/pg-passwords.sh start DIR)"   # prints: export STANDS_PG_URL=postgres://postgres:…@127.0.0.1:PORT/postgres
#   scripts/pg-passwords.sh stop DIR              # stops it and removes DIR's cluster
set -euo pipefail

command="${1:-}"
dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
bin() { command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1; }
initdb="$(bin initdb)"; pg_ctl="$(bin pg_ctl)"
[ -n "$initdb" ] && [ -n "$pg_ctl" ] || { echo "pg-passwords: initdb/pg_ctl not installed (apt-get install postgresql)" >&2; exit 1; }
# Postgres refuses to run as root; the postgres user owns the cluster then.
run_as=()
[ "$(id -u)" = 0 ] && run_as=(runuser -u postgres --)

case "$command" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    password="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    printf '%s\n' "$password" >"$dir/pwfile"
    [ "$(id -u)" = 0 ] && chown postgres "$dir/pwfile"
    "${run_as[@]}" "$initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
      --auth-host=scram-sha-256 --auth-local=trust >"$dir/initdb.log" 2>&1 \
      || { echo "pg-passwords: initdb failed, see $dir/initdb.log" >&2; exit 1; }
    rm -f "$dir/pwfile"
    "${run_as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null \
      || { echo "pg-passwords: pg_ctl start failed, see $dir/server.log" >&2; exit 1; }
    echo "export STANDS_PG_URL=postgres://postgres:$password@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -f "$dir/data/PG_VERSION" ] || exit 0
    "${run_as[@]}" "$pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir/data"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
