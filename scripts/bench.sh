#!/usr/bin/env bash
# Runs the benchmark scenarios of BENCHMARKS.md with ws-gateway-bench, each
# against a freshly spawned gateway and (where it applies) the raw-TCP
# baseline in the same run. Prints each scenario's summary and appends its
# JSON line to target/bench/results.jsonl.
#
#   scripts/bench.sh            # every scenario except the 10-minute leak check
#   scripts/bench.sh leak       # the 10-minute steady broadcast (RSS over time)
#   scripts/bench.sh NAME...    # only the named scenarios
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --workspace --bins
mkdir -p target/bench
out=target/bench/results.jsonl

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

bench() {
  local name=$1; shift
  echo "== $name"
  ./target/release/ws-gateway-bench run --spawn target/release/ws-gateway \
    --redis "redis://127.0.0.1:$port" --label "$name" "$@" 2>&1 \
    | tee >(grep '^{' >>"$out") | grep -v '^{'
}

run() {
  case $1 in
    idle-1k)        bench idle-1k  --connections 1000  --publish none --idle 5s ;;
    idle-10k)       bench idle-10k --connections 10000 --publish none --idle 5s ;;
    idle-17k)       bench idle-17k --connections 17000 --publish none --idle 5s ;;
    broadcast-1k-10)   bench broadcast-1k-10   --connections 1000  --rate 10  --duration 20s --baseline ;;
    broadcast-2k-10)   bench broadcast-2k-10   --connections 2000  --rate 10  --duration 20s --baseline ;;
    broadcast-5k-10)   bench broadcast-5k-10   --connections 5000  --rate 10  --duration 20s --baseline ;;
    broadcast-10k-10)  bench broadcast-10k-10  --connections 10000 --rate 10  --duration 20s --baseline ;;
    broadcast-10k-100) bench broadcast-10k-100 --connections 10000 --rate 100 --duration 20s --baseline ;;
    user-10k-1k)    bench user-10k-1k  --connections 10000 --publish user --rate 1000  --duration 20s ;;
    user-10k-10k)   bench user-10k-10k --connections 10000 --publish user --rate 10000 --duration 20s ;;
    leak)           bench leak --connections 10000 --rate 100 --duration 600s --rss-every 60s ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

if [ $# -eq 0 ]; then
  set -- idle-1k idle-10k idle-17k broadcast-1k-10 broadcast-2k-10 broadcast-5k-10 \
         broadcast-10k-10 broadcast-10k-100 user-10k-1k user-10k-10k
fi
for s in "$@"; do run "$s"; done
