# shellcheck shell=bash
# The local cluster's processes: how each one starts, whether a PID is still ours, how to
# stop it. Sourced by scripts/dev after lib/common.sh; expects ROOT.
#
# Every component has a pid file in .local/run and a log in .local/logs. A PID counts as
# ours only while /proc/PID/exe is the component's binary in this checkout (and, for a
# runner, its command line names the runner), so a stale pid file never kills a stranger.
# The local PostgreSQL (storage postgres) is handled by scripts/dev with lib/postgres.sh;
# its state is .local/pg (data, kept across up/down) and .local/run/postgres.{pid,url}.

BUILD_DIR=$ROOT/build/release
BIN_DIR=$BUILD_DIR/bin
PLUGIN_DIR=$BUILD_DIR/plugins
CONFIG_FILE=$ROOT/config/local.toml
STATE_DIR=$ROOT/.local
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/logs
CLUSTERCTL=$BIN_DIR/clusterctl

# shellcheck disable=SC2034 # used by scripts/dev
PG_DIR=$STATE_DIR/pg

# Every component scripts/dev knows, in start order. The HTTP gateway is optional: `up`
# starts it only when its binary is built. COMPONENTS: the ones `up` starts now.
ALL_COMPONENTS=(manager runner-1 runner-2 proxy gateway)
COMPONENTS=(manager runner-1 runner-2 proxy)
if [[ -x "$BIN_DIR/cluster-gateway" ]]; then COMPONENTS+=(gateway); fi
LOCAL_HOST=127.0.0.1
MANAGER_ADDR=$LOCAL_HOST:8080
PROXY_ADDR=$LOCAL_HOST:3333
# shellcheck disable=SC2034 # used by scripts/dev
GATEWAY_URL=http://$LOCAL_HOST:8787
STOP_TIMEOUT_S=${DEV_STOP_TIMEOUT_S:-15}

is_component() {
  local c
  for c in "${ALL_COMPONENTS[@]}"; do [[ "$c" == "$1" ]] && return 0; done
  return 1
}

component_binary() {
  case $1 in
    manager) echo "$BIN_DIR/cluster-manager" ;;
    proxy) echo "$BIN_DIR/cluster-proxy" ;;
    gateway) echo "$BIN_DIR/cluster-gateway" ;;
    runner-*) echo "$BIN_DIR/cluster-runner" ;;
    *) return 1 ;;
  esac
}

component_port() {
  case $1 in
    manager) echo 8080 ;;
    proxy) echo 3333 ;;
    gateway) echo 8787 ;;
    runner-1) echo 34431 ;;
    runner-2) echo 34432 ;;
    *) return 1 ;;
  esac
}

# The one definition of a component's command line, shared by `up` and `restart`.
# Sets the array COMMAND. $2 is the storage backend (memory or postgres), $3 the PostgreSQL
# URL (postgres only). Only the manager and the runners declare [storage]: the proxy and
# the gateway would reject storage.* keys.
component_command() {
  local name=$1 storage=$2 url=${3:-} bin port
  bin=$(component_binary "$name") || return 1
  port=$(component_port "$name") || return 1
  COMMAND=("$bin" --config "$CONFIG_FILE")
  case $name in
    manager | runner-*)
      COMMAND+=(--set "cluster.storage=$storage")
      if [[ "$storage" == postgres ]]; then
        [[ -n "$url" ]] || die "$name: storage postgres needs the database URL"
        COMMAND+=(--set "storage.url=$url")
      fi
      ;;
    proxy) COMMAND+=(--set "cluster.storage=$storage") ;;
  esac
  case $name in
    manager) COMMAND+=(--set "manager.port=$port") ;;
    proxy) COMMAND+=(--set "proxy.port=$port") ;;
    gateway)
      COMMAND+=(--set "gateway.host=$LOCAL_HOST" --set "gateway.port=$port"
        --set "gateway.proxy=$PROXY_ADDR")
      ;;
    runner-*)
      COMMAND+=(--set "runner.name=$name" --set "runner.port=$port"
        --set "runner.plugins=$PLUGIN_DIR")
      ;;
  esac
}

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }

# True if PID $2 is a live process running component $1's binary from this checkout.
pid_is_component() {
  local name=$1 pid=$2 exe expected state
  [[ "$pid" =~ ^[1-9][0-9]*$ ]] || return 1
  # A zombie (exited, not yet reaped) has no exe link, so it does not count.
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)} # the binary was rebuilt while the process ran
  expected=$(component_binary "$name") || return 1
  [[ "$exe" == "$expected" ]] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [[ "$state" != Z ]] || return 1
  if [[ "$name" == runner-* ]]; then
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "runner.name=$name" || return 1
  fi
  return 0
}

# Prints the PID of component $1 if it is running (and was started by us); else fails.
component_pid() {
  local file pid
  file=$(pid_file "$1")
  [[ -f "$file" ]] || return 1
  pid=$(<"$file")
  pid_is_component "$1" "$pid" || return 1
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
  (exec 3<>"/dev/tcp/$LOCAL_HOST/$1") 2>/dev/null
}

# Starts component $1 in the background with storage $2 (and PostgreSQL URL $3), in its
# own session, output appended to its log. The lock fd 9 is closed so that the process does
# not hold it.
start_component() {
  local name=$1 storage=$2 url=${3:-} log pid
  local -a COMMAND
  component_command "$name" "$storage" "$url"
  [[ -x "${COMMAND[0]}" ]] || die "${COMMAND[0]} is not built"
  log=$(log_file "$name")
  printf '=== %s: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${COMMAND[*]}" >>"$log"
  # setsid: no controlling terminal, so closing the terminal or Ctrl-C later does not
  # reach it. Without job control the child is not a group leader, so setsid execs in
  # place and $! is the server's own PID.
  setsid "${COMMAND[@]}" </dev/null >>"$log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$(pid_file "$name")"
  # Until the exec chain (subshell → setsid → server) completes, /proc/PID/exe is not the
  # server yet; wait for it so that callers can tell "not started yet" from "exited".
  local tries=0
  while ! pid_is_component "$name" "$pid" && kill -0 "$pid" 2>/dev/null && ((tries < 100)); do
    sleep 0.02
    tries=$((tries + 1))
  done
  say "started $name (pid $pid, port $(component_port "$name"))"
}

# Stops the given components if they run: SIGTERM to all of them at once, then waits up
# to STOP_TIMEOUT_S seconds for each and sends SIGKILL to what is left. Removes their pid
# files. Never signals a PID that is not ours.
stop_components() {
  local name file pid
  local -a names=() pids=()
  for name in "$@"; do
    file=$(pid_file "$name")
    [[ -f "$file" ]] || continue
    pid=$(<"$file")
    if ! pid_is_component "$name" "$pid"; then
      say "$name is not running (removing stale pid file)"
      rm -f "$file"
      continue
    fi
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    names+=("$name")
    pids+=("$pid")
  done
  local i deadline=$((SECONDS + STOP_TIMEOUT_S)) tries
  for i in "${!names[@]}"; do
    name=${names[i]}
    pid=${pids[i]}
    while pid_is_component "$name" "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if pid_is_component "$name" "$pid"; then
      warn "$name (pid $pid) did not stop within ${STOP_TIMEOUT_S}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      tries=0
      while pid_is_component "$name" "$pid" && ((tries < 50)); do
        sleep 0.1
        tries=$((tries + 1))
      done
    fi
    # Reap it if it is our child (up's failure path); harmless otherwise.
    wait "$pid" 2>/dev/null || true
    rm -f "$(pid_file "$name")"
  done
}

stop_component() { stop_components "$1"; }

# Prints the last lines of the components' logs.
show_log_tails() {
  local name log
  for name in "$@"; do
    log=$(log_file "$name")
    [[ -s "$log" ]] || continue
    printf '\n----- last 25 lines of %s -----\n' "$log" >&2
    tail -n 25 "$log" >&2
  done
  printf '\n' >&2
}

# --- reading `clusterctl status --json` without jq --------------------------------------
# The JSON is flattened (whitespace removed); runner objects hold no nested objects, so
# splitting on braces isolates each runner.

status_json() {
  "$CLUSTERCTL" --manager "$MANAGER_ADDR" --proxy "$PROXY_ADDR" --timeout-ms 2000 \
    status --json 2>/dev/null | tr -d '[:space:]'
}

# json_number FLAT_JSON KEY: the first integer value of "KEY".
json_number() {
  { grep -o "\"$2\":-\?[0-9]*" <<<"$1" || true; } | sed -n '1s/.*://p'
}

# runner_object FLAT_JSON NAME: the {...} of the runner called NAME.
runner_object() {
  tr '{}' '\n' <<<"$1" | { grep -F "\"name\":\"$2\"" || true; } | sed -n 1p
}

healthy_runner_count() {
  { grep -o '"healthy":true' <<<"$1" || true; } | wc -l
}
