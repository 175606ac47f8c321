#!/usr/bin/env bash
# A throwaway Postgres cluster (trust auth, loopback, a free port) that a test may stop, start and
# restart under draftd's feet: the fault-injection tests use it, never the machine's shared server.
# Made with Debian's initdb/pg_ctl under DIR.
#
#   eval "$(scripts/pg-scratch.sh start DIR)"   # prints: export SCRATCH_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres
#   scripts/pg-scratch.sh restart DIR           # fast restart: every connection is cut
#   scripts/pg-scratch.sh down DIR | up DIR     # stop (fast) / start again on the same port
#   scripts/pg-scratch.sh stop DIR              # stops it and removes DIR's cluster
set -euo pipefail

command="${1:-}"
dir="${2:-}"
[ -n "$command" ] && [ -n "$dir" ] || { echo "usage: $0 start|restart|down|up|stop DIR" >&2; exit 2; }
bin() { command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1; }
initdb="$(bin initdb)"; pg_ctl="$(bin pg_ctl)"
[ -n "$initdb" ] && [ -n "$pg_ctl" ] || { echo "pg-scratch: initdb/pg_ctl not installed (apt-get install postgresql)" >&2; exit 1; }
# Postgres refuses to run as root; the postgres user owns the cluster then.
run_as=()
[ "$(id -u)" = 0 ] && run_as=(runuser -u postgres --)

up() {
  local port
  port="$(cat "$dir/port")"
  "${run_as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || { echo "pg-scratch: pg_ctl start failed, see $dir/server.log" >&2; exit 1; }
}

case "$command" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' >"$dir/port"
    "${run_as[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 \
      || { echo "pg-scratch: initdb failed, see $dir/initdb.log" >&2; exit 1; }
    up
    echo "export SCRATCH_PG_URL=postgres://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
  restart)
    "${run_as[@]}" "$pg_ctl" -D "$dir/data" -m fast -w restart -l "$dir/server.log" >/dev/null
    ;;
  down)
    "${run_as[@]}" "$pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  up)
    up
    ;;
  stop)
    [ -f "$dir/data/PG_VERSION" ] || exit 0
    "${run_as[@]}" "$pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir/data"
    ;;
  *)
    echo "usage: $0 start|restart|down|up|stop DIR" >&2
    exit 2
    ;;
esac
