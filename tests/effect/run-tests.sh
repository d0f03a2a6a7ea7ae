#!/usr/bin/env bash
# The Effect RPC compatibility tests: unmodified @effect/rpc + @effect/cluster clients against
# the proxy's Effect listener, on a cluster of the C++ binaries in CLUSTER_BUILD_DIR (default
# build/dev) that the tests start. EFFECT_TARGET=reference runs the call tests against the
# reference Effect Cluster (reference/server.mjs) instead. EFFECT_MATRIX=latest runs them with
# the newer Effect release pinned in latest/. Installs the npm packages when they are missing
# or stale (npm ci). Exits 77 (skipped) when Node.js 20+ or npm is missing.
set -euo pipefail
cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")"

# shellcheck source=SCRIPTDIR/../../scripts/lib/node-tests.sh
source ../../scripts/lib/node-tests.sh
require_node_20
npm_ci_when_stale .
loader=()
if [[ ${EFFECT_MATRIX:-} == latest ]]; then
  npm_ci_when_stale latest
  # The same test files, with effect/@effect/* resolved from latest/node_modules.
  loader=(--import ./latest/register.mjs)
fi
exec node "${loader[@]}" --test --test-concurrency=1 "${@:-test/}"
