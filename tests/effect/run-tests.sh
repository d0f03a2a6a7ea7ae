#!/usr/bin/env bash
# The Effect RPC compatibility tests: unmodified @effect/rpc + @effect/cluster clients against
# the proxy's Effect listener, on a cluster of the C++ binaries in CLUSTER_BUILD_DIR (default
# build/dev) that the tests start. EFFECT_TARGET=reference runs the call tests against the
# reference Effect Cluster (reference/server.mjs) instead. EFFECT_MATRIX=latest runs them with
# the newer Effect release pinned in latest/. Installs the npm packages when they are missing
# or stale (npm ci). Exits 77 (skipped) when Node.js 20+ or npm is missing.
set -euo pipefail
cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")"

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "skipped: node and npm are needed (scripts/dev test installs them)" >&2
  exit 77
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if ((major < 20)); then
  echo "skipped: Node.js 20 or newer is needed, this is $(node --version)" >&2
  exit 77
fi

install() {
  # npm ci again when package-lock.json changed since the last install.
  if [[ ! -f $1/node_modules/.package-lock.json || $1/package-lock.json -nt $1/node_modules/.package-lock.json ]]; then
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
install .
loader=()
if [[ ${EFFECT_MATRIX:-} == latest ]]; then
  install latest
  # The same test files, with effect/@effect/* resolved from latest/node_modules.
  loader=(--import ./latest/register.mjs)
fi
exec node "${loader[@]}" --test --test-concurrency=1 "${@:-test/}"
