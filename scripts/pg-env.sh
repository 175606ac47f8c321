# Sourced by the project's scripts: exports DATABASE_URL pointing at a Postgres server that answers.
#   1. DATABASE_URL when already set;
#   2. else the machine's server on 127.0.0.1:5432 (trust auth, user postgres) when it answers;
#   3. else a throwaway cluster under .pg/ in the project, made with Debian's initdb/pg_ctl.
# Only the server is chosen here: tests make one fresh database per test on it.

_draftd_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_draftd_pg_bin() {
  local tool="$1" found
  found="$(command -v "$tool" 2>/dev/null)" && { echo "$found"; return; }
  found="$(ls -d /usr/lib/postgresql/*/bin/"$tool" 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$found" ] && echo "$found"
}

_draftd_pg_answers() {
  local psql; psql="$(_draftd_pg_bin psql)" || return 1
  [ -n "$psql" ] && "$psql" "$1" -Atqc 'select 1' >/dev/null 2>&1
}

_draftd_pg_throwaway() {
  local dir="$_draftd_root/.pg" port="${DRAFTD_PG_PORT:-54329}" initdb pg_ctl run_as=()
  initdb="$(_draftd_pg_bin initdb)"; pg_ctl="$(_draftd_pg_bin pg_ctl)"
  if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
    echo "pg-env: no Postgres answers and initdb/pg_ctl are not installed (apt-get install postgresql)" >&2
    return 1
  fi
  # Postgres refuses to run as root; the postgres user owns the throwaway cluster then.
  if [ "$(id -u)" = 0 ]; then run_as=(runuser -u postgres --); fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${run_as[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust >"$dir/initdb.log" 2>&1 \
      || { echo "pg-env: initdb failed, see $dir/initdb.log" >&2; return 1; }
  fi
  if ! "${run_as[@]}" "$pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    "${run_as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on" start >/dev/null \
      || { echo "pg-env: pg_ctl start failed, see $dir/server.log" >&2; return 1; }
  fi
  echo "postgres://postgres@127.0.0.1:$port/postgres"
}

if [ -z "${DATABASE_URL:-}" ]; then
  if [ -z "${DRAFTD_PG_THROWAWAY:-}" ] && _draftd_pg_answers "postgres://postgres@127.0.0.1:5432/postgres"; then
    export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    DATABASE_URL="$(_draftd_pg_throwaway)" || return 1 2>/dev/null || exit 1
    export DATABASE_URL
  fi
fi
