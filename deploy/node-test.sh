#!/usr/bin/env bash
# Runs node's test runner on the given deploy/*.test.mjs files after making sure that
# node_modules matches package-lock.json (the tests load the `typescript` package).
#
#   deploy/node-test.sh deploy/sst-config.test.mjs deploy/dockerfile.test.mjs
#
# Registered in ctest (label deploy). Needs Node.js 20+ and npm.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
exec </dev/null

(($# > 0)) || die "usage: deploy/node-test.sh <test files...>"
ensure_node_modules
exec node --test "$@"
