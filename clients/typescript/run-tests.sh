#!/usr/bin/env bash
# The TypeScript client's tests (ctest: ts_client, label ts): installs its npm packages when
# they are missing or stale (npm ci), builds it with tsc and runs node --test against a
# cluster of the C++ binaries in CLUSTER_BUILD_DIR (default build/dev) that the tests start.
# Exits 77 (skipped) when Node.js 20+ or npm is missing.
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
# npm ci again when package-lock.json changed since the last install.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npx tsc -p tsconfig.json && npx tsc -p tsconfig.examples.json
exec node --test --test-concurrency=1 "${@:-test/}"
