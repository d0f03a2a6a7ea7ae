# shellcheck shell=bash
# A private PostgreSQL server for the tests and for the local cluster: its own data
# directory, port and socket directory, so the machine's default cluster is never touched.
#
#   source scripts/lib/postgres.sh
#   pg_start            # temporary data dir, removed by pg_stop; sets PG_URL
#   pg_start DIR        # keeps its data in DIR/data (created on first use), kept by pg_stop
#   psql "$PG_URL" -c 'select 1'
#   pg_stop
#
#   pg_server_pid DIR   # the postmaster running on DIR/data, if any (checked, not guessed)
#   pg_attach DIR       # adopt that running server: sets the globals like pg_start
#   pg_stop_pid DIR PID # stop it by its PID, only if PID is still its postmaster
#
# The server refuses to run as root, so as root it runs as the `postgres` system user
# (created by the postgresql package). Globals set by pg_start and pg_attach: PG_URL,
# PG_PORT, PG_DATA, PG_BASE, PG_TEMPORARY, PG_BIN, PG_PASSWORD. Call them in the current
# shell, never in $(...): pg_stop needs those globals. They report on stderr.
#
# Only the cluster's own connections get in: every connection, TCP on loopback and the Unix
# socket alike, authenticates with SCRAM-SHA-256 as user postgres with a password generated
# at initdb, kept in DIR/password (mode 0600) and carried by PG_URL
# (postgresql://postgres:PASSWORD@127.0.0.1:PORT/cluster), so another user of the machine
# cannot read or change the cluster's data. A data directory made by an earlier version (with
# `trust`) gets a password and the same rules on its next start or attach. Keep PG_URL out of
# command lines (other users see those): pass it in the environment (CLUSTER_STORAGE_URL).
#
# Settings read by pg_start: PG_FIRST_PORT (first port tried, default 5435; the next free
# one is used when it is taken), PG_LOG (the server's log file, default DIR/postgres.log),
# PG_QUIET=1 (pg_stop prints nothing unless something goes wrong).
# A temporary server runs without fsync (nothing in it is worth it); a kept one is durable.

PG_URL=""
PG_PORT=""
PG_DATA=""
PG_BASE=""
PG_TEMPORARY=0
PG_BIN=""
PG_PASSWORD=""
PG_SUPERUSER=postgres
PG_DATABASE=cluster
PG_FIRST_PORT=${PG_FIRST_PORT:-5435}
PG_LOG=${PG_LOG:-}
PG_QUIET=${PG_QUIET:-0}

_pg_log() { printf 'postgres: %s\n' "$*" >&2; }

# Finds the server binaries: $PG_BIN if set, else the newest /usr/lib/postgresql/*/bin.
_pg_find_bin() {
  if [[ -n "${PG_BIN:-}" && -x "$PG_BIN/initdb" ]]; then
    return 0
  fi
  local candidate
  PG_BIN=""
  local -a candidates=()
  mapfile -t candidates < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V)
  for candidate in "${candidates[@]}"; do
    [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" ]] && PG_BIN=$candidate
  done
  [[ -n "$PG_BIN" ]] || { _pg_log "no PostgreSQL server found (install the postgresql package)"; return 1; }
}

# Runs a server command as the owner of the data directory.
_pg_as_owner() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
_pg_port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The password reaches psql in its environment, never on its command line.
_pg_psql() {
  PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" "$@"
}

_pg_password_file() { echo "$PG_BASE/password"; }

# Writes a new random password (48 hex digits: nothing to escape in a URL or in SQL) to
# DIR/password, mode 0600, readable by the server's owner (initdb reads it).
_pg_new_password() {
  local file
  file=$(_pg_password_file)
  PG_PASSWORD=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n') || return 1
  [[ ${#PG_PASSWORD} == 48 ]] || { _pg_log "could not read random bytes for a password"; return 1; }
  (umask 077 && printf '%s\n' "$PG_PASSWORD" >"$file.new") || return 1
  ((EUID == 0)) && chown postgres: "$file.new"
  mv -f "$file.new" "$file"
}

# Reads DIR/password into PG_PASSWORD; fails if there is none.
_pg_read_password() {
  local file
  file=$(_pg_password_file)
  [[ -s "$file" ]] || return 1
  PG_PASSWORD=$(head -n 1 "$file") || return 1
  [[ "$PG_PASSWORD" =~ ^[0-9a-f]{48}$ ]] || { _pg_log "$file does not hold a password made by this script"; return 1; }
}

# The server's client authentication: SCRAM for everyone, nothing else (no trust, no peer).
_pg_hba_text() {
  cat <<'HBA'
# Written by scripts/lib/postgres.sh on every start: every connection needs the password.
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
HBA
}

_pg_write_hba() {
  _pg_hba_text >"$PG_DATA/pg_hba.conf.new" || return 1
  ((EUID == 0)) && chown postgres: "$PG_DATA/pg_hba.conf.new"
  chmod 0600 "$PG_DATA/pg_hba.conf.new" && mv -f "$PG_DATA/pg_hba.conf.new" "$PG_DATA/pg_hba.conf"
}

# True if pg_hba.conf is the one _pg_write_hba writes.
_pg_hba_is_ours() {
  [[ "$(cat "$PG_DATA/pg_hba.conf" 2>/dev/null)" == "$(_pg_hba_text)" ]]
}

# Makes the running server at $PG_PORT password-only. A data directory without DIR/password
# comes from an earlier version whose server trusted loopback: set a new password through
# that trust, then close it. Fails with a clear message when the password is unknown.
_pg_secure() {
  if ! _pg_read_password; then
    _pg_new_password || { _pg_log "could not write $(_pg_password_file)"; return 1; }
    if ! _pg_psql -d postgres -c "alter role $PG_SUPERUSER password '$PG_PASSWORD'" >/dev/null 2>&1; then
      rm -f "$(_pg_password_file)"
      _pg_log "the server on $PG_DATA has no password file ($(_pg_password_file)) and does not let this script set one; stop it and remove $PG_BASE to start afresh"
      return 1
    fi
    _pg_log "set a password for the server on $PG_DATA (kept in $(_pg_password_file))"
  fi
  if ! _pg_hba_is_ours; then
    _pg_write_hba || { _pg_log "could not write $PG_DATA/pg_hba.conf"; return 1; }
    _pg_psql -d postgres -tAc "select pg_reload_conf()" >/dev/null ||
      { _pg_log "the server on port $PG_PORT does not take the password (see its log)"; return 1; }
  fi
}

# Creates database $PG_DATABASE on the server at $PG_PORT unless it exists.
_pg_ensure_database() {
  local exists
  exists=$(_pg_psql -d postgres -tAc "select 1 from pg_database where datname = '$PG_DATABASE'") ||
    { _pg_log "the server on port $PG_PORT does not answer"; return 1; }
  [[ "$exists" == 1 ]] && return 0
  _pg_psql -d postgres -c "create database $PG_DATABASE" >/dev/null ||
    { _pg_log "could not create database $PG_DATABASE"; return 1; }
}

# pg_start [DIR]: starts the server and creates database `cluster`. Returns non-zero (and
# cleans up) on failure.
pg_start() {
  [[ -z "$PG_URL" ]] || { _pg_log "already running at $PG_URL"; return 1; }
  _pg_find_bin || return 1
  if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
    _pg_log "running as root needs the 'postgres' system user (from the postgresql package)"
    return 1
  fi

  if [[ $# -ge 1 && -n "$1" ]]; then
    PG_BASE=$1
    PG_TEMPORARY=0
    mkdir -p "$PG_BASE" || return 1
    PG_BASE=$(cd -P -- "$PG_BASE" && pwd -P) || return 1
  else
    # /tmp, not $TMPDIR: the postgres user must be able to reach the directory.
    PG_BASE=$(mktemp -d /tmp/cluster-pg.XXXXXX) || return 1
    PG_TEMPORARY=1
  fi
  PG_DATA=$PG_BASE/data
  local log=${PG_LOG:-$PG_BASE/postgres.log}
  if ((EUID == 0)); then
    chown postgres: "$PG_BASE"
    if ! runuser -u postgres -- test -x "$PG_BASE"; then
      _pg_log "the postgres user cannot reach $PG_BASE (a parent directory is not searchable by others)"
      _pg_cleanup
      return 1
    fi
    touch "$log" && chown postgres: "$log"
  fi

  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    if ! _pg_new_password; then
      _pg_log "could not write $(_pg_password_file)"
      _pg_cleanup
      return 1
    fi
    if ! _pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_SUPERUSER" \
      --auth=scram-sha-256 --pwfile="$(_pg_password_file)" \
      --encoding=UTF8 --locale=C >"$PG_BASE/initdb.log" 2>&1; then
      _pg_log "initdb failed:"
      cat "$PG_BASE/initdb.log" >&2
      _pg_cleanup
      return 1
    fi
  fi

  # The Unix socket sits in the data directory unless that path is too long for a socket
  # (108 bytes); then TCP on loopback only.
  local socket_dir=$PG_DATA
  ((${#PG_DATA} + 18 < 100)) || socket_dir=""
  local durability="# A kept data directory: the default durability settings."
  if ((PG_TEMPORARY)); then
    durability="# A throwaway server: durability is not worth the time.
fsync = off
synchronous_commit = off
full_page_writes = off"
  fi

  # With its password known, the server starts password-only; an older data directory
  # starts as it was and is secured by _pg_secure below, before anything else uses it.
  if _pg_read_password; then
    _pg_write_hba || { _pg_log "could not write $PG_DATA/pg_hba.conf"; _pg_cleanup; return 1; }
  fi

  local port=$PG_FIRST_PORT attempt
  for attempt in $(seq 1 20); do
    while _pg_port_in_use "$port"; do port=$((port + 1)); done
    # Written as an include file so that every start (and a kept DIR) uses the new port.
    cat >"$PG_DATA/cluster-dev.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
password_encryption = 'scram-sha-256'
unix_socket_directories = '$socket_dir'
max_connections = 200
$durability
CONF
    ((EUID == 0)) && chown postgres: "$PG_DATA/cluster-dev.conf"
    grep -q "^include_if_exists = 'cluster-dev.conf'" "$PG_DATA/postgresql.conf" ||
      echo "include_if_exists = 'cluster-dev.conf'" >>"$PG_DATA/postgresql.conf"
    # 9>&-: the server must not inherit scripts/dev's lock (fd 9), or it would hold it
    # for as long as it runs and block every later down/restart.
    if _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$log" -w -t 30 \
      start >/dev/null 2>&1 9>&-; then
      PG_PORT=$port
      break
    fi
    # Most likely another process took the port between the check and the bind.
    _pg_log "start on port $port failed (attempt $attempt), trying the next port"
    port=$((port + 1))
  done
  if [[ -z "$PG_PORT" ]]; then
    _pg_log "could not start the server; its log ($log):"
    tail -n 30 "$log" >&2 2>/dev/null || true
    _pg_cleanup
    return 1
  fi

  if ! _pg_secure || ! _pg_ensure_database; then
    pg_stop
    return 1
  fi
  PG_URL="postgresql://$PG_SUPERUSER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE"
  _pg_log "private server running on 127.0.0.1:$PG_PORT (data in $PG_DATA, password in $(_pg_password_file))"
}

# Stops the server started by pg_start (fast shutdown); removes a temporary data dir.
# Safe to call twice or when nothing was started.
pg_stop() {
  if [[ -n "$PG_DATA" && -f "$PG_DATA/postmaster.pid" ]]; then
    if ! _pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1; then
      # Last resort: the postmaster's PID is the first line of postmaster.pid.
      local pid
      if pid=$(pg_server_pid "$PG_BASE"); then
        _pg_log "pg_ctl stop failed; killing postmaster $pid"
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  fi
  [[ -n "$PG_URL" && "$PG_QUIET" != 1 ]] && _pg_log "stopped the server on 127.0.0.1:$PG_PORT"
  _pg_cleanup
}

_pg_cleanup() {
  if ((PG_TEMPORARY)) && [[ "$PG_BASE" == /tmp/cluster-pg.* ]]; then
    rm -rf -- "$PG_BASE"
  fi
  PG_URL="" PG_PORT="" PG_DATA="" PG_BASE="" PG_TEMPORARY=0 PG_PASSWORD=""
  return 0
}

# pg_server_pid DIR: prints the PID of the postmaster serving DIR/data, read from its
# postmaster.pid and checked: a live postgres process whose working directory is that data
# directory (the postmaster changes into it). Fails when none runs; a stale postmaster.pid
# or a reused PID never counts.
pg_server_pid() {
  local data pid exe cwd
  data=$(cd -P -- "$1/data" 2>/dev/null && pwd -P) || return 1
  [[ -f "$data/postmaster.pid" ]] || return 1
  pid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1 # gone, or a zombie
  exe=${exe% (deleted)}
  [[ "$exe" == */bin/postgres ]] || return 1
  cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
  [[ "$cwd" == "$data" ]] || return 1
  echo "$pid"
}

# pg_attach DIR: adopts the server already running on DIR/data (see pg_server_pid): sets
# PG_URL, PG_PORT, PG_DATA, PG_BASE, PG_PASSWORD (PG_TEMPORARY=0), makes it password-only
# (see _pg_secure) and creates the database if needed.
pg_attach() {
  [[ -z "$PG_URL" ]] || { _pg_log "already attached to $PG_URL"; return 1; }
  _pg_find_bin || return 1
  local base port
  pg_server_pid "$1" >/dev/null || return 1
  base=$(cd -P -- "$1" && pwd -P) || return 1
  # Line 4 of postmaster.pid is the port the server listens on.
  port=$(sed -n 4p "$base/data/postmaster.pid" 2>/dev/null)
  [[ "$port" =~ ^[0-9]+$ ]] || { _pg_log "cannot read the port from $base/data/postmaster.pid"; return 1; }
  PG_BASE=$base PG_DATA=$base/data PG_PORT=$port PG_TEMPORARY=0
  if ! _pg_secure || ! _pg_ensure_database; then
    PG_BASE="" PG_DATA="" PG_PORT="" PG_PASSWORD=""
    return 1
  fi
  PG_URL="postgresql://$PG_SUPERUSER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE"
}

# pg_stop_pid DIR PID [TIMEOUT_S]: stops the server on DIR/data by its PID, but only while
# PID is that server's postmaster (pg_server_pid): SIGINT (fast shutdown), SIGQUIT after
# TIMEOUT_S (default 30) seconds, SIGKILL as a last resort. Returns 1 (and signals nothing)
# if PID is not that postmaster.
pg_stop_pid() {
  local dir=$1 expected=$2 timeout=${3:-30} pid tries
  pid=$(pg_server_pid "$dir") || return 1
  [[ "$pid" == "$expected" ]] || return 1
  kill -INT "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while [[ "$(pg_server_pid "$dir")" == "$pid" ]] && ((SECONDS < deadline)); do sleep 0.1; done
  if [[ "$(pg_server_pid "$dir")" == "$pid" ]]; then
    _pg_log "postmaster $pid did not stop within ${timeout}s; sending SIGQUIT"
    kill -QUIT "$pid" 2>/dev/null || true
    tries=0
    while [[ "$(pg_server_pid "$dir")" == "$pid" ]] && ((tries < 50)); do
      sleep 0.1
      tries=$((tries + 1))
    done
    if [[ "$(pg_server_pid "$dir")" == "$pid" ]]; then
      _pg_log "postmaster $pid still running; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
    fi
  fi
  return 0
}
