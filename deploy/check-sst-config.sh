#!/usr/bin/env bash
# Checks sst.config.ts without AWS: installs the pinned SST CLI (npm ci, only when
# node_modules is missing or stale), lets `sst install` write SST's platform and the AWS
# provider's types to .sst/platform (it needs only the npm registry), then type-checks
# sst.config.ts against them with the platform's own TypeScript (tsconfig.json).
# A wrong option name or value type in sst.config.ts fails here.
#
# Registered in ctest as sst_config_typechecks (label deploy). Needs Node.js 20+ and npm.
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
exec </dev/null

started=$SECONDS
ensure_node_modules

# No AWS account is touched: no credentials are needed, the stage is fixed (no prompt),
# telemetry is off, SST does not fetch its Pulumi/Bun binaries (the dependency check) and
# installs the platform's packages with npm instead of Bun.
say "sst install (platform and provider types into .sst/platform)"
step=$SECONDS
SST_SKIP_DEPENDENCY_CHECK=1 SST_TELEMETRY_DISABLED=1 SST_NO_BUN=1 SST_STAGE=ci \
  "$ROOT/node_modules/.bin/sst" install || die "sst install failed"
say "sst install took $((SECONDS - step)) s"

tsc=$ROOT/.sst/platform/node_modules/.bin/tsc
[[ -x "$tsc" ]] || die "$tsc is missing after sst install"
[[ -f "$ROOT/.sst/platform/config.d.ts" ]] || die ".sst/platform/config.d.ts is missing after sst install"

say "tsc -p tsconfig.json ($("$tsc" --version))"
step=$SECONDS
"$tsc" -p "$ROOT/tsconfig.json" || die "sst.config.ts does not type-check against SST $(node -p 'require("./node_modules/sst/package.json").version')"
say "tsc took $((SECONDS - step)) s"

echo "sst.config.ts type-checks against SST $(node -p 'require("./node_modules/sst/package.json").version') ($((SECONDS - started)) s)"
