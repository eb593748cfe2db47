#!/usr/bin/env bash
# The benchmark of docs/BENCHMARKS.md: every scenario against a bare tokio-tungstenite fan-out
# server (redistribute-baseline) in the same run, as the median of RUNS runs (default 3).
#
#   bash scripts/bench.sh            # Redis engine (starts its own redis-server on a free port)
#   bash scripts/bench.sh memory     # embedded memory engine
#   bash scripts/bench.sh cluster    # a Redis Cluster of 3 masters and 3 replicas it starts
#   RUNS=5 bash scripts/bench.sh
#   QUICK=1 bash scripts/bench.sh …  # only the throughput scenarios (fan-out, 100 channels, 50 publishers)
#
# Everything talks to loopback, starts on free ports and is stopped by PID at the end. It takes
# about 8 minutes on 2 cores (most of it connecting and publishing); needs redis-server for the
# Redis engine.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-redis}
runs=${RUNS:-3}
cargo build --quiet --release --locked -p redistribute --bins
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A free port whose cluster bus port (+10000) is free too.
cluster_port() {
  python3 -c '
import socket
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
    if p < 55535:
        b = socket.socket()
        try:
            b.bind(("127.0.0.1", p + 10000)); print(p); break
        except OSError:
            pass'
}
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }

storage=()
if [ "$engine" = redis ]; then
  redis_port=$(free_port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 &
  pids+=($!)
  wait_port "$redis_port"
  storage=(--redis "redis://127.0.0.1:$redis_port")
elif [ "$engine" = cluster ]; then
  nodes=()
  for _ in 1 2 3 4 5 6; do
    node=$(cluster_port)
    redis-server --port "$node" --bind 127.0.0.1 --save '' --appendonly no --cluster-enabled yes \
      --cluster-config-file "nodes-$node.conf" --dir "$work" --repl-diskless-sync-delay 0 > "$work/redis-$node.log" 2>&1 &
    pids+=($!)
    nodes+=("$node")
  done
  for node in "${nodes[@]}"; do wait_port "$node"; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-replicas 1 --cluster-yes > /dev/null
  for _ in $(seq 100); do redis-cli -p "${nodes[0]}" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
  storage=()
  for node in "${nodes[@]:0:3}"; do storage+=(--redis-cluster "redis://127.0.0.1:$node"); done
  redis_port=${nodes[0]}
fi
port=$(free_port)
# Limits off: the load tool publishes as fast as it can from one address.
"$bin/redistribute-server" --listen "127.0.0.1:$port" "${storage[@]}" --max-connections 20000 \
  --max-connections-per-ip 20000 --request-rate 0 --publish-rate 0 > "$work/server.log" 2>&1 &
server=$!
pids+=("$server")
wait_port "$port"
url="ws://127.0.0.1:$port/"

scenario() {
  local name=$1
  shift
  echo
  echo "== $name ($engine engine, median of $runs runs)"
  "$bin/redistribute-load" --baseline --runs "$runs" --url "$url" "$@" 2>/dev/null | sed -n '/^-- median/,$p;/^-- ratio/,$p' | awk '!seen[$0]++'
}

quick=${QUICK:-}
# First, while the memory engine holds no data yet: RSS is then what the connections cost.
[ -n "$quick" ] || scenario "10,000 idle subscribers: server RSS" --subscribers 10000 --publishers 0 --seconds 1 --server-pid "$server"
scenario "1 channel x 1,000 subscribers, 1 publisher at max rate" --subscribers 1000 --seconds 8
[ -n "$quick" ] || scenario "1 channel x 1,000 subscribers, 1,000 msg/s for 10 s" --subscribers 1000 --rate 1000 --seconds 10
[ -n "$quick" ] || scenario "1 channel x 1,000 subscribers, 50 msg/s (latency)" --subscribers 1000 --rate 50 --seconds 10
scenario "100 channels x 10 subscribers, 10 publishers" --subscribers 1000 --channels 100 --publishers 10 --seconds 5
scenario "1 subscriber, 50 publishers" --subscribers 1 --publishers 50 --seconds 5
if [ -z "$quick" ]; then
  echo
  echo "== catch-up replay: 100,000 entries from offset 0 ($engine engine)"
  "$bin/redistribute-load" --url "$url" --catch-up 100000 --runs "$runs" | tail -1
fi
if [ "$engine" = redis ] && [ -z "$quick" ]; then
  echo
  echo "== resume after the server's Redis connections are cut, 10,000 channels followed"
  "$bin/redistribute-load" --url "$url" --resume 10000 --redis "redis://127.0.0.1:$redis_port" --runs "$runs" | tail -1
fi
if [ "$engine" = cluster ]; then
  echo
  echo "== Redis connections of the server (CLIENT LIST on every master)"
  for node in "${nodes[@]}"; do
    if redis-cli -p "$node" info replication | grep -q role:master; then
      # Not counted: replicas (flags=S) and this redis-cli (cmd=client).
      echo "  master :$node: $(redis-cli -p "$node" client list | grep -v 'flags=S' | grep -vc 'cmd=client') connections"
    fi
  done
fi
if [ "$engine" = redis ] && [ -z "$quick" ]; then
  echo
  echo "== redis-benchmark -c 50 -P 32 XADD (the 50-publisher goal is half of this)"
  redis-benchmark -p "$redis_port" -c 50 -P 32 -n 2000000 -q XADD rb:bench MAXLEN '~' 100000 '*' f v 2>&1 |
    tr '\r' '\n' | grep -v '^$' | tail -1
fi
