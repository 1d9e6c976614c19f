#!/usr/bin/env bash
# Logs fan-out benchmark: slipway-logs (Append + Tail over our RPC layer) against Redis pub/sub
# (PUBLISH + SUBSCRIBE), same machine, same run, alternating slipway, redis, slipway, redis; then
# 10,000 idle Tail subscribers and the server's RSS. Prints a Markdown table for BENCHMARKS.md.
#
#   ROUNDS=2 SUBSCRIBERS=1000 DURATION=10 RATE=500 IDLE=10000 scripts/bench-logs.sh
#
# Two fan-out loads per system and round: "max" (batches of 100 lines, up to 4 unacknowledged, held back
# only while the slowest subscriber is MAX_LAG lines behind) gives the delivered lines/s; "paced" (RATE
# lines/s in batches of PACED_BATCH) gives the latency at a fixed load. The idle test runs on a fresh
# slipway-logs, so its RSS is that of the idle subscribers, not what the fan-out runs left behind.
# SCRATCH_PATH: swift build --scratch-path (default .build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=/opt/swift/usr/bin:$PATH
ROUNDS=${ROUNDS:-2}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
CONNECTIONS=${CONNECTIONS:-16}
DURATION=${DURATION:-10}
RATE=${RATE:-500}
PACED_BATCH=${PACED_BATCH:-10}
MAX_LAG=${MAX_LAG:-5000}
IDLE=${IDLE:-10000}
SCRATCH_PATH=${SCRATCH_PATH:-.build}
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! command -v redis-server >/dev/null; then
  echo "installing redis-server..." >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
swift build -c release --scratch-path "$SCRATCH_PATH" --product slipway-logs >&2
swift build -c release --scratch-path "$SCRATCH_PATH" --product slipway-logs-bench >&2
swift build -c release --scratch-path "$SCRATCH_PATH" --product slipway >&2
BIN=$SCRATCH_PATH/release
BENCH=$BIN/slipway-logs-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: up to 30 s for something to listen on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 300); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

LOGS_PORT=$(free_port)
mkdir -p "$WORK/data"
# Every platform port is mutual TLS: the service's identity, and the operator's for the bench.
"$BIN/slipway" pki init --data-dir "$WORK/data" >/dev/null
"$BIN/slipway-logs" --listen "127.0.0.1:$LOGS_PORT" --data-dir "$WORK/data" --log-level warning 2>"$WORK/slipway-logs.log" &
LOGS_PID=$!; pids+=("$LOGS_PID")
REDIS_PORT=$(free_port)
# No persistence; no output-buffer limit for subscribers, so Redis drops no subscriber (the bench counts loss).
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --client-output-buffer-limit 'pubsub 0 0 0' --maxclients 20000 --logfile "$WORK/redis.log" &
REDIS_PID=$!; pids+=("$REDIS_PID")
wait_port "$LOGS_PORT"
wait_port "$REDIS_PORT"
echo "slipway-logs pid $LOGS_PID on $LOGS_PORT, redis-server $(redis-server --version | awk '{print $3}') pid $REDIS_PID on $REDIS_PORT" >&2

COMMON=(--subscribers "$SUBSCRIBERS" --duration "$DURATION" --line-bytes 100 --max-lag "$MAX_LAG")
run() {  # run SYSTEM LOAD ROUND
  local system=$1 load=$2 round=$3 out
  local shape=(--rate 0 --batch 100)
  [ "$load" = paced ] && shape=(--rate "$RATE" --batch "$PACED_BATCH")
  if [ "$system" = slipway ]; then
    out=$(timeout 600 "$BENCH" slipway --address "127.0.0.1:$LOGS_PORT" --data-dir "$WORK/data" --server-pid "$LOGS_PID" --connections "$CONNECTIONS" "${COMMON[@]}" "${shape[@]}")
  else
    out=$(timeout 600 "$BENCH" redis --address "127.0.0.1:$REDIS_PORT" --server-pid "$REDIS_PID" "${COMMON[@]}" "${shape[@]}")
  fi
  echo "round $round $system $load: $out" >&2
  echo "$system $load $round $out" >>"$WORK/results"
}

for round in $(seq 1 "$ROUNDS"); do
  for load in max paced; do
    run slipway "$load" "$round"
    run redis "$load" "$round"
  done
done
kill -0 "$LOGS_PID" 2>/dev/null || { echo "slipway-logs died during the benchmark: $(tail -5 "$WORK/slipway-logs.log")" >&2; exit 1; }
kill "$LOGS_PID"; wait "$LOGS_PID" || true

# Idle subscribers on a fresh slipway-logs.
IDLE_PORT=$(free_port)
mkdir -p "$WORK/idle-data"
"$BIN/slipway" pki init --data-dir "$WORK/idle-data" >/dev/null
"$BIN/slipway-logs" --listen "127.0.0.1:$IDLE_PORT" --data-dir "$WORK/idle-data" --log-level warning 2>"$WORK/slipway-logs-idle.log" &
IDLE_PID=$!; pids+=("$IDLE_PID")
wait_port "$IDLE_PORT"
IDLE_OUT=$(timeout 600 "$BENCH" idle --address "127.0.0.1:$IDLE_PORT" --data-dir "$WORK/idle-data" --server-pid "$IDLE_PID" --subscribers "$IDLE")
echo "idle: $IDLE_OUT" >&2

python3 - "$WORK/results" "$IDLE_OUT" "$ROUNDS" "$SUBSCRIBERS" "$RATE" "$PACED_BATCH" <<'PY'
import json, statistics, sys
rows = [line.split(" ", 3) for line in open(sys.argv[1])]
idle = json.loads(sys.argv[2])
rounds, subscribers, rate, paced_batch = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
res = {}
for system, load, rnd, out in rows:
    res.setdefault((system, load), []).append(json.loads(out))
def med(system, load, field):
    values = [r[field] for r in res[(system, load)] if r[field] is not None]
    return statistics.median(values) if values else float("nan")
def ratio(a, b, digits=2, x=""):
    return f"{a/b:.{digits}f}{x}" if b else "n/a"
def total(system, load, field):
    return sum(r[field] for r in res[(system, load)])
print(f"| measurement ({subscribers:,} subscribers on one stream/channel, 100-byte lines) | slipway-logs | Redis pub/sub | ratio |")
print("|---|---|---|---|")
s, r = med("slipway", "max", "delivered_per_s"), med("redis", "max", "delivered_per_s")
print(f"| max load: delivered lines/s (sum over subscribers) | {s:,.0f} | {r:,.0f} | **{ratio(s, r, x='x')}** |")
s, r = med("slipway", "max", "writer_lines_per_s"), med("redis", "max", "writer_lines_per_s")
print(f"| max load: writer lines/s acknowledged | {s:,.0f} | {r:,.0f} | {ratio(s, r, x='x')} |")
for q in ("p50_ms", "p99_ms"):
    s, r = med("slipway", "max", q), med("redis", "max", q)
    print(f"| max load: {q[:3]} ms, ack to receipt (saturated: queueing up to MAX_LAG lines) | {s:.1f} | {r:.1f} | {ratio(s, r)} |")
paced = f"paced {int(float(rate)):,} lines/s (batches of {paced_batch})"
s, r = med("slipway", "paced", "delivered_per_s"), med("redis", "paced", "delivered_per_s")
print(f"| {paced}: delivered lines/s | {s:,.0f} | {r:,.0f} | {ratio(s, r, x='x')} |")
for q in ("p50_ms", "p99_ms", "p999_ms"):
    s, r = med("slipway", "paced", q), med("redis", "paced", q)
    print(f"| {paced}: {q[:-3]} ms, ack to receipt | {s:.2f} | {r:.2f} | {ratio(s, r)} |")
for q in ("send_p50_ms", "send_p99_ms"):
    s, r = med("slipway", "paced", q), med("redis", "paced", q)
    print(f"| {paced}: {q[5:-3]} ms, batch sent to receipt | {s:.2f} | {r:.2f} | {ratio(s, r)} |")
s, r = med("slipway", "paced", "received_before_ack") / med("slipway", "paced", "delivered"), med("redis", "paced", "received_before_ack") / med("redis", "paced", "delivered")
print(f"| {paced}: share of lines received before the writer's ack | {s:.0%} | {r:.0%} | |")
s = sum(total("slipway", l, "lost") for l in ("max", "paced")); r = sum(total("redis", l, "lost") for l in ("max", "paced"))
print(f"| lost lines (all runs, all subscribers) | {s} | {r} | |")
s = sum(total("slipway", l, "duplicated") + total("slipway", l, "out_of_order") for l in ("max", "paced"))
r = sum(total("redis", l, "duplicated") + total("redis", l, "out_of_order") for l in ("max", "paced"))
print(f"| duplicated or out-of-order lines | {s} | {r} | |")
s = max(r_["server_rss_kib"] for l in ("max", "paced") for r_ in res[("slipway", l)]) / 1024
r = max(r_["server_rss_kib"] for l in ("max", "paced") for r_ in res[("redis", l)]) / 1024
print(f"| server RSS at the end of a fan-out run, MiB (max over runs) | {s:.0f} | {r:.0f} | {ratio(s, r, 1, 'x')} |")
print(f"| {idle['subscribers']:,} idle Tail subscribers ({idle['connections']} connections, {idle['live']:,} live): server RSS MiB | "
      f"{idle['server_rss_kib']/1024:.0f} (before them: {idle['server_rss_before_kib']/1024:.0f}) | | target < 512 |")
errors = sum(r_["errors"] for v in res.values() for r_ in v) + idle["errors"]
print(f"\nmedians of {rounds} alternating rounds; call errors across all runs: {errors}")
PY
