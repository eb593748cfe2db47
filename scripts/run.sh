#!/usr/bin/env bash
# Runs Redistribute with its demo chat on http://127.0.0.1:${PORT:-8080}/. Builds the client
# package, the demo and the server; without REDISTRIBUTE_REDIS it starts a private redis-server on
# a free loopback port (data in a temporary folder) and stops it on exit. Extra arguments go to
# redistribute-server (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

[ -d node_modules ] || npm install --no-audit --no-fund --loglevel=error
bash scripts/build-client.sh
bash scripts/build-demo.sh
cargo build --release --locked --bin redistribute-server

started_redis=""
server=""
cleanup() {
  [ -n "$server" ] && kill -TERM "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ -n "$started_redis" ] && kill "$started_redis" 2>/dev/null
  true
}
trap cleanup EXIT INT TERM

if [ -z "${REDISTRIBUTE_REDIS:-}" ]; then
  command -v redis-server >/dev/null || { echo "redis-server not found: install it (apt-get install redis-server) or set REDISTRIBUTE_REDIS" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  dir=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes --dir "$dir" >"$dir/redis.log" 2>&1 &
  started_redis=$!
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export REDISTRIBUTE_REDIS="redis://127.0.0.1:$port"
  echo "started redis-server on 127.0.0.1:$port (data in $dir)"
fi

./target/release/redistribute-server --listen "127.0.0.1:${PORT:-8080}" --static www-demo/dist "$@" &
server=$!
echo
echo "Redistribute demo: http://127.0.0.1:${PORT:-8080}/   (WebSocket on the same URL, health at /healthz)"
echo "Press Ctrl-C to stop."
wait "$server"
