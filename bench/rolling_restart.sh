#!/usr/bin/env bash
# A SIGTERM rolling restart under load: cluster-bench keeps volatile and persisted calls going
# for 40 s while `scripts/dev restart` restarts runner-1, runner-2 and then the manager; prints
# both load generators' summaries (errors by kind). Needs `scripts/dev up`.
set -euo pipefail
ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
BENCH=(build/release/bin/cluster-bench --proxy 127.0.0.1:3333 --connections 2 --in-flight 4
  --entities 1000 --duration-s 40 --warmup-s 0 --timeout-ms 30000)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"${BENCH[@]}" --rpc GreetVolatile >"$out/volatile" 2>&1 &
volatile=$!
"${BENCH[@]}" --rpc Greet >"$out/persisted" 2>&1 &
persisted=$!
sleep 3
for name in runner-1 runner-2 manager; do
  scripts/dev restart "$name" | tail -n 1
  sleep 4
done
wait "$volatile" "$persisted" || true
echo "--- GreetVolatile"; cat "$out/volatile"
echo "--- Greet (persisted)"; cat "$out/persisted"
