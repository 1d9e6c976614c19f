#!/usr/bin/env python3
"""Cluster benchmark: time from the Deploy call to ready instances, for examples/hello already in the
registry, through the real slipway-cluster (local driver: skopeo, umoci, runc).

    python3 scripts/bench-cluster.py [BIN_DIR] [ROUNDS]     (default .build/release, 10 rounds)
    SLIPWAY_CLUSTER_FLAGS="--cluster-isolation off" ...       (flags for slipway-cluster: the same without isolation)

Per round, a Deploy of one replica (readiness: GET /health), then a Deploy of 10 replicas replacing
it. The first Deploy of all pulls the image into the cluster's layout (reported apart as "cold");
later ones find its layers there. A Deploy returns once every new instance is ready and the old ones
have stopped (examples/hello stops on SIGTERM).
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(local.ROOT, ".build", "release")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
(pb, pb_grpc), = local.protos("slipway/cluster/v1/cluster.proto")

data = tempfile.mkdtemp(prefix="slipway-bench-cluster-")
registry_port, cluster_port = local.free_port(), local.free_port()
registry = local.start_registry(os.path.join(data, "registry"), registry_port)
image_name = local.push_example_image(data, registry_port)
cluster = local.start_service(bin_dir, "cluster", data, cluster_port, *os.environ.get("SLIPWAY_CLUSTER_FLAGS", "").split())
try:
    stub = pb_grpc.ClusterStub(local.platform_channel(data, f"127.0.0.1:{cluster_port}", "cluster"))  # mutual TLS, as the operator
    workload = pb.Workload(environment_id="bench", service_id="svc_bench", service_name="hello")

    def deploy(replicas):
        start = time.monotonic()
        response = stub.Deploy(pb.DeployRequest(
            workload=workload, image=image_name, replicas=replicas, stop_grace_seconds=10,
            readiness=pb.Readiness(http=pb.HttpCheck(path="/health"), period_millis=10)), timeout=120)
        assert len(response.instances) == replicas
        return (time.monotonic() - start) * 1000

    cold = deploy(1)
    one, ten = [], []
    for _ in range(rounds):
        one.append(deploy(1))
        ten.append(deploy(10))
    stub.Delete(pb.WorkloadRequest(workload=workload, stop_grace_seconds=10))
    print(f"cold (image pulled into the layout, 1 replica): {cold:.0f} ms")
    for name, values in (("1 replica (replacing 10)", one), ("10 replicas (replacing 1)", ten)):
        values = sorted(values)
        print(f"{name}: median {statistics.median(values):.0f} ms, min {values[0]:.0f} ms, max {values[-1]:.0f} ms ({rounds} rounds)")
finally:
    local.stop(cluster, registry)
    for instance in subprocess.run(["runc", "--root", os.path.join(data, "cluster", "runc"), "list", "-q"],
                                   capture_output=True, text=True).stdout.split():
        subprocess.run(["runc", "--root", os.path.join(data, "cluster", "runc"), "delete", "--force", instance], capture_output=True)
