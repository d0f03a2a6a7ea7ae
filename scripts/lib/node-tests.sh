# shellcheck shell=bash
# What the Node.js test suites (clients/typescript, tests/effect) need before they run:
# sourced by their run-tests.sh.

# Exits 77 (ctest's "skipped") unless node 20+ and npm are installed.
require_node_20() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "skipped: node and npm are needed (scripts/dev test installs them)" >&2
    exit 77
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  if ((major < 20)); then
    echo "skipped: Node.js 20 or newer is needed, this is $(node --version)" >&2
    exit 77
  fi
}

# npm ci in folder $1 when its packages are missing or package-lock.json changed since.
npm_ci_when_stale() {
  if [[ ! -f $1/node_modules/.package-lock.json || $1/package-lock.json -nt $1/node_modules/.package-lock.json ]]; then
    (cd "$1" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
