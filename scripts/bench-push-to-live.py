#!/usr/bin/env python3
"""Push-to-live latency: a commit to examples/hello's repository → the new page served over HTTPS
through nginx, with every real component (registry, logs, builder, cluster, network + nginx, certs,
pipeline) on free ports over a scratch data directory.

    python3 scripts/bench-push-to-live.py [BIN_DIR] [PUSHES]      (default .build/release, 10)

The clock starts when `git commit` returns and stops at the first HTTPS answer (verified with the
local CA) that carries the new commit's marker. There is no webhook yet (the gateway's issue): the
"push" is the commit followed by the pipeline's Deploy call, as a webhook would make it.
Cold = the first deploy on a new data directory (empty build cache, image layers to pull);
warm = each following push (a one-line change).
"""
import os
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(local.ROOT, ".build", "release")
pushes = int(sys.argv[2]) if len(sys.argv) > 2 else 10
(pb, pb_grpc), = local.protos("slipway/pipeline/v1/pipeline.proto")

data = tempfile.mkdtemp(prefix="slipway-bench-push-")
ports = {name: local.free_port() for name in ("registry", "logs", "builder", "cluster", "network", "certs", "pipeline", "http", "https")}
address = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
peers = [f"--{name}-address={address[name]}" for name in ("logs", "builder", "cluster", "network", "certs")]
procs = []
failed = True
try:
    procs.append(local.start_registry(os.path.join(data, "registry"), ports["registry"]))
    procs.append(local.start_service(bin_dir, "logs", data, ports["logs"]))
    procs.append(local.start_service(bin_dir, "builder", data, ports["builder"], f"--builder-registry={address['registry']}", *peers))
    procs.append(local.start_service(bin_dir, "network", data, ports["network"], f"--network-http-listen={address['http']}",
                                     f"--network-https-listen={address['https']}", *peers))
    procs.append(local.start_service(bin_dir, "certs", data, ports["certs"], *peers))
    procs.append(local.start_service(bin_dir, "cluster", data, ports["cluster"], *peers))
    procs.append(local.start_service(bin_dir, "pipeline", data, ports["pipeline"], *peers))
    stub = pb_grpc.PipelineStub(grpc.insecure_channel(address["pipeline"]))

    repo = os.path.join(data, "hello")
    local.example_repository(repo)
    org = stub.CreateOrganization(pb.CreateOrganizationRequest(name="bench"))
    project = stub.CreateProject(pb.CreateProjectRequest(organization_id=org.id, name="hello"))
    env = stub.CreateEnvironment(pb.CreateEnvironmentRequest(project_id=project.id, name="bench"))
    config = pb.ServiceConfig(
        application=pb.GitSource(url=repo, branch="main", build_args={"BASE": f"{address['registry']}/slipway/busybox:latest"}),
        ports=[pb.Port(internal_port=8080, public=True, protocol=pb.HTTP)],
        readiness_probe=pb.Probe(http=pb.HttpProbe(path="/health", port=8080), period_seconds=5, failure_threshold=1))
    service = stub.CreateService(pb.CreateServiceRequest(environment_id=env.id, name="hello", config=config))
    host = "hello-bench.localhost"
    ca_file = os.path.join(data, "certs", "local-ca.crt")

    def page():
        """The page through nginx over HTTPS, verified with the local CA (None until it answers)."""
        if not os.path.exists(ca_file):
            return None
        context = ssl.create_default_context(cafile=ca_file)
        try:
            with socket.create_connection(("127.0.0.1", ports["https"]), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    answer = b""
                    while chunk := tls.recv(65536):
                        answer += chunk
                    return answer.decode(errors="replace")
        except (OSError, ssl.SSLError):
            return None

    def push(marker):
        """Commit a page carrying `marker`, deploy it, and return seconds until HTTPS serves it."""
        with open(os.path.join(repo, "www", "index.html"), "w") as f:
            f.write(f"<h1>{marker}</h1>\n")
        commit = local.commit(repo, marker).strip()
        start = time.monotonic()
        stub.Deploy(pb.DeployRequest(environment_id=env.id, versions={service.id: commit},
                                     trigger=pb.Trigger(origin=pb.GIT, triggered_by="bench", idempotency_key=commit)))
        deadline = start + 120
        while time.monotonic() < deadline:
            answer = page()
            if answer and marker in answer and " 200 " in answer.split("\r\n")[0]:
                return time.monotonic() - start
            time.sleep(0.01)
        latest = stub.ListDeployments(pb.ListDeploymentsRequest(environment_id=env.id)).deployments[0]
        reasons = [f"{pb.DeploymentStatus.Name(s.status)} {s.reason}" for s in latest.services]
        raise RuntimeError(f"{marker} was not served within 120 s: deployment {pb.DeploymentStatus.Name(latest.status)} {reasons}")

    cold = push("cold-0")
    warm = [push(f"warm-{i}") for i in range(1, pushes + 1)]
    warm.sort()
    print(f"cold push-to-live (empty build cache, first route and certificate): {cold * 1000:.0f} ms")
    print(f"warm push-to-live ({pushes} pushes, one-line change): p50 {statistics.median(warm) * 1000:.0f} ms, "
          f"min {warm[0] * 1000:.0f} ms, max {warm[-1] * 1000:.0f} ms")
    failed = False
finally:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    local.stop_nginx(data)
    runc_root = os.path.join(data, "cluster", "runc")
    for instance in subprocess.run(["runc", "--root", runc_root, "list", "-q"], capture_output=True, text=True).stdout.split():
        subprocess.run(["runc", "--root", runc_root, "delete", "--force", instance], capture_output=True)
    if failed:
        print(f"the services' logs are in {data}", file=sys.stderr)
    else:
        shutil.rmtree(data, ignore_errors=True)
