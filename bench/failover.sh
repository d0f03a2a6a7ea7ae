#!/usr/bin/env bash
# Failover time: kill -9 the local cluster's runner owning the most shards, then time until 40
# entities spread over the shards all answer GreetVolatile again through the proxy; restarts
# the runner afterwards. Needs `scripts/dev up`. Usage: bench/failover.sh [RUNS] (default 3).
set -euo pipefail
ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
CALL=(build/release/bin/clusterctl --proxy 127.0.0.1:3333 --timeout-ms 300 call)
runs=${1:-3}
times=$(mktemp)
trap 'rm -f "$times"' EXIT
for ((run = 1; run <= runs; run++)); do
  victim=$(scripts/dev status --json | python3 -c \
    'import json,sys; s=json.load(sys.stdin); print(max(s["runners"], key=lambda r: r["shards"])["name"])')
  pid=$(cat ".local/run/$victim.pid")
  start=$(date +%s%N)
  kill -9 "$pid"
  : >"$times"
  for i in $(seq 1 40); do
    (
      until "${CALL[@]}" Greeter "spread-$i" GreetVolatile '{"name":"x"}' >/dev/null 2>&1; do :; done
      echo $((($(date +%s%N) - start) / 1000000)) >>"$times"
    ) &
  done
  wait
  echo "run $run: killed $victim (pid $pid); all 40 entities answered after $(sort -n "$times" | tail -1) ms"
  scripts/dev restart "$victim" >/dev/null
  sleep 2
done
