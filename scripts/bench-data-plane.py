#!/usr/bin/env python3
"""The data plane outlives the control plane: h2load against an app through nginx while every
platform process is kill -9'd and restarted.

    python3 scripts/bench-data-plane.py [BIN_DIR] [ROUNDS]      (default .build/debug, 3)

`slipway up` (with its supervisor) on free ports over a scratch data directory; examples/hello is
deployed through the CLI and a webhook push. Then h2load runs without a pause (rounds of 1,000
HTTPS requests, 4 connections, a new connection per request, through nginx) while, ROUNDS times,
each of the seven services and the registry is kill -9'd in turn, the supervisor restarts it and
the next one goes once it answers again; then, once, the supervisor itself and all eight processes
at the same time, with `slipway up` bringing them back. Reported: requests, failed/errored/non-2xx
(the goal is 0), kills, and whether the app's container is the one that ran before (adopted, not
restarted).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

bin_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(local.ROOT, ".build", "debug"))
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
SERVICES = local.SERVICES

data = tempfile.mkdtemp(prefix="slipway-bench-dataplane-")
os.chmod(data, 0o755)
platform = local.LocalPlatform(bin_dir, data)
https_port = platform.https_port
slipway, pid_of = platform.cli, platform.pid
target = ["--org", "bench", "--project", "web", "--env", "bench"]
host = "hello-bench.localhost"


def serving(name):
    components = json.loads(slipway("ps", "-o", "json"))["services"]
    row = next(c for c in components if c["service"] in (f"slipway-{name}", name))
    return row["pid"] > 0 and row.get("health", "SERVING") == "SERVING"


def containers():
    listed = subprocess.run(["runc", "--root", os.path.join(data, "cluster", "runc"), "list", "-f", "json"], capture_output=True, text=True).stdout
    return {c["id"]: c["pid"] for c in json.loads(listed or "[]") or [] if c["status"] == "running"}


class Load(threading.Thread):
    def __init__(self):
        super().__init__()
        self.stopped = threading.Event()
        self.totals = {"requests": 0, "succeeded": 0, "failed": 0, "errored": 0, "non2xx": 0, "rounds": 0}
        self.bad = []

    def run(self):
        while not self.stopped.is_set():
            out = subprocess.run(["h2load", "--h1", "-n", "1000", "-c", "4", "-H", "Connection: close", "--connect-to", f"127.0.0.1:{https_port}",
                                  f"https://{host}:{https_port}/"], capture_output=True, text=True, timeout=120).stdout
            requests = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
            codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
            self.totals["rounds"] += 1
            self.totals["requests"] += int(requests.group(1))
            self.totals["succeeded"] += int(requests.group(2))
            self.totals["failed"] += int(requests.group(3))
            self.totals["errored"] += int(requests.group(4))
            non2xx = sum(int(codes.group(i)) for i in (2, 3, 4))
            self.totals["non2xx"] += non2xx
            if int(requests.group(3)) or non2xx:
                self.bad.append(out)


try:
    platform.up()
    repo = os.path.join(data, "hello")
    local.example_repository(repo)
    slipway("org", "create", "bench")
    slipway("project", "create", "web", "--org", "bench")
    slipway("env", "create", "bench", "--org", "bench", "--project", "web")
    slipway("service", "create", "hello", *target, "--git", repo, "--build-arg", f"BASE={platform.registry}/slipway/busybox:latest",
            "--port", "8080:public", "--health-path", "/health")
    slipway("deploy", "hello", *target)
    before = containers()
    load = Load()
    load.start()
    kills = 0
    started = time.monotonic()
    for _ in range(rounds):
        for name in SERVICES + ["registry"]:
            pid = pid_of(name)
            os.kill(pid, signal.SIGKILL)
            kills += 1
            local.wait_until(lambda: pid_of(name) not in (None, pid) and serving(name), 60, f"{name} did not come back")
    # All at once, the supervisor too; `slipway up` brings them back.
    everything = {name: pid_of(name) for name in ["supervisor", *SERVICES, "registry"]}
    for pid in everything.values():
        os.kill(pid, signal.SIGKILL)
        kills += 1
    time.sleep(5)  # a measured outage: nothing of the control plane runs for 5 s while the load goes on
    slipway("up", "--registry", platform.registry, "--local-sources", data, "--http-listen", f"127.0.0.1:{platform.http_port}",
            "--https-listen", f"127.0.0.1:{https_port}")
    elapsed = time.monotonic() - started
    load.stopped.set()
    load.join()
    adopted = containers() == before
    print(f"data plane under control-plane kills: {load.totals['requests']} requests in {elapsed:.0f} s over {load.totals['rounds']} h2load rounds, "
          f"{load.totals['failed']} failed, {load.totals['errored']} errored, {load.totals['non2xx']} non-2xx; {kills} kill -9 "
          f"({rounds} rounds of the 8 processes one by one, then all 9 with the supervisor at once for 5 s); "
          f"app container adopted, not restarted: {adopted}")
    if load.bad:
        print(load.bad[0])
finally:
    slipway("down", check=False)
    shutil.rmtree(data, ignore_errors=True)
