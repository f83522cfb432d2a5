#!/usr/bin/env bash
# Runs the benchmark scenarios of BENCHMARKS.md with ws-gateway-bench, each
# against a freshly spawned gateway (or Socket.IO peer) and, where it
# applies, the raw-TCP baseline in the same run. Prints each scenario's
# summary and appends its JSON line to target/bench/results.jsonl.
#
#   scripts/bench.sh            # every /ws scenario except the 10-minute leak check
#   scripts/bench.sh leak       # the 10-minute steady broadcast (RSS over time)
#   scripts/bench.sh sio        # every Socket.IO, SSE and peer scenario
#   scripts/bench.sh NAME...    # only the named scenarios
#
# BENCH_ARGS is appended to every run, e.g. BENCH_ARGS="--drain 30s".
# Scenarios that run several servers back to back (compare-1k-10, sio-*)
# end with a table of their runs side by side.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --workspace --bins
mkdir -p target/bench
out=target/bench/results.jsonl
peer_dir=benches/peers/socketio
read -r -a extra <<<"${BENCH_ARGS:-}"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
redis_pid=$!
group=$(mktemp)
trap 'kill $redis_pid 2>/dev/null || true; rm -f "$group" "$group.log"' EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The Socket.IO peer's packages, exactly as package-lock.json pins them.
peer_ready() {
  command -v node >/dev/null || { echo "node (18 or later) is needed for the Socket.IO peer" >&2; exit 1; }
  [ -d "$peer_dir/node_modules" ] || (cd "$peer_dir" && npm ci --no-audit --no-fund)
}

# tool NAME ARGS...: one run; its JSON line goes to $out and to $group.
tool() {
  local name=$1; shift
  echo "== $name"
  ./target/release/ws-gateway-bench run --redis "redis://127.0.0.1:$port" --label "$name" \
    "$@" "${extra[@]}" 2>&1 | tee "$group.log" | grep --line-buffered -v '^{'
  grep '^{' "$group.log" | tee -a "$group" >>"$out"
}
bench() { local name=$1; shift; tool "$name" --spawn target/release/ws-gateway "$@"; }
peer() { peer_ready; local name=$1; shift; tool "$name" --spawn-peer "$peer_dir/server.mjs" "$@"; }

# The runs of one scenario side by side, each against the first.
compare() {
  python3 - "$group" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if len(runs) < 2:
    sys.exit(0)
base = runs[0]["gateway"]["deliveries_per_server_cpu_sec"] or 0
print(f"\n{'run':<28} {'deliv/CPU-s':>12} {'vs first':>8} {'lost':>6} {'p50 ms':>8} {'p99 ms':>8} {'idle KiB/c':>10} {'peak KiB/c':>10}")
for r in runs:
    g = r["gateway"]
    per = g["deliveries_per_server_cpu_sec"]
    rel = f"{per / base:.3f}x" if base else "-"
    print(f"{r['label']:<28} {per:>12.0f} {rel:>8} {g['lost']:>6} {g['latency_ms']['p50']:>8.2f} "
          f"{g['latency_ms']['p99']:>8.2f} {g['idle_kib_per_connection']:>10.2f} {g['peak_kib_per_connection']:>10.2f}")
EOF
  : >"$group"
}

run() {
  : >"$group"
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

    # Socket.IO and SSE (BENCHMARKS.md, "Socket.IO, SSE and the Socket.IO
    # peer"). No raw baseline: these compare the transports and the peer
    # with each other, in one sitting.
    ws-1k-10)       bench ws-1k-10 --connections 1000 --rate 10 --duration 20s ;;
    sio-1k-10)
      bench sio-1k-10/gateway --transport socketio --connections 1000 --rate 10 --duration 20s
      peer  sio-1k-10/peer    --connections 1000 --rate 10 --duration 20s
      compare ;;
    # The issue's one-sitting comparison: /ws, /socket.io/, the peer (and /sse).
    compare-1k-10)
      bench compare-1k-10/ws          --transport ws       --connections 1000 --rate 10 --duration 20s
      bench compare-1k-10/socketio    --transport socketio --connections 1000 --rate 10 --duration 20s
      peer  compare-1k-10/peer        --connections 1000 --rate 10 --duration 20s
      bench compare-1k-10/sse         --transport sse      --connections 1000 --rate 10 --duration 20s
      compare ;;
    sio-10k-10)
      bench sio-10k-10/gateway --transport socketio --connections 10000 --rate 10 --duration 20s
      peer  sio-10k-10/peer    --connections 10000 --rate 10 --duration 20s
      compare ;;
    # The peer is left out: at 10k x 10/s it already saturates its core.
    sio-10k-100)    bench sio-10k-100 --transport socketio --connections 10000 --rate 100 --duration 20s ;;
    sio-user-10k-1k) bench sio-user-10k-1k --transport socketio --connections 10000 --publish user --rate 1000 --duration 20s ;;
    idle-sio-10k)
      bench idle-sio-10k/gateway --transport socketio --connections 10000 --publish none --idle 5s
      peer  idle-sio-10k/peer    --connections 10000 --publish none --idle 5s
      compare ;;
    sse-idle-10k)   bench sse-idle-10k --transport sse --connections 10000 --publish none --idle 5s ;;
    sse-1k-10)      bench sse-1k-10 --transport sse --connections 1000 --rate 10 --duration 20s ;;
    sse-10k-10)     bench sse-10k-10 --transport sse --connections 10000 --rate 10 --duration 20s ;;
    *) echo "unknown scenario $1" >&2; exit 2 ;;
  esac
}

if [ $# -eq 0 ]; then
  set -- idle-1k idle-10k idle-17k broadcast-1k-10 broadcast-2k-10 broadcast-5k-10 \
         broadcast-10k-10 broadcast-10k-100 user-10k-1k user-10k-10k
elif [ "$*" = sio ]; then
  set -- compare-1k-10 sio-10k-10 sio-10k-100 sio-user-10k-1k idle-sio-10k sse-idle-10k sse-1k-10 sse-10k-10
fi
for s in "$@"; do run "$s"; done
