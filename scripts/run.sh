#!/usr/bin/env bash
# `npm start`: runs Redistribute with its demo chat on http://127.0.0.1:${PORT:-8080}/. Installs
# what the build lacks (scripts/setup.sh build), builds the client package, the demo and the
# server, then serves both. Without REDISTRIBUTE_REDIS the server uses its embedded memory engine
# (nothing else to install or start; one instance; messages live as long as the process). Set
# REDISTRIBUTE_REDIS=redis://HOST:PORT to use Redis. Extra arguments go to redistribute-server
# (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
started=$(date +%s)
step() { echo "== [start $(($(date +%s) - started))s] $*"; }

step "tools (scripts/setup.sh build)"
bash scripts/setup.sh build
step "client package (scripts/build-client.sh)"
bash scripts/build-client.sh
step "demo app (scripts/build-demo.sh)"
bash scripts/build-demo.sh
step "server (cargo build --profile demo: lightly optimised; deployments use --release)"
cargo build --quiet --profile demo --locked --bin redistribute-server
step "ready"

echo
echo "Redistribute demo: http://127.0.0.1:${PORT:-8080}/   (WebSocket on the same URL, health at /healthz)"
echo "Press Ctrl-C to stop."
exec ./target/demo/redistribute-server --listen "127.0.0.1:${PORT:-8080}" --static www-demo/dist "$@"
