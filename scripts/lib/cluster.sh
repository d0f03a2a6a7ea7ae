# shellcheck shell=bash
# The local cluster's processes: how each one starts, and the two tools that supervise them.
# Sourced by scripts/dev after lib/common.sh; expects ROOT.
#
# cluster-launch (tools/cluster-launch, the code the multi-process tests link) starts,
# recognises and stops them: .local/run/<name>.pid holds the PID, <name>.cmdline the command
# line it was started with, and a PID counts as the component only while it runs exactly
# that command line, so a stale pid file never gets a stranger killed. `clusterctl wait`
# says when they are ready. The local PostgreSQL (storage postgres) is handled by
# scripts/dev with lib/postgres.sh; its state is .local/pg (data, kept across up/down) and
# .local/run/postgres.{pid,url}.

BUILD_DIR=$ROOT/build/release
BIN_DIR=$BUILD_DIR/bin
PLUGIN_DIR=$BUILD_DIR/plugins
CONFIG_FILE=$ROOT/config/local.toml
STATE_DIR=$ROOT/.local
RUN_DIR=$STATE_DIR/run
LOG_DIR=$STATE_DIR/logs
CLUSTERCTL=$BIN_DIR/clusterctl
# The cluster's keys (clusterctl keys init): every process reads its role's key here, and
# clusterctl / cluster-bench find theirs through the variable (docs/security.md).
CREDENTIALS_DIR=$STATE_DIR/credentials
export CLUSTER_SECURITY_CREDENTIALS_DIR=$CREDENTIALS_DIR
# DEV_SECURITY_AUTH=false (measuring its cost): the tools must not expect proofs either.
if [[ "${DEV_SECURITY_AUTH:-}" == false ]]; then export CLUSTER_SECURITY_AUTH=false; fi
LAUNCHER=$BIN_DIR/cluster-launch

# shellcheck disable=SC2034 # used by scripts/dev
PG_DIR=$STATE_DIR/pg

# Every component scripts/dev knows, in start order. The HTTP gateway is optional: `up`
# starts it only when its binary is built. COMPONENTS: the ones `up` starts now.
# shellcheck disable=SC2034 # used by scripts/dev
ALL_COMPONENTS=(manager runner-1 runner-2 proxy gateway)
COMPONENTS=(manager runner-1 runner-2 proxy)
if [[ -x "$BIN_DIR/cluster-gateway" ]]; then COMPONENTS+=(gateway); fi
LOCAL_HOST=127.0.0.1
MANAGER_ADDR=$LOCAL_HOST:8080
PROXY_ADDR=$LOCAL_HOST:3333
# The proxy's @effect/rpc listener (docs/effect-rpc.md) and the token its clients present.
EFFECT_PORT=3334
EFFECT_ADDR=$LOCAL_HOST:$EFFECT_PORT
# shellcheck disable=SC2034 # used by scripts/dev
GATEWAY_URL=http://$LOCAL_HOST:8787
STOP_TIMEOUT_S=${DEV_STOP_TIMEOUT_S:-15}

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

# The admin HTTP endpoint of each component (/metrics, /healthz, /readyz; the manager's
# also serves the dashboard): loopback only, like everything of the local cluster.
component_admin_port() {
  case $1 in
    manager) echo 9090 ;;
    proxy) echo 9091 ;;
    gateway) echo 9092 ;;
    runner-*) echo $((9100 + ${1#runner-})) ;;
    *) return 1 ;;
  esac
}
component_admin_url() { echo "http://$LOCAL_HOST:$(component_admin_port "$1")"; }
# shellcheck disable=SC2034 # used by scripts/dev
DASHBOARD_URL=http://$LOCAL_HOST:9090/dashboard

# The one definition of a component's command line, shared by `up` and `restart`.
# Sets the array COMMAND. $2 is the storage backend (memory or postgres), $3 the PostgreSQL
# URL (postgres only). Only the manager and the runners declare [storage]: the proxy and
# the gateway would reject storage.* keys.
component_command() {
  local name=$1 storage=$2 url=${3:-} bin port section=${1%%-*}
  bin=$(component_binary "$name") || return 1
  port=$(component_port "$name") || return 1
  COMMAND=("$bin" --config "$CONFIG_FILE" --set "security.credentials_dir=$CREDENTIALS_DIR"
    --set "$section.admin_port=$(component_admin_port "$name")")
  # DEV_SECURITY_AUTH=false / DEV_SECURITY_TLS=on|accept: for measuring what they cost.
  [[ -n "${DEV_SECURITY_AUTH:-}" ]] && COMMAND+=(--set "security.auth=$DEV_SECURITY_AUTH")
  [[ -n "${DEV_SECURITY_TLS:-}" ]] && COMMAND+=(--set "security.tls=$DEV_SECURITY_TLS")
  case $name in
    manager | runner-*)
      COMMAND+=(--set "cluster.storage=$storage")
      if [[ "$storage" == postgres ]]; then
        [[ -n "$url" ]] || die "$name: storage postgres needs the database URL"
        # The URL carries the database password: in the environment, not on the command line
        # that every user of the machine can read (ps).
        COMMAND_STORAGE_URL=$url
      fi
      ;;
    proxy) COMMAND+=(--set "cluster.storage=$storage") ;;
  esac
  case $name in
    manager) COMMAND+=(--set "manager.port=$port") ;;
    proxy) COMMAND+=(--set "proxy.port=$port" --set "proxy.effect_port=$EFFECT_PORT") ;;
    gateway)
      COMMAND+=(--set "gateway.host=$LOCAL_HOST" --set "gateway.port=$port"
        --set "gateway.proxy=$PROXY_ADDR")
      ;;
    runner-*)
      # DEV_PLUGINS: more plugin files or folders (comma-separated), e.g. one built out of tree.
      # plugins/jobs: the example singleton and cron job (plugins/scheduler).
      COMMAND+=(--set "runner.name=$name" --set "runner.port=$port"
        --set "runner.plugins=$PLUGIN_DIR,$PLUGIN_DIR/jobs${DEV_PLUGINS:+,$DEV_PLUGINS}")
      ;;
  esac
}

# ensure_credentials: the local cluster's keys, made once and kept across up/down, and the
# TLS choice of this `up` (tools read it from the folder's `tls` file).
ensure_credentials() {
  if [[ ! -f "$CREDENTIALS_DIR/trust" ]]; then
    "$CLUSTERCTL" keys init "$CREDENTIALS_DIR" >/dev/null || die "could not create credentials in $CREDENTIALS_DIR"
    say "created the cluster's credentials in $CREDENTIALS_DIR"
  fi
  chmod 700 "$CREDENTIALS_DIR"
  # The Effect listener's bearer token: the proxy reads it from here (proxy.effect_token
  # unset), Effect programs send it as "authorization: Bearer <token>".
  if [[ ! -s "$CREDENTIALS_DIR/effect.token" ]]; then
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$CREDENTIALS_DIR/effect.token")
  fi
  local tls=${DEV_SECURITY_TLS:-off}
  [[ "$tls" == on ]] || tls=off
  echo "$tls" >"$CREDENTIALS_DIR/tls"
}

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$LOG_DIR/$1.log"; }

launcher() { "$LAUNCHER" --tag dev --run-dir "$RUN_DIR" --log-dir "$LOG_DIR" "$@"; }
ctl() { "$CLUSTERCTL" --manager "$MANAGER_ADDR" --proxy "$PROXY_ADDR" "$@"; }

# Prints the PID of component $1 if it is running (and was started by us); else fails,
# also while its supervisor waits to restart it.
component_pid() {
  [[ -x "$LAUNCHER" ]] || return 1
  launcher pid "$1" 2>/dev/null
}

# True while component $1 runs or its supervisor is about to restart it.
component_alive() {
  [[ -x "$LAUNCHER" ]] || return 1
  launcher status "$1" >/dev/null 2>&1
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
  (exec 3<>"/dev/tcp/$LOCAL_HOST/$1") 2>/dev/null
}

# start_component NAME STORAGE [URL] [--rotate-log]: starts NAME in the background in its own
# session (no controlling terminal: closing the terminal or Ctrl-C later does not reach
# it), output appended to its log; cluster-launch closes every inherited descriptor, the
# lock fd 9 included. A supervisor (cluster-launch --supervise) restarts it whenever it
# ends, as ECS restarts a task: after 0.5 s, doubling to 10 s while it keeps ending, back to
# 0.5 s once a run lasted 30 s (DEV_RESTART_BACKOFF_MS, DEV_RESTART_MAX_BACKOFF_MS,
# DEV_RESTART_RESET_MS), with a line "restarted after exit by SIGABRT (restart 2)" in its
# log. Stopping it (down, restart) stops the supervisor and it.
start_component() {
  local name=$1 storage=$2 url=${3:-} pid
  local -a COMMAND
  local COMMAND_STORAGE_URL=""
  component_command "$name" "$storage" "$url"
  [[ -x "${COMMAND[0]}" ]] || die "${COMMAND[0]} is not built"
  # Exported in the $(...) subshell only: the supervisor and its restarts inherit it.
  pid=$([[ -z "$COMMAND_STORAGE_URL" ]] || export CLUSTER_STORAGE_URL=$COMMAND_STORAGE_URL
    launcher start "${@:4}" --supervise --backoff-ms "${DEV_RESTART_BACKOFF_MS:-500}" \
    --max-backoff-ms "${DEV_RESTART_MAX_BACKOFF_MS:-10000}" \
    --reset-after-ms "${DEV_RESTART_RESET_MS:-30000}" "$name" -- "${COMMAND[@]}") ||
    die "could not start $name"
  say "started $name (pid $pid, port $(component_port "$name"))"
}

# Stops the given components if they run: SIGTERM to all of them at once, SIGKILL to those
# left after STOP_TIMEOUT_S seconds; removes their pid files.
stop_components() {
  (($#)) || return 0
  [[ -x "$LAUNCHER" ]] || die "$LAUNCHER is missing; run scripts/dev build"
  launcher stop --timeout-s "$STOP_TIMEOUT_S" "$@" || true
}

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

# A pid file written before cluster-launch kept command lines (no <name>.cmdline): adopt
# its process if it runs this component's binary from this checkout (a runner: with its
# runner.name), so that `down` and `restart` still stop a cluster started that way.
adopt_unrecorded() {
  local name pid exe
  for name in "${ALL_COMPONENTS[@]}"; do
    [[ -f "$RUN_DIR/$name.pid" && ! -f "$RUN_DIR/$name.cmdline" ]] || continue
    pid=$(<"$RUN_DIR/$name.pid")
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    [[ "${exe% (deleted)}" == "$(readlink -f "$(component_binary "$name")")" ]] || continue
    [[ "$name" != runner-* ]] || tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qxF "runner.name=$name" || continue
    cp "/proc/$pid/cmdline" "$RUN_DIR/$name.cmdline"
  done
}
adopt_unrecorded
