#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster on 127.0.0.1 for local scale-out and tests.
#
#   infra/postgres.sh start DIR [PORT]   initdb (trust auth, user steelqc) + pg_ctl start; prints the URL
#   infra/postgres.sh stop DIR           pg_ctl stop (fast) and leaves DIR for inspection
#   infra/postgres.sh url DIR            postgresql://steelqc@127.0.0.1:PORT/postgres
#   infra/postgres.sh createdb DIR NAME  one database per service (MLflow, Optuna and Prefect each need their own)
#
# initdb refuses to run as root: as root the cluster is owned by the `postgres` system user (runuser).
set -euo pipefail

cmd=${1:?usage: postgres.sh start|stop|url|createdb DIR [PORT|NAME]}
dir=$(mkdir -p "${2:?cluster directory}" && cd "$2" && pwd)

pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $found && -x $found/$name ]] || { echo "PostgreSQL binary $name not found (apt-get install postgresql)" >&2; exit 1; }
  echo "$found/$name"
}

as_owner() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case $cmd in
  start)
    port=${3:-$(free_port)}
    if [[ $(id -u) == 0 ]]; then chown postgres "$dir"; fi
    if [[ ! -f $dir/data/PG_VERSION ]]; then
      as_owner "$(pg_bin initdb)" -D "$dir/data" -A trust -U steelqc --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    echo "$port" >"$dir/port"
    as_owner "$(pg_bin pg_ctl)" -D "$dir/data" -w -t 30 -l "$dir/server.log" \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
      || { cat "$dir/server.log" >&2; exit 1; }
    echo "postgresql://steelqc@127.0.0.1:$port/postgres"
    ;;
  stop)
    [[ -f $dir/data/PG_VERSION ]] || exit 0
    as_owner "$(pg_bin pg_ctl)" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  url)
    echo "postgresql://steelqc@127.0.0.1:$(cat "$dir/port")/postgres"
    ;;
  createdb)
    name=${3:?database name}
    "$(pg_bin psql)" -h 127.0.0.1 -p "$(cat "$dir/port")" -U steelqc -d postgres -v ON_ERROR_STOP=1 -q \
      -c "CREATE DATABASE \"$name\"" >/dev/null
    echo "postgresql://steelqc@127.0.0.1:$(cat "$dir/port")/$name"
    ;;
  *)
    echo "unknown command $cmd" >&2; exit 2 ;;
esac
