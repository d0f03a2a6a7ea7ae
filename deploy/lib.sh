# shellcheck shell=bash
# Helpers of the deployment checks (deploy/check-sst-config.sh, deploy/node-test.sh).
# Sourced; sets ROOT to the repository root and works from any directory.

ROOT=$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)

say() { printf 'deploy: %s\n' "$*" >&2; }
die() {
  printf 'deploy: error: %s\n' "$*" >&2
  exit 1
}

# Node 20 or newer with npm (the SST CLI and the tests need nothing else).
require_node() {
  command -v node >/dev/null 2>&1 || die "node not found: install Node.js 20 or newer (Debian: apt-get install nodejs npm)"
  command -v npm >/dev/null 2>&1 || die "npm not found: install npm"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || die "node $(node --version) is too old: SST and the tests need Node.js 20 or newer"
}

# What node_modules was installed from: the lockfile, package.json and the node version.
node_modules_stamp() {
  { cat "$ROOT/package.json" "$ROOT/package-lock.json"; node --version; } | sha256sum | cut -d' ' -f1
}

# Runs `npm ci` when node_modules is missing or was installed from another lockfile.
# Serialized with flock so that two checks started at once (ctest -j) do not both install.
ensure_node_modules() {
  require_node
  local stamp_file=$ROOT/node_modules/.cluster-sst-stamp lock want
  lock="${TMPDIR:-/tmp}/cluster-sst-npm-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12).lock"
  want=$(node_modules_stamp)
  (
    flock 9
    if [[ -f "$stamp_file" && "$(cat "$stamp_file")" == "$want" && -x "$ROOT/node_modules/.bin/sst" ]]; then
      exit 0
    fi
    say "npm ci (node_modules is missing or older than package-lock.json)"
    local started=$SECONDS
    (cd "$ROOT" && npm ci --no-audit --no-fund --no-update-notifier --loglevel=error) || die "npm ci failed"
    printf '%s\n' "$want" >"$stamp_file"
    say "npm ci took $((SECONDS - started)) s"
  ) 9>"$lock"
}
