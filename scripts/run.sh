#!/usr/bin/env bash
# Runs a Redistribute server on http://127.0.0.1:${PORT:-8080}/. Without REDISTRIBUTE_REDIS it
# starts a private redis-server on a free loopback port (data in a temporary folder) and stops it
# on exit. Extra arguments go to redistribute-server (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --bin redistribute-server
started_redis=""
cleanup() { [ -n "$started_redis" ] && kill "$started_redis" 2>/dev/null || true; }
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

echo "Redistribute: ws://127.0.0.1:${PORT:-8080}/   health: http://127.0.0.1:${PORT:-8080}/healthz"
./target/release/redistribute-server --listen "127.0.0.1:${PORT:-8080}" "$@" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server; cleanup' EXIT INT TERM
wait $server
