#!/usr/bin/env bash
# RPC benchmark: slipway-echo against the grpc-swift-2 anchor (Benchmarks/grpc-swift-echo), same machine, same run,
# alternating A B A B with h2load. Prints a Markdown table of ratios for BENCHMARKS.md.
#   ROUNDS=3 UNARY_N=200000 STREAM_N=1000000 scripts/bench-rpc.sh
#   TLS=1 scripts/bench-rpc.sh    both servers over TLS (ALPN h2, a P-256 certificate), h2load over https;
#                                 our plaintext server runs beside them for the TLS/plaintext ratio
# ANCHOR_BIN: a built EchoAnchor (default: build a copy of Benchmarks/grpc-swift-echo in /tmp, ~7 min once).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=/opt/swift/usr/bin:$PATH
ROUNDS=${ROUNDS:-3}
UNARY_N=${UNARY_N:-200000}
STREAM_N=${STREAM_N:-1000000}
WORK=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

scripts/install-deps.sh test >/dev/null
if [ -z "${ANCHOR_BIN:-}" ]; then
  ANCHOR_BIN=/tmp/grpc-swift-echo/.build/release/EchoAnchor
  if [ ! -x "$ANCHOR_BIN" ] || [ Benchmarks/grpc-swift-echo/Sources/EchoAnchor/main.swift -nt "$ANCHOR_BIN" ]; then
    echo "building the grpc-swift-2 anchor (once, several minutes)..." >&2
    # Built in a copy outside the repository (sources only), so its .build/ and Package.resolved stay out of the tree.
    mkdir -p /tmp/grpc-swift-echo && rm -rf /tmp/grpc-swift-echo/Sources
    cp -r Benchmarks/grpc-swift-echo/Package.swift Benchmarks/grpc-swift-echo/Sources /tmp/grpc-swift-echo/
    (cd /tmp/grpc-swift-echo && swift build -c release >&2)
  fi
fi
swift build -c release --product slipway-echo >&2
OURS=.build/release/slipway-echo

TLS=${TLS:-0}
SCHEME=http
if [ "$TLS" = 1 ]; then
  SCHEME=https
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  "$ANCHOR_BIN" 50051 "$WORK/cert.pem" "$WORK/key.pem" >/dev/null 2>&1 & pids+=($!)
  "$OURS" --listen 127.0.0.1:50052 --tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" >/dev/null 2>&1 & pids+=($!)
  # Our plaintext server, for the cost of TLS itself.
  "$OURS" --listen 127.0.0.1:50053 >/dev/null 2>&1 & pids+=($!)
else
  "$ANCHOR_BIN" 50051 >/dev/null 2>&1 & pids+=($!)
  "$OURS" --listen 127.0.0.1:50052 >/dev/null 2>&1 & pids+=($!)
  "$OURS" --listen 127.0.0.1:50053 --unary-handlers async >/dev/null 2>&1 & pids+=($!)
fi
sleep 2

python3 -c "p=b'x'*100; open('$WORK/unary.bin','wb').write(b'\0'+len(p).to_bytes(4,'big')+p)"
python3 -c "q=($STREAM_N).to_bytes(4,'big'); open('$WORK/stream.bin','wb').write(b'\0'+len(q).to_bytes(4,'big')+q)"
H=(-H 'content-type: application/grpc' -H 'te: trailers')

# The URL scheme of a port: with TLS=1, 50053 is our plaintext reference.
scheme() { if [ "$TLS" = 1 ] && [ "$1" != 50053 ]; then echo https; else echo http; fi; }

# unary PORT C M -> "req/s p50_ms p99_ms errors"
unary() {
  local log="$WORK/log-$1-$2-$3"
  local out
  local n=$UNARY_N
  [ "$2" = 1 ] && n=$((UNARY_N / 10))  # one request at a time: fewer requests, same statistics
  out=$(h2load -n "$n" -c "$2" -m "$3" -t 1 -d "$WORK/unary.bin" "${H[@]}" --log-file="$log" "$(scheme "$1")://127.0.0.1:$1/bench.Echo/Unary")
  local rps errors
  rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  errors=$(sed -n 's/^requests: .* \([0-9]*\) errored.*/\1/p' <<<"$out")
  python3 - "$log" "$rps" "$errors" <<'PY'
import sys
times = sorted(int(line.split("\t")[2]) for line in open(sys.argv[1]) if line.strip())
pct = lambda p: times[min(len(times) - 1, int(len(times) * p))] / 1000
print(f"{float(sys.argv[2]):.0f} {pct(0.50):.3f} {pct(0.99):.3f} {sys.argv[3]}")
PY
}

# stream PORT -> messages/s
stream() {
  local out secs
  out=$(h2load -n 1 -c 1 -m 1 -t 1 -d "$WORK/stream.bin" "${H[@]}" "$(scheme "$1")://127.0.0.1:$1/bench.Echo/Stream")
  secs=$(sed -n 's/^finished in \([0-9.]*\)\(m\?s\),.*/\1 \2/p' <<<"$out")
  python3 -c "v,u='$secs'.split(); s=float(v)/(1000 if u=='ms' else 1); print(f'{$STREAM_N/s:.0f}')"
}

declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for target in anchor:50051 ours:50052 ours-async:50053; do
    name=${target%%:*}; port=${target##*:}
    results[$name-c16-$round]=$(unary "$port" 16 16)
    results[$name-c1-$round]=$(unary "$port" 1 1)
    results[$name-stream-$round]=$(stream "$port")
    label=$name; [ "$TLS" = 1 ] && [ "$name" = ours-async ] && label=ours-plaintext
    echo "round $round $label: unary c16m16 ${results[$name-c16-$round]} | c1m1 ${results[$name-c1-$round]} | stream ${results[$name-stream-$round]} msg/s" >&2
  done
done

python3 - "$ROUNDS" <<PY
import statistics, sys
rounds = int(sys.argv[1])
raw = {$(for k in "${!results[@]}"; do printf '"%s": "%s",' "$k" "${results[$k]}"; done)}
def med(name, kind, field):
    return statistics.median(float(raw[f"{name}-{kind}-{r}"].split()[field]) for r in range(1, rounds + 1))
tls = "$TLS" == "1"
if tls:
    print("| measurement | grpc-swift-2 anchor, TLS | slipway, TLS | ratio | slipway, plaintext | TLS / plaintext |")
else:
    print("| measurement | grpc-swift-2 anchor | slipway (event-loop unary) | ratio | slipway (async unary) | ratio |")
print("|---|---|---|---|---|---|")
for kind, label in [("c16", "unary -c16 -m16"), ("c1", "unary -c1 -m1")]:
    a, o, s = (med(n, kind, 0) for n in ("anchor", "ours", "ours-async"))
    print(f"| {label}: req/s | {a:,.0f} | {o:,.0f} | **{o/a:.1f}x** | {s:,.0f} | {(o/s if tls else s/a):.2f}x |")
    a, o, s = (med(n, kind, 2) for n in ("anchor", "ours", "ours-async"))
    print(f"| {label}: p99 ms | {a:.2f} | {o:.2f} | {o/a:.2f} | {s:.2f} | {(o/s if tls else s/a):.2f} |")
    a, o, s = (med(n, kind, 1) for n in ("anchor", "ours", "ours-async"))
    print(f"| {label}: p50 ms | {a:.2f} | {o:.2f} | {o/a:.2f} | {s:.2f} | {(o/s if tls else s/a):.2f} |")
a, o, s = (med(n, "stream", 0) for n in ("anchor", "ours", "ours-async"))
print(f"| server stream: 100-byte messages/s | {a:,.0f} | {o:,.0f} | **{o/a:.1f}x** | {s:,.0f} | {(o/s if tls else s/a):.2f}x |")
errors = sum(int(raw[k].split()[3] or 0) for k in raw if "stream" not in k)
print(f"\n{'TLS (ALPN h2) on both; ' if tls else ''}medians of {rounds} alternating rounds; errored requests across all unary runs: {errors}")
PY
