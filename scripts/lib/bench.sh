# shellcheck shell=bash
# `scripts/dev bench`: the standard benchmark matrix against the running local cluster.
# Sourced by scripts/dev after lib/common.sh and lib/cluster.sh; expects ROOT.

CLUSTER_BENCH=$BIN_DIR/cluster-bench
# The matrix: every RPC x every in-flight count, on BENCH_ENTITIES entities. An RPC is
# `Rpc` (of Greeter: volatile, persisted) or `Type.Rpc` (Counter.Increment: persisted with
# durable state, committed with its reply).
BENCH_RPCS=(GreetVolatile Greet Counter.Increment)
BENCH_IN_FLIGHT=(1 64)
BENCH_ENTITIES=${DEV_BENCH_ENTITIES:-1000}
BENCH_DURATION_S=${DEV_BENCH_DURATION_S:-10}
BENCH_WARMUP_S=${DEV_BENCH_WARMUP_S:-2}
# Requests in flight are spread over at most this many connections to the proxy
# (64 in flight = 4 connections x 16).
BENCH_MAX_CONNECTIONS=4

# Builds cluster-bench alone (release preset) when it is missing.
ensure_cluster_bench() {
  [[ -x "$CLUSTER_BENCH" ]] && return 0
  ensure_packages
  if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
    say "configuring the release preset"
    (cd "$ROOT" && cmake --preset release) || die "cmake --preset release failed"
  fi
  say "building cluster-bench (release preset)"
  (cd "$ROOT" && cmake --build --preset release --target cluster-bench) ||
    die "building cluster-bench failed"
}

# json_field FLAT_JSON KEY: the raw value of "KEY" (a number or a quoted string).
json_field() {
  { grep -o "\"$2\":[^,}]*" <<<"$1" || true; } | sed -n '1s/^[^:]*://p'
}

# bench_cell RPC IN_FLIGHT [EXTRA...]: runs one cell; prints cluster-bench's JSON line.
bench_cell() {
  local rpc=$1 in_flight=$2 connections type=()
  shift 2
  if [[ $rpc == *.* ]]; then
    type=(--entity-type "${rpc%%.*}")
    rpc=${rpc#*.}
  fi
  connections=$BENCH_MAX_CONNECTIONS
  ((in_flight < connections)) && connections=$in_flight
  ((in_flight % connections == 0)) || connections=1
  "$CLUSTER_BENCH" --proxy "$PROXY_ADDR" "${type[@]}" --rpc "$rpc" --entities "$BENCH_ENTITIES" \
    --connections "$connections" --in-flight $((in_flight / connections)) \
    --duration-s "$BENCH_DURATION_S" --warmup-s "$BENCH_WARMUP_S" --json "$@"
}

# run_bench_matrix [--json] [cluster-bench args...]
run_bench_matrix() {
  local as_json=0 extra=()
  while (($#)); do
    case $1 in
      --json) as_json=1 ;;
      *) extra+=("$1") ;;
    esac
    shift
  done
  ensure_cluster_bench
  # Cluster CPU per call: the processes on a call's path and their children (plugin hosts).
  local component pid
  for component in manager runner-1 runner-2 proxy; do
    pid=$(component_pid "$component") && extra+=(--cpu-pid "$pid")
  done
  if ! component_pid proxy >/dev/null || ! ctl --timeout-ms 2000 status >/dev/null 2>&1; then
    die "the local cluster is not running (no proxy or manager answering); start it with scripts/dev up"
  fi

  local rpc in_flight line failed=0
  if ((!as_json)); then
    say "matrix: ${BENCH_RPCS[*]} x in flight ${BENCH_IN_FLIGHT[*]} x $BENCH_ENTITIES entities, ${BENCH_DURATION_S}s each after ${BENCH_WARMUP_S}s warm-up"
    printf '%-17s %9s %9s %11s %9s %9s %7s %9s\n' rpc in_flight entities rps p50_ms p99_ms errors \
      cpu_us
  fi
  for rpc in "${BENCH_RPCS[@]}"; do
    for in_flight in "${BENCH_IN_FLIGHT[@]}"; do
      if ! line=$(bench_cell "$rpc" "$in_flight" "${extra[@]}"); then
        failed=1
        warn "cluster-bench failed for $rpc at $in_flight in flight"
        [[ -n "$line" ]] || continue
      fi
      if ((as_json)); then
        printf '%s\n' "$line"
      else
        printf '%-17s %9s %9s %11s %9s %9s %7s %9s\n' "$rpc" \
          "$(json_field "$line" in_flight)" "$(json_field "$line" entities)" \
          "$(json_field "$line" rps)" "$(json_field "$line" p50_ms)" \
          "$(json_field "$line" p99_ms)" "$(json_field "$line" errors)" \
          "$(json_field "$line" cpu_us_per_call)"
      fi
    done
  done
  return "$failed"
}
