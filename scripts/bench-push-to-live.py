#!/usr/bin/env python3
"""Push-to-live latency: `git push` of examples/hello → the new page served over HTTPS through nginx.

    python3 scripts/bench-push-to-live.py [BIN_DIR] [PUSHES]      (default .build/release, 10)

The platform is what users run: `slipway up` (registry, the seven services, nginx, local CA) on free
ports over a scratch data directory; the project, environment, service and webhook are made with the
`slipway` CLI. The repository is a bare one on this machine whose post-receive hook delivers the
GitHub-style signed webhook to the gateway (scripts/git-webhook-hook.py), as a git host would.

The clock starts when `git push` is run and stops at the first HTTPS answer (verified with the local
CA) that carries the pushed commit's marker. So it includes the push itself, the hook's delivery,
the gateway, the queue, fetch, build, image push, rollout with readiness, routing and the nginx
switch. Cold = the first push on the new data directory (empty build cache, base layers to pull,
first route and certificate); warm = each following push (a one-line change).
"""
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

bin_dir = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(local.ROOT, ".build", "release"))
pushes = int(sys.argv[2]) if len(sys.argv) > 2 else 10

data = tempfile.mkdtemp(prefix="slipway-bench-push-")
services = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]
env = {**os.environ, "SLIPWAY_DATA_DIR": data, "NO_COLOR": "1"}
for name in services:
    env[f"SLIPWAY_{name.upper()}_LISTEN"] = f"127.0.0.1:{local.free_port()}"
env["SLIPWAY_GATEWAY"] = env["SLIPWAY_GATEWAY_LISTEN"]
registry, https_port, http_port = f"127.0.0.1:{local.free_port()}", local.free_port(), local.free_port()
target = ["--org", "bench", "--project", "hello", "--env", "bench"]


def slipway(*args):
    result = subprocess.run([os.path.join(bin_dir, "slipway"), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"slipway {' '.join(args)}: {result.stderr}{result.stdout}")
    return result.stdout


failed = True
try:
    slipway("up", "--registry", registry, "--local-sources", data, "--http-listen", f"127.0.0.1:{http_port}", "--https-listen", f"127.0.0.1:{https_port}")
    subprocess.run([os.path.join(local.ROOT, "scripts", "seed-base-images.sh"), registry], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "SLIPWAY_SEED_STORAGE": os.path.join(data, "seed"),
                                                                  "REGISTRY_AUTH_FILE": os.path.join(data, "registry", "auth.json")})
    bare, work = os.path.join(data, "hello.git"), os.path.join(data, "hello")
    os.makedirs(bare)
    local.git(bare, "init", "--quiet", "--bare", "--initial-branch", "main")
    slipway("org", "create", "bench")
    slipway("project", "create", "hello", "--org", "bench")
    slipway("env", "create", "bench", "--org", "bench", "--project", "hello")
    slipway("service", "create", "hello", *target, "--git", bare, "--build-arg", f"BASE={registry}/slipway/busybox:latest",
            "--port", "8080:public", "--health-path", "/health", "--auto-deploy", "on")
    webhook = json.loads(slipway("webhook", "create", "hello", *target, "-o", "json"))
    subprocess.run([sys.executable, os.path.join(local.ROOT, "scripts", "git-webhook-hook.py"), "--install", bare], check=True)
    local.git(bare, "config", "slipway.webhook-url", webhook["url"])
    local.git(bare, "config", "slipway.webhook-secret", webhook["secret"])
    local.git(data, "clone", "--quiet", bare, work)
    local.git(work, "checkout", "--quiet", "-B", "main")
    shutil.copytree(os.path.join(local.ROOT, "examples", "hello"), work, dirs_exist_ok=True)
    host = "hello-bench.localhost"
    ca_file = os.path.join(data, "certs", "local-ca.crt")

    def page():
        """The page through nginx over HTTPS, verified with the local CA (None until it answers)."""
        if not os.path.exists(ca_file):
            return None
        context = ssl.create_default_context(cafile=ca_file)
        try:
            with socket.create_connection(("127.0.0.1", https_port), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname=host) as tls:
                    tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                    answer = b""
                    while chunk := tls.recv(65536):
                        answer += chunk
                    return answer.decode(errors="replace")
        except (OSError, ssl.SSLError):
            return None

    def push(marker):
        """Commit a page carrying `marker`, git push, and return seconds until HTTPS serves it."""
        local.commit(work, marker, {"www/index.html": f"<h1>{marker}</h1>\n"})
        start = time.monotonic()
        result = subprocess.run(["git", "-C", work, "push", "--quiet", "origin", "main"], capture_output=True, text=True,
                                env={**os.environ, **local.GIT_IDENTITY})
        if result.returncode != 0 or "DELIVERY_DEPLOYED" not in result.stderr:
            raise RuntimeError(f"git push: {result.stderr}")
        deadline = start + 120
        while time.monotonic() < deadline:
            answer = page()
            if answer and marker in answer and " 200 " in answer.split("\r\n")[0]:
                return time.monotonic() - start
            time.sleep(0.01)
        raise RuntimeError(f"{marker} was not served within 120 s: {slipway('history', 'hello', '--steps', '--limit', '1', *target)}")

    cold = push("cold-0")
    warm = sorted(push(f"warm-{i}") for i in range(1, pushes + 1))
    print(f"cold push-to-live (empty build cache, first route and certificate): {cold * 1000:.0f} ms")
    print(f"warm push-to-live ({pushes} pushes, one-line change): p50 {statistics.median(warm) * 1000:.0f} ms, "
          f"min {warm[0] * 1000:.0f} ms, max {warm[-1] * 1000:.0f} ms")
    # Where the time goes: each step's median over the warm pushes, from the history.
    history = json.loads(slipway("history", "hello", "--limit", str(pushes), *target, "-o", "json"))
    steps = {}
    for deployment in history:
        for step in deployment["services"][0]["steps"]:
            steps.setdefault(step["step"], []).append(step["duration_millis"])
        steps.setdefault("queue → started", []).append(deployment["started_unix_millis"] - deployment["created_unix_millis"])
        steps.setdefault("created → ended", []).append(deployment["ended_unix_millis"] - deployment["created_unix_millis"])
    print("warm steps, median: " + ", ".join(f"{name} {statistics.median(values):.0f} ms" for name, values in steps.items()))
    failed = False
finally:
    subprocess.run([os.path.join(bin_dir, "slipway"), "down"], env=env, capture_output=True)
    if failed or os.environ.get("SLIPWAY_BENCH_KEEP"):
        print(f"the services' logs are in {data}/logs", file=sys.stderr)
    else:
        shutil.rmtree(data, ignore_errors=True)
