#!/usr/bin/env python3
"""Isolation benchmark: requests/s through nginx to an instance over its veth (isolated, the
default) against the same image over loopback (`--cluster-isolation off`), in the same run.

    python3 scripts/bench-isolation.py [BIN_DIR] [ROUNDS]     (default .build/release, 3 rounds)

Two slipway-cluster services (one isolated, one not, each its own data directory) run
examples/hello (busybox httpd) from one registry. One nginx proxies 127.0.0.1:A to the isolated
instance's address (10.89.x.y:8080, over the environment's bridge and the instance's veth) and
127.0.0.1:B to the other's (127.0.0.1:port), with the same configuration (HTTP/1.1 upstream
keepalive, as the network service writes it). Per round, h2load (--h1, 16 connections) runs
against A, then B; the medians of requests/s and their ratio are printed.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(local.ROOT, ".build", "release")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
requests = int(os.environ.get("BENCH_REQUESTS", "20000"))
(pb, pb_grpc), = local.protos("slipway/cluster/v1/cluster.proto")

data = tempfile.mkdtemp(prefix="slipway-bench-isolation-")
os.chmod(data, 0o711)  # the isolated instance's uids pass through it to their bundle
registry_port = local.free_port()
registry = local.start_registry(os.path.join(data, "registry"), registry_port)
image_name = local.push_example_image(data, registry_port)

clusters = {}
nginx = None
try:
    addresses = {}
    for name, flags in (("veth", []), ("loopback", ["--cluster-isolation", "off"])):
        directory = os.path.join(data, name)
        os.makedirs(directory)
        port = local.free_port()
        clusters[name] = (local.start_service(bin_dir, "cluster", directory, port, "--cluster-traffic", "none", *flags), directory)
        stub = pb_grpc.ClusterStub(local.platform_channel(directory, f"127.0.0.1:{port}", "cluster"))
        response = stub.Deploy(pb.DeployRequest(
            workload=pb.Workload(environment_id="bench", service_id="svc_bench", service_name="hello"), image=image_name,
            readiness=pb.Readiness(http=pb.HttpCheck(path="/health"), period_millis=10)), timeout=120)
        addresses[name] = response.instances[0].address
    print(f"instances: {addresses}")

    listen = {name: local.free_port() for name in addresses}
    servers = "".join(f"""
    upstream {name} {{ server {address}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{listen[name]};
        location / {{ proxy_pass http://{name}; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}""" for name, address in addresses.items())
    config = os.path.join(data, "nginx.conf")
    with open(config, "w") as f:
        f.write(f"""daemon off;
pid {data}/nginx.pid;
error_log {data}/nginx-error.log;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    {servers}
}}
""")
    nginx = subprocess.Popen(["nginx", "-c", config, "-p", data])
    for name in listen:
        local.wait_until(lambda: subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{listen[name]}/health"]).returncode == 0,
                         10, f"nginx did not proxy to the {name} instance")

    def rate(name):
        out = subprocess.run(["h2load", "--h1", "-n", str(requests), "-c", "16", "-t", "1", f"http://127.0.0.1:{listen[name]}/"],
                             capture_output=True, text=True, check=True).stdout
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
        assert done and int(done.group(2)) == requests, out
        return float(re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out).group(1))

    results = {name: [] for name in listen}
    for _ in range(rounds):
        for name in listen:
            results[name].append(rate(name))
    for name, values in results.items():
        print(f"{name}: median {statistics.median(values):.0f} req/s ({', '.join(f'{v:.0f}' for v in values)})")
    ratio = statistics.median(results["veth"]) / statistics.median(results["loopback"])
    print(f"veth / loopback: {ratio:.3f}")
finally:
    if nginx:
        nginx.terminate()
        nginx.wait()
    for proc, directory in clusters.values():
        local.stop(proc)
        root = os.path.join(directory, "cluster", "runc")
        for instance in subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True).stdout.split():
            subprocess.run(["runc", "--root", root, "delete", "--force", instance], capture_output=True)
    local.stop(registry)
