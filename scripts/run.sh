#!/usr/bin/env bash
# Runs Redistribute with its demo chat on http://127.0.0.1:${PORT:-8080}/. Builds the client
# package, the demo and the server, then serves both. Without REDISTRIBUTE_REDIS the server uses
# its embedded memory engine (nothing else to install or start; one instance; messages live as
# long as the process). Set REDISTRIBUTE_REDIS=redis://HOST:PORT to use Redis. Extra arguments go
# to redistribute-server (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d node_modules ] || npm install --no-audit --no-fund --loglevel=error
bash scripts/build-client.sh
bash scripts/build-demo.sh
cargo build --release --locked --bin redistribute-server

echo
echo "Redistribute demo: http://127.0.0.1:${PORT:-8080}/   (WebSocket on the same URL, health at /healthz)"
echo "Press Ctrl-C to stop."
exec ./target/release/redistribute-server --listen "127.0.0.1:${PORT:-8080}" --static www-demo/dist "$@"
