#!/usr/bin/env bash
# The private PostgreSQL of scripts/lib/postgres.sh (scripts/dev up, scripts/dev test,
# tests/support/private-pg.sh) lets in only the connections that know its password:
#   - a new data directory: the URL works; no password or a wrong one is refused over TCP
#     and over the Unix socket; the password file is mode 0600; pg_hba.conf has no trust;
#   - pg_attach to the running server gives the same URL;
#   - a data directory made with `trust` (an earlier version) is password-only after its
#     next start, and keeps its data.
# Exits 77 (skipped) without PostgreSQL's server binaries.
set -euo pipefail
ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
export PG_QUIET=1
# shellcheck source=../../scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
_pg_find_bin 2>/dev/null || { echo "skipped: no PostgreSQL server binaries"; exit 77; }

WORK=$(mktemp -d /tmp/cluster-pg-auth.XXXXXX)
chmod 0755 "$WORK" # the postgres user (when run as root) must reach DIR below
cleanup() {
  local dir pid
  for dir in "$WORK"/*/; do
    if pid=$(pg_server_pid "$dir"); then pg_stop_pid "$dir" "$pid" 30 || true; fi
  done
  rm -rf -- "$WORK"
}
trap cleanup EXIT

failures=0
pass() { printf 'ok: %s\n' "$1"; }
fail() {
  printf 'FAIL: %s\n' "$1" >&2
  failures=$((failures + 1))
}
# expect_refused LABEL PSQL-ARGS...: psql must fail with an authentication error.
expect_refused() {
  local label=$1 out
  shift
  if out=$(PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -w -tA "$@" -c 'select 1' 2>&1); then
    fail "$label: connected ($out)"
  elif [[ "$out" == *"password authentication failed"* || "$out" == *"no password supplied"* ]]; then
    pass "$label: refused ($out)"
  else
    fail "$label: failed, but not for want of the password: $out"
  fi
}
expect_query() { # expect_query LABEL URL SQL EXPECTED
  local out
  if out=$(PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -w -tA "$2" -c "$3" 2>&1) && [[ "$out" == "$4" ]]; then
    pass "$1"
  else
    fail "$1: expected '$4', got '$out'"
  fi
}
file_mode() { stat -c %a "$1"; }

check_password_only() { # check_password_only LABEL DIR URL
  local label=$1 dir=$2 url=$3 port password
  port=$(sed -n 4p "$dir/data/postmaster.pid")
  password=$(head -n 1 "$dir/password")
  [[ "$url" == "postgresql://postgres:$password@127.0.0.1:$port/cluster" ]] &&
    pass "$label: the URL carries the generated password" ||
    fail "$label: unexpected URL shape (port $port)"
  [[ "$(file_mode "$dir/password")" == 600 ]] && pass "$label: password file is 0600" ||
    fail "$label: password file mode $(file_mode "$dir/password")"
  if grep -Eq '^[^#]*\b(trust|peer|ident|password|md5)\b' "$dir/data/pg_hba.conf"; then
    fail "$label: pg_hba.conf admits a method other than scram-sha-256"
  else
    pass "$label: pg_hba.conf is scram-sha-256 only"
  fi
  expect_query "$label: the URL connects" "$url" "select current_user" postgres
  expect_refused "$label: TCP without a password" -h 127.0.0.1 -p "$port" -U postgres -d cluster
  PGPASSWORD=not-the-password expect_refused "$label: TCP with a wrong password" \
    -h 127.0.0.1 -p "$port" -U postgres -d cluster
  expect_refused "$label: TCP as another user" -h 127.0.0.1 -p "$port" -U nobody -d cluster
  expect_refused "$label: Unix socket without a password" -h "$dir/data" -p "$port" -U postgres -d cluster
}

# --- a new data directory, then pg_attach to it -------------------------------------------
url=$("$ROOT/tests/support/private-pg.sh" start "$WORK/new")
check_password_only "new" "$WORK/new" "$url"
(
  PG_URL=""
  pg_attach "$WORK/new" || exit 1
  [[ "$PG_URL" == "$url" ]]
) && pass "attach: pg_attach gives the same URL" || fail "attach: pg_attach gave another URL or failed"

# --- a data directory an earlier version made with trust ----------------------------------
mkdir -p "$WORK/old"
((EUID == 0)) && chown postgres: "$WORK/old"
_pg_as_owner "$PG_BIN/initdb" -D "$WORK/old/data" -U postgres --auth=trust --encoding=UTF8 \
  --locale=C >"$WORK/old-initdb.log" 2>&1 || { cat "$WORK/old-initdb.log" >&2; exit 1; }
url=$("$ROOT/tests/support/private-pg.sh" start "$WORK/old")
"$PG_BIN/psql" -X -w -q "$url" -c 'create table kept (v int); insert into kept values (42)'
check_password_only "old, first start" "$WORK/old" "$url"
"$ROOT/tests/support/private-pg.sh" stop "$WORK/old"
again=$("$ROOT/tests/support/private-pg.sh" start "$WORK/old")
[[ "$again" == "$url" ]] && pass "old, restarted: the same password" || fail "old, restarted: the password changed"
check_password_only "old, restarted" "$WORK/old" "$again"
expect_query "old, restarted: the data is kept" "$again" "select v from kept" 42

if ((failures)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all checks passed"
