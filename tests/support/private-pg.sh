#!/usr/bin/env bash
# A PostgreSQL server of a test's own, for tests that stop and restart the database (the
# shared one from scripts/dev test must stay up for the other tests).
#
#   private-pg.sh start DIR [PORT]   start (initdb on first use) with data in DIR/data;
#                                    prints the URL; PORT (or the next free one) is used
#   private-pg.sh stop DIR           stop the server running on DIR/data, by its PID
set -euo pipefail
ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
[[ $# -ge 2 ]] || { echo "usage: private-pg.sh start|stop DIR [PORT]" >&2; exit 2; }
[[ -n "${3:-}" ]] && export PG_FIRST_PORT=$3
export PG_QUIET=1
# shellcheck source=../../scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
case $1 in
  start)
    pg_start "$2" >&2
    echo "$PG_URL"
    ;;
  stop)
    pid=$(pg_server_pid "$2") || exit 0
    pg_stop_pid "$2" "$pid" 30
    ;;
  *)
    echo "private-pg.sh: unknown command $1" >&2
    exit 2
    ;;
esac
