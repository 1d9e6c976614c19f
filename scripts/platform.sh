#!/usr/bin/env bash
# Starts or stops the local platform: the OCI registry (docker-registry, 127.0.0.1:5000, seeded with
# the offline base images) and the seven services on 127.0.0.1:7000-7006; the network service starts
# nginx, the load balancer, on 127.0.0.1:80 and :443 (SLIPWAY_HTTP_LISTEN / SLIPWAY_HTTPS_LISTEN move it).
#   scripts/platform.sh up DATA_DIR BIN_DIR    start the registry and each service, wait until a grpcio health check says SERVING
#   scripts/platform.sh down DATA_DIR          SIGTERM each service and the registry and wait for them to exit
# SLIPWAY_REGISTRY (default 127.0.0.1:5000) moves the registry.
set -euo pipefail
SERVICES=(gateway pipeline builder network cluster certs logs)
REGISTRY=${SLIPWAY_REGISTRY:-127.0.0.1:5000}
cmd=${1:?usage: platform.sh up|down DATA_DIR [BIN_DIR]}
data=${2:?data directory}
mkdir -p "$data/run" "$data/logs"

stop() {
  for s in "${SERVICES[@]}" registry; do
    pidfile="$data/run/$s.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && { echo "$s did not stop in 10 s; killing it"; kill -KILL "$pid"; }
    fi
    rm -f "$pidfile"
  done
}

case "$cmd" in
  down)
    stop
    # The apps the cluster runs outlive its service (by design); down stops them too.
    if [ -d "$data/cluster/runc" ] && command -v runc >/dev/null; then
      for instance in $(runc --root "$data/cluster/runc" list -q 2>/dev/null); do
        runc --root "$data/cluster/runc" delete --force "$instance" >/dev/null 2>&1 || true
      done
    fi
    # So does the load balancer (nginx keeps serving while the network service restarts).
    if [ -f "$data/network/nginx/nginx.pid" ]; then
      pid=$(cat "$data/network/nginx/nginx.pid")
      if kill -0 "$pid" 2>/dev/null; then
        kill -QUIT "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      fi
    fi
    echo "platform stopped"
    ;;
  up)
    bin=${3:?binary directory}
    stop
    scripts/install-deps.sh demo >/dev/null
    # The platform registry: images the builder pushes and the cluster pulls.
    mkdir -p "$data/registry"
    cat >"$data/registry/config.yml" <<YML
version: 0.1
log: { level: warn }
storage: { filesystem: { rootdirectory: $(cd "$data" && pwd)/registry/data }, delete: { enabled: true } }
http: { addr: $REGISTRY }
YML
    docker-registry serve "$data/registry/config.yml" >>"$data/logs/registry.log" 2>&1 &
    echo $! >"$data/run/registry.pid"
    for _ in $(seq 1 100); do curl -sf "http://$REGISTRY/v2/" >/dev/null && break; sleep 0.1; done
    curl -sf "http://$REGISTRY/v2/" >/dev/null || { echo "error: docker-registry did not start on $REGISTRY (see $data/logs/registry.log)" >&2; exit 1; }
    SLIPWAY_SEED_STORAGE="$data/seed" scripts/seed-base-images.sh "$REGISTRY"
    for s in "${SERVICES[@]}"; do
      extra=()
      [ "$s" = builder ] && extra=(--builder-registry "$REGISTRY")
      [ "$s" = network ] && extra=(--network-http-listen "${SLIPWAY_HTTP_LISTEN:-127.0.0.1:80}" --network-https-listen "${SLIPWAY_HTTPS_LISTEN:-127.0.0.1:443}")
      "$bin/slipway-$s" --data-dir "$data" "${extra[@]}" >>"$data/logs/$s.log" 2>&1 &
      echo $! >"$data/run/$s.pid"
    done
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
print(f"{'registry':<18} {os.environ.get('SLIPWAY_REGISTRY', '127.0.0.1:5000'):<16} docker-registry (OCI distribution)")
print(f"\ndata directory: {os.path.abspath(data)} (logs in {os.path.join(data, 'logs')})")
print("stop with: make down")
sys.exit(1 if failed else 0)
PY
    ;;
  *) echo "usage: platform.sh up|down DATA_DIR [BIN_DIR]" >&2; exit 2 ;;
esac
