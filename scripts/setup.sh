#!/usr/bin/env bash
# Installs what Redistribute's commands need on a Debian 12 machine that has only Rust (rustup)
# and Node.js, skipping whatever is already there (a second run takes about a second).
#
#   bash scripts/setup.sh build   what `npm start` needs: the wasm32 target, wasm-bindgen-cli (the
#                                 exact version in Cargo.lock) and the root npm packages
#   bash scripts/setup.sh test    what `npm test` needs on top: redis-server, redis-cli, chromium,
#                                 chromedriver and haproxy (apt), and wasm-pack
#
# `npm start`, `npm test` and `.ci/run` all call it; each step prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-test}
case "$what" in build | test) ;; *) echo "usage: scripts/setup.sh build|test" >&2; exit 2 ;; esac
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

say() { printf 'setup: %s\n' "$*"; }

# Packages from Debian, only for the test suites (the demo needs neither Redis nor a browser).
apt_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  # The end-to-end test of a deployment runs the real load balancer (deploy/haproxy.cfg).
  command -v haproxy >/dev/null || missing+=(haproxy)
  if [ ${#missing[@]} -eq 0 ]; then
    say "redis-server, redis-cli, chromium, chromedriver, haproxy present"
    return
  fi
  say "installing ${missing[*]} (apt)"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # chromium's maintainer script prints a harmless "[: unexpected operator" line.
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1
}

wasm_target() {
  if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    say "wasm32 target present"
  else
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown >/dev/null 2>&1
  fi
}

# Faster from-source installs: the tools need no link-time optimisation.
cargo_install() {
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install --quiet "$@"
}

# wasm-bindgen-cli must equal the wasm-bindgen version in Cargo.lock, or the generated glue does not
# match. Building needs only `wasm-bindgen`; the browser tests also need `wasm-bindgen-test-runner`.
# No TLS features: nothing here downloads anything.
wasm_bindgen_cli() {
  local want have bins=(--bin wasm-bindgen) tools="wasm-bindgen"
  want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
  have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$what" = test ]; then
    bins=(--bins)
    tools="wasm-bindgen and its test runner"
    local runner
    runner=$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $2}' || true)
    [ "$runner" = "$want" ] || have=""
  fi
  if [ "$have" = "$want" ]; then
    say "$tools $want present"
  else
    say "installing $tools $want (cargo install wasm-bindgen-cli, about 3 minutes)"
    # No --locked: the registry mirror lacks one of its pinned dependency versions.
    cargo_install wasm-bindgen-cli --version "$want" --no-default-features "${bins[@]}" --force
  fi
}

wasm_pack() {
  if command -v wasm-pack >/dev/null; then
    say "wasm-pack present"
  else
    say "installing wasm-pack (cargo install, about 2 minutes)"
    cargo_install wasm-pack --locked
  fi
}

npm_packages() {
  # package-lock.json is newer than the install marker whenever dependencies changed.
  if [ -f node_modules/.package-lock.json ] && [ ! package-lock.json -nt node_modules/.package-lock.json ]; then
    say "npm packages present"
  else
    say "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund --no-update-notifier --loglevel=error >/dev/null
  fi
}

[ "$what" = test ] && apt_packages
wasm_target
npm_packages
wasm_bindgen_cli
[ "$what" = test ] && wasm_pack
exit 0
