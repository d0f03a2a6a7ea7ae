#!/usr/bin/env bash
# The TypeScript client's tests (ctest: ts_client, label ts): installs its npm packages when
# they are missing or stale (npm ci), builds it with tsc and runs node --test against a
# cluster of the C++ binaries in CLUSTER_BUILD_DIR (default build/dev) that the tests start.
# Exits 77 (skipped) when Node.js 20+ or npm is missing.
set -euo pipefail
cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")"

# shellcheck source=SCRIPTDIR/../../scripts/lib/node-tests.sh
source ../../scripts/lib/node-tests.sh
require_node_20
npm_ci_when_stale .
npx tsc -p tsconfig.json && npx tsc -p tsconfig.examples.json
exec node --test --test-concurrency=1 "${@:-test/}"
