#!/usr/bin/env bash
# Runs every test suite. Prerequisites: a Rust toolchain and redis-server on PATH
# (`bash .ci/run` installs what is missing, then runs this). Each Redis-backed test starts its own
# redis-server on a free loopback port and stops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "redis-server not found: run 'bash .ci/run' or install it (apt-get install redis-server)" >&2; exit 1; }

echo "== Rust: unit and integration tests (real redis-server per test)"
cargo test --workspace --locked
