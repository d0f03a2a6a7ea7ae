# shellcheck shell=bash
# Helpers shared by scripts/dev and .ci/run: messages, the package list and its installer.
# Sourced; expects ROOT (the project root) to be set by the caller.

# Messages go to stderr so that stdout stays for results (JSON, replies, URLs).
say() { printf 'dev: %s\n' "$*" >&2; }
warn() { printf 'dev: warning: %s\n' "$*" >&2; }
die() {
  printf 'dev: error: %s\n' "$*" >&2
  exit 1
}

# is_in WORD LIST...: true if WORD is one of LIST.
is_in() {
  local word=$1 item
  shift
  for item in "$@"; do [[ "$item" == "$word" ]] && return 0; done
  return 1
}

# Debian 12 packages that build, test and run the project (one list for up, test and CI).
DEV_PACKAGES=(
  g++ cmake ninja-build pkg-config
  libboost-dev libboost-filesystem-dev libmsgpack-cxx-dev libpq-dev libtomlplusplus-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libssl-dev
  postgresql postgresql-client clang-format curl python3
  chromium prometheus  # the dashboard's headless page test, promtool for /metrics
)

# Prints the packages of DEV_PACKAGES that dpkg does not report as installed, one a line.
missing_packages() {
  local pkg status
  for pkg in "${DEV_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == installed ]] || printf '%s\n' "$pkg"
  done
}

# apt_install PACKAGE...: installs Debian packages (as root, or through sudo).
apt_install() {
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 ||
      die "missing packages ($*) and not root; install them or run as root"
    sudo=(sudo)
  fi
  say "installing missing packages: $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null ||
    die "apt-get update failed"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "$@" </dev/null || die "apt-get install failed for: $*"
}

# Installs whatever is missing; does nothing (and needs no network) when all is there.
ensure_packages() {
  command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: scripts/dev supports Debian 12 only"
  local missing=()
  mapfile -t missing < <(missing_packages)
  if ((${#missing[@]} == 0)); then
    return 0
  fi
  apt_install "${missing[@]}"
}

# Node.js and npm for the deploy-labelled tests (sst.config.ts, Dockerfile checks): when
# `node` is missing, installs Debian's nodejs and npm. A Node.js from elsewhere (it usually
# bundles npm) is left as it is.
ensure_node() {
  if command -v node >/dev/null 2>&1; then
    command -v npm >/dev/null 2>&1 ||
      warn "node is installed but npm is not; the deploy tests (ctest -L deploy) need npm"
    return 0
  fi
  apt_install nodejs npm
}

# Configures (once) and builds a CMake preset: build_preset dev|release|ci
build_preset() {
  local preset=$1
  if [[ ! -f "$ROOT/build/$preset/build.ninja" ]]; then
    say "configuring the $preset preset"
    (cd "$ROOT" && cmake --preset "$preset") || die "cmake --preset $preset failed"
  fi
  say "building the $preset preset"
  (cd "$ROOT" && cmake --build --preset "$preset") || die "cmake --build --preset $preset failed"
}
