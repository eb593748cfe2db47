#!/usr/bin/env bash
# Runs every test suite. Prerequisites (`bash .ci/run` installs them on a fresh machine): a Rust
# toolchain with the wasm32 target, wasm-pack and wasm-bindgen-cli, redis-server, Chromium and
# chromedriver, and the root npm dependencies (`npm install`).
#
# Each Rust integration test starts its own redis-server; the browser, Node and end-to-end suites
# run under tests/harness.mjs, which starts Redis and two servers on free loopback ports and
# stops them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in redis-server wasm-pack chromedriver node; do
  command -v "$tool" >/dev/null || { echo "$tool not found: run 'bash .ci/run' to install what the tests need" >&2; exit 1; }
done
[ -d node_modules ] || { echo "node_modules missing: run 'npm install'" >&2; exit 1; }

summary=()
suite() { local name=$1; shift; echo; echo "== $name"; "$@"; summary+=("passed: $name"); }

suite "Rust unit and integration tests (real redis-server per test)" cargo test --workspace --locked
suite "server binary for the browser suites" cargo build --locked --bin redistribute-server
suite "npm package redistribute-client" bash scripts/build-client.sh
suite "TypeScript declarations of the package" npx tsc -p tests/types
suite "client in headless Chromium (wasm-bindgen-test, real servers)" \
  node tests/harness.mjs -- wasm-pack test --headless --chrome client-wasm
suite "client package in Node.js (ws)" node tests/harness.mjs -- node --test tests/node/
suite "demo app built with Vite on the packed package" bash scripts/build-demo.sh
suite "end-to-end: the demo in headless Chromium across two servers" \
  env RD_STATIC=www-demo/dist node tests/harness.mjs -- node --test tests/e2e/

echo
printf '%s\n' "${summary[@]}"
