#!/usr/bin/env python3
"""`make demo`: the whole flow through the `slipway` CLI and a git push.

    python3 scripts/demo.py DATA_DIR BIN_DIR

1. `slipway up`: the registry, the seven services, nginx and the local CA (then the offline base
   images are seeded into the registry).
2. `slipway org/project/env/service create`: demo / hello / local / hello, built from a bare git
   repository on this machine (DATA_DIR/demo/hello.git), public on port 8080, auto-deploy on.
3. `slipway webhook create hello`: the repository's post-receive hook (scripts/git-webhook-hook.py)
   delivers GitHub-style signed push events to the gateway, as a git host does.
4. A commit of examples/hello is pushed; the push's webhook starts the deployment, which
   `slipway watch` follows step by step; then the app's HTTPS URL is printed once it serves.

Run it again: it pushes a new commit (the page shows its time) and rolls it out.
"""
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

data, bin_dir = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
slipway = os.path.join(bin_dir, "slipway")
registry = os.environ.get("SLIPWAY_REGISTRY", "127.0.0.1:5000")
env = {**os.environ, "SLIPWAY_DATA_DIR": data, "SLIPWAY_ORG": "demo", "SLIPWAY_PROJECT": "hello", "SLIPWAY_ENV": "local"}


def run(*args, capture=False, check=True):
    print(f"$ slipway {' '.join(args)}", flush=True)
    result = subprocess.run([slipway, *args], env=env, text=True, capture_output=capture)
    if capture and result.stdout and not args[-1] == "json":
        print(result.stdout, end="")
    if check and result.returncode != 0:
        if capture:
            print(result.stderr, file=sys.stderr, end="")
        sys.exit(result.returncode)
    return result


def names(*args):
    return [item["name"] for item in json.loads(run(*args, "-o", "json", capture=True).stdout)]


# The demo's repository is a directory on this machine: the builder accepts paths under data/demo only.
os.makedirs(os.path.join(data, "demo"), exist_ok=True)
run("up", "--data-dir", data, "--local-sources", os.path.join(data, "demo"), "--http-listen", os.environ.get("SLIPWAY_HTTP_LISTEN", "127.0.0.1:80"),
    "--https-listen", os.environ.get("SLIPWAY_HTTPS_LISTEN", "127.0.0.1:443"))
subprocess.run([os.path.join(local.ROOT, "scripts", "seed-base-images.sh"), registry], check=True,
               env={**os.environ, "SLIPWAY_SEED_STORAGE": os.path.join(data, "seed"),
                                                                  "REGISTRY_AUTH_FILE": os.path.join(data, "registry", "auth.json")}, stdout=subprocess.DEVNULL)

bare = os.path.join(data, "demo", "hello.git")
if "demo" not in names("org", "list"):
    run("org", "create", "demo")
if "hello" not in names("project", "list"):
    run("project", "create", "hello")
if "local" not in names("env", "list"):
    run("env", "create", "local")
if "hello" not in names("service", "list"):
    run("service", "create", "hello", "--git", bare, "--branch", "main", "--build-arg", f"BASE={registry}/slipway/busybox:latest",
        "--port", "8080:public", "--health-path", "/health", "--auto-deploy", "on")

# The git server: a bare repository whose post-receive hook delivers the webhook.
if not os.path.isdir(bare):
    os.makedirs(bare)
    local.git(bare, "init", "--quiet", "--bare", "--initial-branch", "main")
    subprocess.run([sys.executable, os.path.join(local.ROOT, "scripts", "git-webhook-hook.py"), "--install", bare], check=True)
    webhook = json.loads(run("webhook", "create", "hello", "-o", "json", capture=True).stdout)
    local.git(bare, "config", "slipway.webhook-url", webhook["url"])
    local.git(bare, "config", "slipway.webhook-secret", webhook["secret"])
    print(f"webhook {webhook['url']} installed in {bare}/hooks/post-receive")

work = os.path.join(data, "demo", "hello")
if not os.path.isdir(os.path.join(work, ".git")):
    shutil.rmtree(work, ignore_errors=True)
    local.git(os.path.dirname(work), "clone", "--quiet", bare, work)
    local.git(work, "checkout", "--quiet", "-B", "main")
shutil.copytree(os.path.join(local.ROOT, "examples", "hello"), work, dirs_exist_ok=True)
stamp = time.strftime("%Y-%m-%d %H:%M:%S")
with open(os.path.join(work, "www", "pushed.txt"), "w") as f:
    f.write(f"pushed at {stamp}\n")
commit = local.commit(work, f"demo push at {stamp}")
print(f"\n$ git push origin main   ({commit[:12]})", flush=True)
push = subprocess.run(["git", "-C", work, "push", "origin", "main"], capture_output=True, text=True, env={**os.environ, **local.GIT_IDENTITY})
print(push.stderr.strip())
if push.returncode != 0:
    sys.exit("git push failed")

# The webhook's answer names the deployment; follow it.
deployment = ""
for line in push.stderr.splitlines():
    if "deployment_id" in line:
        deployment = json.loads(line[line.index("{"):])["deployment_id"]
if not deployment:
    sys.exit("the push did not start a deployment (see `slipway webhook deliveries hello`)")
print()
watched = run("watch", deployment, check=False)

route = json.loads(run("service", "show", "hello", "-o", "json", capture=True).stdout)
url = route.get("url", "")
ca_file = os.path.join(data, "certs", "local-ca.crt")
host = route.get("default_domain", "")
https = os.environ.get("SLIPWAY_HTTPS_LISTEN", "127.0.0.1:443")
answer = "not answering"
context = ssl.create_default_context(cafile=ca_file)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with socket.create_connection((https.rsplit(":", 1)[0], int(https.rsplit(":", 1)[1])), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET /pushed.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                reply = b""
                while chunk := tls.recv(4096):
                    reply += chunk
        answer = reply.decode(errors="replace")
        if stamp in answer:
            break
    except OSError as error:
        answer = f"not answering ({error})"
    time.sleep(0.5)
if stamp not in answer or watched.returncode != 0:
    sys.exit(f"the app does not serve the pushed commit: {answer.splitlines()[0] if answer else ''}")
print(f"\nserving at {url}  (the pushed commit's page, HTTPS through nginx, certificate from the local CA)")
print(f"  try: curl --cacert {ca_file} {url}pushed.txt")
print(f"  follow it: {slipway} logs hello -f --data-dir {data} --org demo --project hello --env local")
print(f"  push again: cd {work} && git commit --allow-empty -m again && git push   (rolls out; watch with slipway status -w)")
