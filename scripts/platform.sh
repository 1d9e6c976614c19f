#!/usr/bin/env bash
# Starts or stops the local platform: the seven services on 127.0.0.1:7000-7006.
#   scripts/platform.sh up DATA_DIR BIN_DIR    start each service, wait until a grpcio health check says SERVING
#   scripts/platform.sh down DATA_DIR          SIGTERM each service and wait for it to exit
set -euo pipefail
SERVICES=(gateway pipeline builder network cluster certs logs)
cmd=${1:?usage: platform.sh up|down DATA_DIR [BIN_DIR]}
data=${2:?data directory}
mkdir -p "$data/run" "$data/logs"

stop() {
  for s in "${SERVICES[@]}"; do
    pidfile="$data/run/$s.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { echo "slipway-$s did not stop in 10 s; killing it"; kill -KILL "$pid"; }
    fi
    rm -f "$pidfile"
  done
}

case "$cmd" in
  down)
    stop
    echo "platform stopped"
    ;;
  up)
    bin=${3:?binary directory}
    stop
    for s in "${SERVICES[@]}"; do
      "$bin/slipway-$s" --data-dir "$data" >>"$data/logs/$s.log" 2>&1 &
      echo $! >"$data/run/$s.pid"
    done
    scripts/install-deps.sh demo >/dev/null
    python3 - "$data" "${SERVICES[@]}" <<'PY'
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

data, services = sys.argv[1], sys.argv[2:]
failed = False
print(f"{'service':<18} {'address':<16} health (grpcio)")
for i, name in enumerate(services):
    address = os.environ.get(f"SLIPWAY_{name.upper()}_LISTEN", f"127.0.0.1:{7000 + i}")
    deadline = time.monotonic() + 30
    status = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status)
                break
            except grpc.RpcError as error:
                status = f"{error.code().name}: {error.details()}"
                time.sleep(0.2)
    failed |= status != "SERVING"
    print(f"slipway-{name:<10} {address:<16} {status}")
print(f"\ndata directory: {os.path.abspath(data)} (logs in {os.path.join(data, 'logs')})")
print("stop with: make down")
sys.exit(1 if failed else 0)
PY
    ;;
  *) echo "usage: platform.sh up|down DATA_DIR [BIN_DIR]" >&2; exit 2 ;;
esac
