#!/usr/bin/env bash
# `npm test`: runs every suite. First the fast hygiene checks (rustfmt, clippy, rustdoc), then
# scripts/setup.sh installs whatever the suites lack (apt packages, the wasm32 target, wasm-pack,
# wasm-bindgen-cli, npm packages; it skips what is there), then the suites run.
#
# Each Rust integration test starts its own redis-server; the browser, Node and end-to-end suites
# run under tests/harness.mjs, which starts Redis and two servers on free loopback ports and
# stops them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
started=$(date +%s)

summary=()
suite() {
  local name=$1
  shift
  echo
  echo "== [test $(($(date +%s) - started))s] $name"
  "$@"
  summary+=("passed: $name")
}
hygiene() {
  cargo fmt --all --check
  cargo clippy --quiet --locked --workspace --all-targets -- -D warnings
  RUSTDOCFLAGS=-Dwarnings cargo doc --quiet --locked --workspace --no-deps
}

suite "hygiene: cargo fmt --check, clippy -D warnings, rustdoc -D warnings" hygiene
suite "tools the suites need (scripts/setup.sh test)" bash scripts/setup.sh test
suite "clippy on the wasm32 target" \
  cargo clippy --quiet --locked -p redistribute-client --target wasm32-unknown-unknown --all-targets -- -D warnings
suite "Rust unit and integration tests (real redis-server per test)" cargo test --locked --workspace
suite "server and chaos binaries" cargo build --quiet --locked --bin redistribute-server --bin redistribute-chaos
suite "chaos: 3 servers on one Redis, 8,000 publishes through kills, restarts, cuts and stalls" \
  target/debug/redistribute-chaos --seed 7 --messages 8000 --fault-every-ms 200 --timeout 300
suite "npm package redistribute-client" bash scripts/build-client.sh
suite "TypeScript declarations of the package" npx tsc -p tests/types
suite "client in headless Chromium (wasm-bindgen-test, real servers)" \
  node tests/harness.mjs -- wasm-pack test --headless --chrome client-wasm
suite "client package in Node.js (ws)" node tests/harness.mjs -- node --test tests/node/
suite "demo app built with Vite on the packed package" bash scripts/build-demo.sh
suite "end-to-end: the demo in headless Chromium across servers, and behind HAProxy on a Redis Cluster" \
  env RD_STATIC=www-demo/dist RD_CLUSTER=1 node tests/harness.mjs -- node --test tests/e2e/

echo
printf '%s\n' "${summary[@]}"
echo "all suites passed in $(($(date +%s) - started))s"
