#!/usr/bin/env bash
# RPC regression check: this working tree's slipway-echo against another revision's, side by side on
# the same machine in the same run. Builds REV's slipway-echo (release) in a git worktree under /tmp,
# starts both (event-loop and async unary handlers), then loads them in turn with h2load, PAIRS
# times, and prints for each load the median (min-max) of this/REV whole-run wall time: below 1 is
# faster, above 1 slower. A machine's speed drifts; ratios pair by pair do not.
#   scripts/bench-rpc-ab.sh REV [PAIRS]        e.g. scripts/bench-rpc-ab.sh d622721 15
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH=/opt/swift/usr/bin:$PATH
REV=${1:?usage: scripts/bench-rpc-ab.sh REV [PAIRS]}
PAIRS=${2:-15}
OLD=/tmp/slipway-ab-$(git rev-parse --short "$REV")
WORK=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT

scripts/install-deps.sh test >/dev/null
[ -d "$OLD" ] || git worktree add -f "$OLD" "$REV" >&2
cp Package.resolved "$OLD/" 2>/dev/null || true
echo "building slipway-echo at $REV and here (release)..." >&2
(cd "$OLD" && swift build -c release --product slipway-echo >&2)
swift build -c release --product slipway-echo >&2

"$OLD/.build/release/slipway-echo" --listen 127.0.0.1:50081 >/dev/null 2>&1 & pids+=($!)
.build/release/slipway-echo --listen 127.0.0.1:50082 >/dev/null 2>&1 & pids+=($!)
"$OLD/.build/release/slipway-echo" --listen 127.0.0.1:50083 --unary-handlers async >/dev/null 2>&1 & pids+=($!)
.build/release/slipway-echo --listen 127.0.0.1:50084 --unary-handlers async >/dev/null 2>&1 & pids+=($!)
sleep 2

python3 - "$WORK" "$PAIRS" "$REV" <<'PY'
import statistics, subprocess, sys, time

work, pairs, rev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
payload = b"x" * 100
open(f"{work}/unary.bin", "wb").write(b"\0" + len(payload).to_bytes(4, "big") + payload)
count = (500000).to_bytes(4, "big")
open(f"{work}/stream.bin", "wb").write(b"\0" + len(count).to_bytes(4, "big") + count)
headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]

def h2load(port, path, args, body):
    command = ["h2load", *args, "-t", "1", "-d", f"{work}/{body}", *headers, f"http://127.0.0.1:{port}{path}"]
    start = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    elapsed = time.monotonic() - start
    if " 0 errored" not in out or " 0 failed" not in out:
        raise SystemExit(f"errors in {' '.join(command)}:\n{out}")
    return elapsed

loads = [
    ("unary -c16 -m16, event-loop handlers", 50081, 50082, "/bench.Echo/Unary", ["-n", "100000", "-c", "16", "-m", "16"], "unary.bin"),
    ("unary -c16 -m16, async handlers", 50083, 50084, "/bench.Echo/Unary", ["-n", "100000", "-c", "16", "-m", "16"], "unary.bin"),
    ("unary -c1 -m1, event-loop handlers", 50081, 50082, "/bench.Echo/Unary", ["-n", "10000", "-c", "1", "-m", "1"], "unary.bin"),
    ("one server stream of 500,000 messages", 50081, 50082, "/bench.Echo/Stream", ["-n", "1", "-c", "1", "-m", "1"], "stream.bin"),
]
print(f"| load | pairs | this / {rev}: median (min-max) |")
print("|---|---|---|")
for name, old, new, path, args, body in loads:
    h2load(old, path, args, body), h2load(new, path, args, body)  # warm-up
    ratios = []
    for _ in range(pairs):
        b = h2load(old, path, args, body)
        a = h2load(new, path, args, body)
        ratios.append(a / b)
    print(f"| {name} | {pairs} | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)
PY
