"""The whole flow as a user meets it: `slipway up` starts every real component (registry, the seven
services, nginx, the local CA) on free ports; everything else goes through the gateway — the
`slipway` CLI, grpcio against the public API, git pushes to a bare repository whose post-receive
hook delivers signed webhooks, Server-Sent Events with curl-like HTTP/1.1 clients — and the app is
checked over HTTPS through the load balancer.
"""
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import grpc
import pytest

from conftest import BIN_DIR, ROOT
from test_pipeline import Traffic, through_load_balancer

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import slipway_local as local  # noqa: E402

SERVICES = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]
HOOK = os.path.join(ROOT, "scripts", "git-webhook-hook.py")


class Slipway:
    """A platform started by `slipway up` over a scratch data directory, and ways to talk to it."""

    def __init__(self):
        self.data = tempfile.mkdtemp(prefix="slipway-e2e-")
        self.ports = {name: local.free_port() for name in SERVICES}
        self.registry = f"127.0.0.1:{local.free_port()}"
        self.http_port, self.https_port = local.free_port(), local.free_port()
        self.env = {**os.environ, "SLIPWAY_DATA_DIR": self.data, "SLIPWAY_GATEWAY": f"127.0.0.1:{self.ports['gateway']}", "NO_COLOR": "1"}
        for name, port in self.ports.items():
            self.env[f"SLIPWAY_{name.upper()}_LISTEN"] = f"127.0.0.1:{port}"
        self.local_ca = os.path.join(self.data, "certs", "local-ca.crt")
        (self.api, api_grpc), (self.pb, _), (self.logs_pb, _) = local.protos(
            "slipway/api/v1/api.proto", "slipway/pipeline/v1/pipeline.proto", "slipway/logs/v1/logs.proto")
        local.track_isolation(self.data)
        self.up_output = self.up()
        # `slipway up`'s registry wants credentials: the containers-auth.json it wrote (builder and cluster use it too).
        subprocess.run([os.path.join(ROOT, "scripts", "seed-base-images.sh"), self.registry], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "SLIPWAY_SEED_STORAGE": os.path.join(self.data, "seed"),
                            "REGISTRY_AUTH_FILE": os.path.join(self.data, "registry", "auth.json")})
        with open(os.path.join(self.data, "gateway", "admin-token")) as f:
            self.admin = f.read().strip()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.ports['gateway']}")
        self.stub = api_grpc.SlipwayStub(self.channel)

    def up(self):
        result = self.cli("up", "--registry", self.registry, "--local-sources", self.data, "--http-listen", f"127.0.0.1:{self.http_port}",
                          "--https-listen", f"127.0.0.1:{self.https_port}", check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def cli(self, *args, check=True, token=None, timeout=300):
        env = dict(self.env)
        if token:
            env["SLIPWAY_TOKEN"] = token
        result = subprocess.run([os.path.join(BIN_DIR, "slipway"), *args], env=env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"slipway {' '.join(args)} exited {result.returncode}: {result.stderr}{result.stdout}"
        return result

    def json(self, *args, **kwargs):
        return json.loads(self.cli(*args, "-o", "json", **kwargs).stdout)

    def md(self, token=None):
        return [("authorization", f"Bearer {token or self.admin}")]

    def pid(self, name):
        with open(os.path.join(self.data, "run", f"{name}.pid")) as f:
            return int(f.read())

    def url(self, path):
        return f"http://127.0.0.1:{self.ports['gateway']}{path}"

    def down(self):
        self.channel.close()
        return self.cli("down", check=False)


@pytest.fixture(scope="module")
def slipway():
    platform = Slipway()
    yield platform
    pids = [platform.pid(name) for name in SERVICES + ["registry"]]
    down = platform.down()
    assert down.returncode == 0, down.stderr
    # `slipway down` stops everything it started: services, registry, apps (runc), nginx.
    assert [pid for pid in pids if alive(pid)] == []
    assert local.nginx_master(platform.data) is None
    leftover = subprocess.run(["runc", "--root", os.path.join(platform.data, "cluster", "runc"), "list", "-q"], capture_output=True, text=True).stdout
    assert leftover.split() == []


def alive(pid):
    """Running (not gone, not a zombie nobody has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Project:
    """An organization, project, environment and service `hello` built from a bare repository whose
    post-receive hook delivers the service's webhook; `push()` commits to a clone and pushes."""

    def __init__(self, s, name, env=None, **service_flags):
        self.s, self.name = s, name
        # By default each its own environment name, so that the default domain is
        # <service>-<environment>.localhost (a service of another organization with the same names
        # gets a suffixed one).
        env = env or name
        self.target = ["--org", name, "--project", "web", "--env", env]
        s.cli("org", "create", name)
        s.cli("project", "create", "web", "--org", name)
        s.cli("env", "create", env, "--org", name, "--project", "web")
        self.bare = os.path.join(s.data, "git", f"{name}.git")
        os.makedirs(self.bare)
        local.git(self.bare, "init", "--quiet", "--bare", "--initial-branch", "main")
        flags = ["--git", self.bare, "--build-arg", f"BASE={s.registry}/slipway/busybox:latest", "--port", "8080:public",
                 "--health-path", "/health", "--auto-deploy", "on"]
        for key, value in service_flags.items():
            flags += [f"--{key.replace('_', '-')}", str(value)]
        self.service = s.json("service", "create", "hello", *self.target, *flags)
        self.environment = self.service["environment_id"]
        webhook = s.json("webhook", "create", "hello", *self.target)
        self.webhook = webhook
        subprocess.run([sys.executable, HOOK, "--install", self.bare], check=True)
        local.git(self.bare, "config", "slipway.webhook-url", webhook["url"])
        local.git(self.bare, "config", "slipway.webhook-secret", webhook["secret"])
        self.work = os.path.join(s.data, "git", f"{name}-work")
        local.git(os.path.dirname(self.work), "clone", "--quiet", self.bare, self.work)
        local.git(self.work, "checkout", "--quiet", "-B", "main")
        subprocess.run(["cp", "-r", os.path.join(ROOT, "examples", "hello", "."), self.work], check=True)
        self.host = f"{self.service['domain_label']}.localhost"

    def cli(self, *args, **kwargs):
        return self.s.cli(*args, *self.target, **kwargs)

    def push(self, files, message):
        """Commits `files` (path → content) and pushes; returns (commit, the gateway's answer)."""
        commit = local.commit(self.work, message, files)
        result = subprocess.run(["git", "-C", self.work, "push", "origin", "main"], capture_output=True, text=True,
                                env={**os.environ, **local.GIT_IDENTITY})
        assert result.returncode == 0, result.stderr
        answers = [json.loads(line[line.index("{"):]) for line in result.stderr.splitlines() if "slipway:" in line and "{" in line]
        assert answers, result.stderr
        return commit, answers[-1]

    def watch(self, deployment, check=True):
        result = self.s.cli("watch", deployment, "-o", "json", check=False, timeout=400)
        ended = json.loads(result.stdout)
        if check:
            assert result.returncode == 0 and ended["status"] == "DEPLOYED", ended
        return result.returncode, ended

    def get(self, path="/"):
        return through_load_balancer(self.s, self.host, path)


def sse(url, headers=None, until=None, timeout=60):
    """Reads Server-Sent Events from url until `until(event)` is true; returns (status, events)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        return error.code, [json.loads(error.read())]
    events, current = [], {}
    deadline = time.monotonic() + timeout
    with response:
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                current["id"] = line[4:]
            elif line.startswith("event: "):
                current["event"] = line[7:]
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
                current["received"] = time.time()
            elif line == "" and current:
                events.append(current)
                if until and until(current):
                    break
                current = {}
            if time.monotonic() > deadline:
                break
    return response.status, events


def test_up_prints_where_everything_is(slipway):
    out = slipway.up_output
    for name, port in slipway.ports.items():
        assert f"slipway-{name}" in out and f"127.0.0.1:{port}" in out and "SERVING" in out
    assert slipway.registry in out and f"https://127.0.0.1:{slipway.https_port}" in out
    assert slipway.local_ca in out and "update-ca-certificates" in out and "admin-token" in out
    # Up again is a no-op for what runs: same processes.
    before = {name: slipway.pid(name) for name in SERVICES}
    slipway.up()
    assert {name: slipway.pid(name) for name in SERVICES} == before


def test_push_rollout_broken_build_rollback_stop_restart_delete(slipway):
    s = slipway
    p = Project(s, "flow")
    svc = p.service["id"]

    # Subscribers before the first push: the app's logs (grpcio TailLogs, live) and status events (SSE).
    app_lines = []

    def tail_app():
        request = s.api.LogsRequest(service_id=svc, live_only=True)
        try:
            for response in s.stub.TailLogs(request, metadata=s.md(), timeout=120):
                app_lines.append((time.time(), response.line.text))
                if "listening on port" in response.line.text:
                    return
        except grpc.RpcError:
            pass

    tail = threading.Thread(target=tail_app)
    tail.start()
    status_events = {}

    def watch_events():
        status_events["status"], status_events["events"] = sse(
            s.url(f"/v1/events?environment_id={p.environment}&access_token={s.admin}"),
            until=lambda e: e["event"] == "status" and e["data"]["kind"] == "EVENT_DEPLOYMENT_ENDED", timeout=300)

    events = threading.Thread(target=watch_events)
    events.start()
    time.sleep(0.5)

    # 1. git push → webhook → build → push → route → certificate → HTTPS.
    first, answer = p.push({"www/version.txt": "one\n"}, "first")
    assert answer["outcome"] == "DELIVERY_DEPLOYED", answer
    deployment = answer["deployment_id"]
    status, log_events = sse(s.url(f"/v1/logs?deployment_id={deployment}"), headers={"Authorization": f"Bearer {s.admin}"},
                             until=lambda e: "CERTIFICATE succeeded" in e.get("data", {}).get("text", ""), timeout=300)
    _, ended = p.watch(deployment)
    assert status == 200 and [e["event"] for e in log_events].count("line") > 5
    # In real time: the first lines arrived before the deployment ended.
    assert log_events[0]["received"] * 1000 < ended["ended_unix_millis"], (log_events[0], ended["ended_unix_millis"])
    assert [int(e["id"]) for e in log_events] == sorted(int(e["id"]) for e in log_events)
    assert ended["origin"] == "GIT" and ended["services"][0]["commit"] == first
    assert [step["step"] for step in ended["services"][0]["steps"]] == ["GIT_CLONE", "BUILD", "DEPLOYMENT", "ROUTER_DEPLOYMENT", "CERTIFICATE"]
    assert p.get("/version.txt") == (200, "one\n")
    tail.join(30)
    assert any("listening on port" in text for _, text in app_lines), app_lines
    events.join(30)
    kinds = [e["data"]["kind"] for e in status_events["events"]]
    assert status_events["status"] == 200 and "EVENT_SNAPSHOT_END" in kinds and "EVENT_DEPLOYMENT_ENDED" in kinds, kinds
    route = s.json("service", "show", "hello", *p.target)
    assert route["url"] == f"https://hello-flow.localhost:{s.https_port}/"

    # 2. A second push rolls out under continuous load: no request fails. `slipway logs -f` shows it
    # happen: the new deployment's lines for the service, then its new instance's.
    follower = subprocess.Popen([os.path.join(BIN_DIR, "slipway"), "logs", "hello", "-f", *p.target], env=s.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    followed = []
    reader = threading.Thread(target=lambda: followed.extend(iter(follower.stdout.readline, "")))
    reader.start()
    time.sleep(1)
    traffic, load = Traffic(s, p.host), local.H2Load(s.https_port, p.host)
    traffic.start()
    load.start()
    try:
        _, answer = p.push({"www/version.txt": "two\n"}, "second")
        p.watch(answer["deployment_id"])
        local.wait_until(lambda: p.get("/version.txt") == (200, "two\n"), 10, "the second version never served")
    finally:
        traffic.stop()
        load.stop()

    def rollout_seen():
        text = "".join(followed)
        marker = f"── deployment {answer['deployment_id']}"
        return marker in text and "BUILD" in text.split(marker, 1)[1] and "listening on port" in text.split(marker, 1)[1]

    try:
        local.wait_until(rollout_seen, 20, "slipway logs -f did not show the deployment and the new instance")
    finally:
        follower.terminate()
        follower.wait(10)
        reader.join(10)
    assert traffic.failures == [] and traffic.ok > 10, traffic.failures[:5]
    assert (load.failed, load.errored, load.non2xx) == (0, 0, 0) and load.rounds >= 1, load.outputs[:1]

    # Deploy from a registry, for CI: a container service running the image the first push built
    # follows a new tag when DeployImage names that image (and only then).
    image, tag = ended["services"][0]["image"].split("@")[0].rsplit(":", 1)
    p.cli("service", "create", "mirror", "--image", image, "--tag", tag, "--port", "8080:public", "--health-path", "/health", "--auto-deploy", "on")
    second = s.json("history", "hello", "--limit", "1", *p.target)[0]["services"][0]["image"].split("@")[0].rsplit(":", 1)[1]
    organization = next(o["id"] for o in s.json("org", "list") if o["name"] == "flow")
    nothing = s.stub.DeployImage(s.api.DeployImageRequest(image=image + "-other", tag=second, organization_id=organization), metadata=s.md())
    assert list(nothing.deployed) == []
    mirrored = s.stub.DeployImage(s.api.DeployImageRequest(image=image, tag=second, organization_id=organization), metadata=s.md())
    assert [d.service_id for d in mirrored.deployed] == [s.json("service", "show", "mirror", *p.target)["id"]]
    p.watch(mirrored.deployed[0].deployment.deployment_id)
    assert through_load_balancer(s, "mirror-flow.localhost", "/version.txt") == (200, "two\n")
    assert "DELETED" in p.cli("delete", "mirror").stdout

    # 3. A broken commit fails at build; the running version keeps serving.
    _, answer = p.push({"Dockerfile": "ARG BASE\nFROM ${BASE}\nRUN exit 3\n", "www/version.txt": "broken\n"}, "broken")
    code, failed = p.watch(answer["deployment_id"], check=False)
    assert code == 1 and failed["status"] == "BUILD_ERROR", failed
    assert "exit" in failed["services"][0]["reason"] or "status 3" in failed["services"][0]["reason"], failed["services"][0]["reason"]
    assert p.get("/version.txt") == (200, "two\n")
    subprocess.run(["git", "-C", p.work, "checkout", "HEAD~1", "--", "Dockerfile"], check=True)

    # 4. A configuration change, then rollback to the first release: its image and its configuration.
    p.cli("service", "update", "hello", "--var", "COLOR=blue")
    redeploy = p.cli("redeploy", "hello")
    assert "DEPLOYED" in redeploy.stdout, redeploy.stdout
    releases = s.json("history", "hello", "--releases", *p.target)
    assert releases[0]["config"]["environment_variables"] == {"COLOR": "blue"}
    oldest = releases[-1]
    assert oldest["commit"] == first
    # A deployer may not bring back a release's configuration and secrets, only its version.
    deployer = s.json("token", "create", "rollback-deployer", "--role", "deployer", "--org", "flow")["secret"]
    refused = s.cli("rollback", "hello", "--release", oldest["id"], *p.target, token=deployer, check=False)
    assert refused.returncode == 4 and "ADMIN" in refused.stderr and "--image-only" in refused.stderr, refused.stderr
    code_only = s.json("rollback", "hello", "--release", oldest["id"], "--image-only", *p.target, token=deployer)
    assert code_only["status"] == "DEPLOYED" and code_only["rollback_release_id"] == "", code_only
    assert p.get("/version.txt") == (200, "one\n")
    assert s.json("service", "show", "hello", *p.target)["config"]["environment_variables"] == {"COLOR": "blue"}
    assert s.json("history", "hello", "--releases", *p.target)[0]["config"]["environment_variables"] == {"COLOR": "blue"}
    rolled = s.json("rollback", "hello", "--release", oldest["id"], *p.target)
    assert rolled["status"] == "DEPLOYED" and rolled["rollback_release_id"] == oldest["id"]
    assert p.get("/version.txt") == (200, "one\n")
    assert s.json("service", "show", "hello", *p.target)["config"]["environment_variables"] == {}

    # 5. Stop: nothing serves, and a push does not start it again; deploy starts it; restart.
    assert "STOPPED" in p.cli("stop", "hello").stdout
    assert p.get("/version.txt")[0] == 503
    _, answer = p.push({"www/version.txt": "three\n"}, "third")
    assert answer["outcome"] == "DELIVERY_IGNORED" and "does not start it again" in answer["reason"], answer
    assert p.get("/version.txt")[0] == 503
    p.cli("deploy", "hello")
    assert p.get("/version.txt") == (200, "three\n")
    restarted = s.json("restart", "hello", *p.target)
    assert restarted["status"] == "RESTARTED" and p.get("/version.txt") == (200, "three\n")

    # 6. History lists all of it, newest first, with step durations.
    history = s.json("history", "hello", "--limit", "50", *p.target)
    actions = [(d["action"], d["origin"], d["status"]) for d in history]
    assert actions[0] == ("RESTART", "CLI", "RESTARTED")
    assert ("STOP", "CLI", "STOPPED") in actions and ("DEPLOY", "GIT", "BUILD_ERROR") in actions
    assert [a for a in actions if a[1] == "GIT"] == [("DEPLOY", "GIT", "BUILD_ERROR"), ("DEPLOY", "GIT", "DEPLOYED"), ("DEPLOY", "GIT", "DEPLOYED")]
    built = next(d for d in history if d["origin"] == "GIT" and d["status"] == "DEPLOYED")
    assert all(step["duration_millis"] > 0 for step in built["services"][0]["steps"] if step["step"] in ("BUILD", "DEPLOYMENT"))
    text = p.cli("history", "hello", "--steps").stdout
    assert "build" in text and (" ms" in text or " s" in text)

    # 7. Delete: the service, its instances and its route are gone; its history stays.
    before = len(s.json("history", "--limit", "100", *p.target))
    deleted = s.json("delete", "hello", *p.target)
    assert deleted["status"] == "DELETED"
    status, body = p.get("/version.txt")
    assert status is None and "UNRECOGNIZED_NAME" in body, (status, body)
    assert len(s.json("history", "--limit", "100", *p.target)) == before + 1


def test_tokens_are_scoped_by_role_and_rate(slipway):
    s = slipway
    a, b = Project(s, "tokens-a"), Project(s, "tokens-b")
    created = s.json("token", "create", "ci", "--role", "viewer", "--org", "tokens-a")
    viewer = created["secret"]
    deployer = s.json("token", "create", "deployer", "--role", "deployer", "--org", "tokens-a")["secret"]
    # Shown once: listing never shows it; only its hash is stored.
    listing = s.cli("token", "list", "--org", "tokens-a", "-o", "json").stdout
    assert viewer not in listing and created["id"] in listing
    with open(os.path.join(s.data, "gateway", "gateway.sqlite"), "rb") as f:
        assert viewer.split("_", 2)[2].encode() not in f.read()

    # A viewer reads but cannot act (exit 4); the other organization does not exist for it (exit 3).
    assert s.cli("service", "list", *a.target, token=viewer).returncode == 0
    refused = s.cli("deploy", "hello", *a.target, token=viewer, check=False)
    assert refused.returncode == 4 and "needs DEPLOYER" in refused.stderr
    assert [o["name"] for o in s.json("org", "list", token=viewer)] == ["tokens-a"]
    hidden = s.cli("service", "list", *b.target, token=viewer, check=False)
    assert hidden.returncode == 3 and "tokens-b" in hidden.stderr
    with pytest.raises(grpc.RpcError) as error:
        s.stub.GetService(s.pb.GetServiceRequest(service_id=b.service["id"]), metadata=s.md(viewer))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        s.stub.Deploy(s.api.DeployRequest(environment_id=a.environment, service_ids=[b.service["id"]]), metadata=s.md(deployer))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        s.stub.CreateToken(s.api.CreateTokenRequest(name="x", organization_id=a.service["id"], role=s.api.ADMIN), metadata=s.md(deployer))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A deployer acts.
    deployed = s.json("deploy", "hello", "--detach", *a.target, token=deployer)
    assert deployed["deployment_id"]
    # A custom domain is one service's across organizations from the moment it is saved.
    s.cli("service", "update", "hello", *a.target, "--domain", "shop.tokens.test")
    taken = s.cli("service", "update", "hello", *b.target, "--domain", "shop.tokens.test", check=False)
    assert taken.returncode != 0 and "another service's" in taken.stderr and a.service["id"] not in taken.stderr, taken.stderr
    assert s.json("service", "show", "hello", *b.target)["config"]["custom_domains"] == []

    # No token, a wrong one, a revoked one: exit 4 with what to do.
    missing = subprocess.run([os.path.join(BIN_DIR, "slipway"), "org", "list"], capture_output=True, text=True,
                             env={**s.env, "SLIPWAY_DATA_DIR": "/nonexistent"})
    assert missing.returncode == 4 and "--token" in missing.stderr
    wrong = s.cli("org", "list", token=viewer[:-2] + "xx", check=False)
    assert wrong.returncode == 4 and "not valid" in wrong.stderr
    s.cli("token", "revoke", created["id"])
    revoked = s.cli("org", "list", token=viewer, check=False)
    assert revoked.returncode == 4 and "revoked" in revoked.stderr

    # Rate limit per token: 2 requests/s, bursts of 4, then RESOURCE_EXHAUSTED with when to retry.
    slow = s.json("token", "create", "slow", "--role", "viewer", "--rate-limit", "2", "--org", "tokens-a")["secret"]
    codes = []
    for _ in range(8):
        try:
            s.stub.WhoAmI(s.api.WhoAmIRequest(), metadata=s.md(slow))
            codes.append("OK")
        except grpc.RpcError as failure:
            codes.append(failure.code().name)
            assert "retry in" in failure.details()
    assert codes[:4] == ["OK"] * 4 and "RESOURCE_EXHAUSTED" in codes[4:], codes
    # The admin token is not slowed by it.
    s.stub.WhoAmI(s.api.WhoAmIRequest(), metadata=s.md())


def deliver(s, service_id, secret, body, provider="github", delivery=None, signature=None, event=None, base=None):
    """POSTs a webhook delivery the way the git host does; returns (HTTP status, JSON answer)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    delivery = delivery or str(uuid.uuid4())
    headers = {"Content-Type": "application/json"}
    if provider == "github":
        headers.update({"X-GitHub-Event": event or "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": signature or "sha256=" + digest})
    elif provider == "gitlab":
        headers.update({"X-Gitlab-Event": event or "Push Hook", "X-Gitlab-Event-UUID": delivery, "X-Gitlab-Token": signature or secret})
    elif provider == "gitea":
        headers.update({"X-Gitea-Event": event or "push", "X-Gitea-Delivery": delivery, "X-Gitea-Signature": signature or digest})
    else:
        headers.update({"X-Event-Key": event or "repo:push", "X-Request-UUID": delivery, "X-Hub-Signature": signature or "sha256=" + digest})
    request = urllib.request.Request((base or s.url(""))+ f"/webhooks/{service_id}", data=raw, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_webhook_deliveries_are_verified_filtered_deduplicated_and_recorded(slipway):
    s = slipway
    p = Project(s, "hooks", auto_deploy_branch="main", auto_deploy_path="www/")
    svc, secret = p.service["id"], p.webhook["secret"]
    commit = "a" * 40

    def push(ref="refs/heads/main", files=("www/index.html",), after=commit):
        return {"ref": ref, "before": "0" * 40, "after": after, "commits": [{"id": after, "added": [], "modified": list(files), "removed": []}]}

    assert deliver(s, svc, "guessed", push())[0] == 401
    assert deliver(s, svc, secret, push(), provider="gitlab", signature="guessed")[0] == 401
    assert deliver(s, svc, secret, b"{not json")[0] == 400
    assert deliver(s, svc, secret, {"no": "ref"})[0] == 400
    assert deliver(s, "svc_unknown", secret, push())[0] == 404
    too_large = b'{"ref":"' + b"x" * (5 * 1024 * 1024) + b'"}'
    assert deliver(s, svc, secret, too_large)[0] == 413
    assert deliver(s, svc, secret, {"zen": "hi"}, event="ping")[1]["outcome"] == "DELIVERY_IGNORED"
    status, answer = deliver(s, svc, secret, push(ref="refs/heads/feature"))
    assert (status, answer["outcome"]) == (200, "DELIVERY_IGNORED") and "branch feature is not deployed" in answer["reason"]
    status, answer = deliver(s, svc, secret, push(files=("README.md",)))
    assert answer["outcome"] == "DELIVERY_IGNORED" and "no changed file under www/" in answer["reason"], answer
    assert deliver(s, svc, secret, push(after="0" * 40))[1]["outcome"] == "DELIVERY_IGNORED"
    assert deliver(s, svc, secret, push(ref="refs/tags/v1"))[1]["outcome"] == "DELIVERY_IGNORED"

    # Accepted once per delivery id, whatever the host's retries.
    status, first = deliver(s, svc, secret, push(), delivery="retry-me")
    assert (status, first["outcome"]) == (202, "DELIVERY_DEPLOYED")
    status, again = deliver(s, svc, secret, push(), delivery="retry-me")
    assert (status, again["outcome"], again["deployment_id"]) == (200, "DELIVERY_DUPLICATE", first["deployment_id"])
    # The same signed body under a new delivery id (a captured push replayed) deploys nothing.
    status, replay = deliver(s, svc, secret, push(), delivery="replayed-under-a-new-id")
    assert (status, replay["outcome"]) == (200, "DELIVERY_IGNORED") and "deployed before" in replay["reason"], replay
    # GitLab, Gitea and Bitbucket deliveries are recognised by their headers and signatures.
    for provider, body in [("gitlab", push(after="b" * 40)), ("gitea", push(after="c" * 40)),
                           ("bitbucket", {"push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": "d" * 40}}}]}})]:
        status, answer = deliver(s, svc, secret, body, provider=provider)
        assert (status, answer["outcome"]) == (202, "DELIVERY_DEPLOYED"), (provider, answer)
    # Auto-deploy off: recorded, ignored.
    p.cli("service", "update", "hello", "--auto-deploy", "off")
    assert "auto-deploy is off" in deliver(s, svc, secret, push(after="e" * 40))[1]["reason"]

    deliveries = s.json("webhook", "deliveries", "hello", "--limit", "50", *p.target)
    outcomes = [d["outcome"] for d in deliveries]
    # Rejections are recorded once the host is known (the 413 is refused before reading the body).
    assert outcomes.count("DELIVERY_REJECTED") == 4 and outcomes.count("DELIVERY_DUPLICATE") == 1, outcomes
    assert outcomes.count("DELIVERY_DEPLOYED") == 4 and outcomes.count("DELIVERY_IGNORED") == 7, outcomes
    providers = {d["provider"] for d in deliveries if d["outcome"] == "DELIVERY_DEPLOYED"}
    assert providers == {"GITHUB", "GITLAB", "GITEA", "BITBUCKET"}
    rejected = [d for d in deliveries if d["outcome"] == "DELIVERY_REJECTED"]
    assert sorted(d["http_status"] for d in rejected) == [400, 400, 401, 401]
    # A viewer of another organization cannot read them.
    other = Project(s, "hooks-other")
    outsider = s.json("token", "create", "outsider", "--role", "admin", "--org", "hooks-other")["secret"]
    with pytest.raises(grpc.RpcError) as error:
        s.stub.ListDeliveries(s.api.ListDeliveriesRequest(service_id=svc), metadata=s.md(outsider))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        s.stub.CreateWebhook(s.api.CreateWebhookRequest(service_id=svc), metadata=s.md(outsider))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert other.service["id"] != svc


def test_refused_sources_are_throttled_without_blocking_verified_deliveries_and_connections_are_capped(slipway):
    """A gateway of its own (same data) with small limits: 1 refusal/s per source (bursts of 4), 4 connections."""
    s = slipway
    p = Project(s, "throttle", auto_deploy_branch="main")
    svc, secret = p.service["id"], p.webhook["secret"]
    port = local.free_port()
    log = open(os.path.join(s.data, "gateway-limits.log"), "wb")
    gateway = subprocess.Popen([os.path.join(BIN_DIR, "slipway-gateway"), "--listen", f"127.0.0.1:{port}", "--data-dir", s.data,
                                "--gateway-refusals-per-source", "1", "--gateway-max-connections", "4",
                                "--gateway-max-streams-per-organization", "2"],
                               env=s.env, stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        local.wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30, "the gateway did not listen")
        pid = gateway.pid
        before = len(s.json("webhook", "deliveries", "hello", "--limit", "500", *p.target))
        answers = [deliver(s, svc, "guessed", {"zen": "x"}, event="ping", base=base) for _ in range(8)]
        statuses = [status for status, _ in answers]
        # The burst is refused as usual (401, recorded), then 429 saying when to retry, not recorded
        # (a refill of one per second may let another 401 through on a slow machine).
        assert statuses[:4] == [401] * 4 and 429 in statuses and set(statuses) == {401, 429}, statuses
        assert all("retry in" in answer["reason"] for status, answer in answers if status == 429)
        after = s.json("webhook", "deliveries", "hello", "--limit", "500", *p.target)
        assert len(after) - before == statuses.count(401), [d["outcome"] for d in after[: len(after) - before]]
        # A verified delivery from the same address goes through.
        status, answer = deliver(s, svc, secret, {"zen": "hi"}, event="ping", base=base)
        assert (status, answer["outcome"]) == (200, "DELIVERY_IGNORED"), answer
        # Event streams: two for the whole organization, whichever of its tokens opens them.
        first = s.json("token", "create", "streams-1", "--role", "viewer", "--org", "throttle")["secret"]
        second = s.json("token", "create", "streams-2", "--role", "viewer", "--org", "throttle")["secret"]
        url = f"{base}/v1/events?environment_id={p.environment}"
        held = [urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), timeout=10) for token in (first, second)]
        assert all(response.status == 200 for response in held)
        status, body = sse(url, headers={"Authorization": f"Bearer {second}"})
        assert status == 429 and "organization" in body[0]["error"]["message"], body
        held.pop().close()

        def opens():
            try:
                with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {second}"}), timeout=10) as response:
                    return response.status == 200
            except urllib.error.HTTPError as error:
                assert error.code == 429
                return False
        local.wait_until(opens, 30, "a closed stream did not free its place (at the latest at the next 15 s heartbeat)")
        for response in held:
            response.close()

        # Connections: at most four are kept, more are closed as soon as they are accepted (which of
        # six gets in is the accept order's business); closing them frees the places.
        sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
        served, closed = 0, 0
        for connection in sockets:
            try:
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                reply = connection.recv(100)
            except (ConnectionResetError, BrokenPipeError):
                reply = b""
            if reply.startswith(b"HTTP/1.1 200"):
                served += 1
            elif reply == b"":
                closed += 1
        assert served + closed == 6 and 1 <= served <= 4 and closed >= 2, (served, closed)
        for connection in sockets:
            connection.close()

        def healthy():
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False
        local.wait_until(healthy, 10, "a freed connection slot was not reused")
        assert gateway.poll() is None and gateway.pid == pid
    finally:
        gateway.terminate()
        gateway.wait(20)


def test_event_streams_and_webhooks_over_http11_and_http2_and_tls_alpn(slipway):
    s = slipway
    status, body = sse(s.url("/v1/events?environment_id=env_x"))
    assert status == 401 and body[0]["error"]["code"] == "UNAUTHENTICATED"
    status, body = sse(s.url("/v1/logs?service_id=svc_unknown"), headers={"Authorization": f"Bearer {s.admin}"})
    assert status == 404
    with urllib.request.urlopen(s.url("/healthz"), timeout=5) as response:
        assert json.loads(response.read()) == {"status": "SERVING"}

    # A webhook over HTTP/2 without TLS (prior knowledge), as an HTTP/2 client may send it.
    p = Project(s, "h2-hooks")
    environment = p.environment
    body = json.dumps({"zen": "hi"})
    signature = "sha256=" + hmac.new(p.webhook["secret"].encode(), body.encode(), hashlib.sha256).hexdigest()
    h2 = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_code} %{http_version}", "-X", "POST", "-d", body,
                         "-H", "X-GitHub-Event: ping", "-H", "X-GitHub-Delivery: h2-1", "-H", f"X-Hub-Signature-256: {signature}",
                         s.url(f"/webhooks/{p.service['id']}")], capture_output=True, text=True, timeout=30)
    assert h2.stdout.splitlines()[-1] == "200 2" and "DELIVERY_IGNORED" in h2.stdout, h2.stdout + h2.stderr
    # Over the limit: 413 at once (from content-length), the upload stopped; HEAD has no body.
    big = os.path.join(s.data, "big.json")
    with open(big, "wb") as f:
        f.write(b"x" * (6 * 1024 * 1024))
    # The response goes first, the reset (NO_ERROR) only once the client acknowledged a PING sent
    # behind it: curl 7.88, which fails when it sees the reset first, gets its 413 every time.
    for _ in range(20):
        refused = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code} %{http_version}", "-X", "POST",
                                  "--data-binary", f"@{big}", "-H", "X-GitHub-Event: push", s.url(f"/webhooks/{p.service['id']}")],
                                 capture_output=True, text=True, timeout=30)
        assert refused.stdout == "413 2", refused.stdout + refused.stderr
    head = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-I", s.url("/healthz")], capture_output=True, text=True, timeout=30)
    assert head.returncode == 0 and head.stdout.startswith("HTTP/2 200"), head.stdout + head.stderr
    with urllib.request.urlopen(s.url("/healthz"), timeout=5) as response:  # the same connection-level handler over HTTP/1.1
        assert response.status == 200

    # A gateway with TLS: gRPC over h2 (grpcio) and HTTP/1.1 (webhooks, events) on one port, by ALPN.
    directory = tempfile.mkdtemp(prefix="slipway-gw-tls-")
    cert, key = local.self_signed_files(directory, "localhost", ips=("127.0.0.1",))
    port = local.free_port()
    gateway = subprocess.Popen(
        [os.path.join(BIN_DIR, "slipway-gateway"), "--listen", f"127.0.0.1:{port}", "--data-dir", s.data,
         "--gateway-tls-cert", cert, "--gateway-tls-key", key],
        env=s.env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "gateway.log"), "wb"))
    local.wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30, "the TLS gateway did not listen")
    try:
        with open(cert, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
            from slipway.api.v1 import api_pb2_grpc
            who = api_pb2_grpc.SlipwayStub(channel).WhoAmI(s.api.WhoAmIRequest(), metadata=s.md(), timeout=10)
            assert who.role == s.api.ADMIN
        # curl and browsers pick h2 by ALPN: plain HTTP/2 requests (not gRPC) reach the same handlers.
        health = subprocess.run(["curl", "-sS", "--http2", "--cacert", cert, "-w", "\n%{http_version}", "--connect-to", f"localhost:{port}:127.0.0.1:{port}",
                                 f"https://localhost:{port}/healthz"], capture_output=True, text=True, timeout=30)
        assert [line for line in health.stdout.splitlines() if line] == ['{"status":"SERVING"}', "2"], health.stdout + health.stderr
        events = subprocess.run(["curl", "-sS", "-N", "--http2", "--max-time", "3", "--cacert", cert, "--connect-to", f"localhost:{port}:127.0.0.1:{port}",
                                 "-H", f"Authorization: Bearer {s.admin}", f"https://localhost:{port}/v1/events?environment_id={environment}"],
                                capture_output=True, text=True, timeout=30)
        assert "event: status" in events.stdout and '"kind":"EVENT_SNAPSHOT_END"' in events.stdout, events.stdout + events.stderr
        denied = subprocess.run(["curl", "-sS", "--http2", "--cacert", cert, "-w", "\n%{http_code} %{http_version}", "--connect-to",
                                 f"localhost:{port}:127.0.0.1:{port}", f"https://localhost:{port}/v1/events?environment_id={environment}"],
                                capture_output=True, text=True, timeout=30)
        assert denied.stdout.splitlines()[-1] == "401 2" and "UNAUTHENTICATED" in denied.stdout
        for offered, chosen in [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]:
            context = ssl.create_default_context(cafile=cert)
            context.set_alpn_protocols(offered)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    assert tls.selected_alpn_protocol() == chosen
                    if chosen == "http/1.1":
                        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                        reply = b""
                        while chunk := tls.recv(4096):
                            reply += chunk
                        assert reply.startswith(b"HTTP/1.1 200") and b"SERVING" in reply
    finally:
        gateway.terminate()
        gateway.wait(20)


def served_certificate(port, name, ca_file):
    """The DER certificate a TLS server on 127.0.0.1:port presents for `name`, verified with ca_file."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.getpeercert(binary_form=True)


def test_a_gateway_serves_tls_with_a_certificate_from_slipway_certs_and_picks_up_its_renewal(slipway):
    s = slipway
    (certs_pb, certs_grpc), = local.protos("slipway/certs/v1/certs.proto")
    port = local.free_port()
    directory = tempfile.mkdtemp(prefix="slipway-gw-certs-")
    gateway = subprocess.Popen(
        [os.path.join(BIN_DIR, "slipway-gateway"), "--listen", f"127.0.0.1:{port}", "--data-dir", s.data,
         "--gateway-tls-domain", "api.localhost", "--gateway-tls-refresh-seconds", "1"],
        env=s.env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "gateway.log"), "wb"))
    try:
        local.wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60, "the gateway did not listen")
        # The local CA signed it (api.localhost is a local name); grpcio trusts that CA only.
        with open(s.local_ca, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "api.localhost")]) as channel:
            from slipway.api.v1 import api_pb2_grpc
            assert api_pb2_grpc.SlipwayStub(channel).WhoAmI(s.api.WhoAmIRequest(), metadata=s.md(), timeout=10).role == s.api.ADMIN
        first = served_certificate(port, "api.localhost", s.local_ca)
        # slipway-certs renews it; the gateway serves the new one without a restart.
        # (slipway-certs takes only mutual TLS: called as the operator, whose identity `slipway up` made.)
        with local.platform_channel(s.data, f"127.0.0.1:{s.ports['certs']}", "certs") as channel:
            certs = certs_grpc.CertsStub(channel)
            issued = next(c for c in certs.ListCertificates(certs_pb.ListCertificatesRequest()).certificates if list(c.domains) == ["api.localhost"])
            renewed = certs.Renew(certs_pb.CertificateKey(id=issued.id), timeout=60)
            assert renewed.state == certs_pb.CERTIFICATE_ISSUED and renewed.serial != issued.serial
        local.wait_until(lambda: served_certificate(port, "api.localhost", s.local_ca) != first, 20, "the renewed certificate was not served")
        assert gateway.poll() is None
    finally:
        gateway.terminate()
        gateway.wait(20)


@pytest.mark.parametrize("victim", SERVICES)
def test_a_service_killed_mid_deployment_is_restarted_and_the_deployment_completes(slipway, victim):
    """kill -9 of one service mid-deployment: the supervisor `slipway up` started restarts it (and
    `slipway ps` says so), the deployment goes on where it was and ends DEPLOYED, the new version serves."""
    s = slipway
    p = Project(s, f"kill-{victim}")
    _, answer = p.push({"www/version.txt": "before\n"}, "before")
    p.watch(answer["deployment_id"])
    assert p.get("/version.txt") == (200, "before\n")

    _, answer = p.push({"www/version.txt": "after\n"}, f"after ({victim} is killed)")
    deployment = answer["deployment_id"]
    request = s.pb.GetDeploymentRequest(deployment_id=deployment)
    # Mid-deployment: it has left the queue and not ended.
    local.wait_until(lambda: s.stub.GetDeployment(request, metadata=s.md()).started_unix_millis > 0, 60, "the deployment never started")
    assert s.stub.GetDeployment(request, metadata=s.md()).ended_unix_millis == 0, "it ended before the kill"
    killed = s.pid(victim)
    before = next(c for c in json.loads(s.cli("ps", "-o", "json").stdout)["services"] if c["service"] == f"slipway-{victim}")
    os.kill(killed, signal.SIGKILL)

    def restarted():
        now = next(c for c in json.loads(s.cli("ps", "-o", "json").stdout)["services"] if c["service"] == f"slipway-{victim}")
        return now if now["pid"] not in (0, killed) and now["health"] == "SERVING" else None

    local.wait_until(restarted, 60, f"the supervisor did not restart slipway-{victim}")
    after = restarted()
    assert after["restarts"] == before["restarts"] + 1 and after["last_exit"].startswith("killed by signal 9"), after
    s.channel.close()
    s.channel = grpc.insecure_channel(f"127.0.0.1:{s.ports['gateway']}")
    from slipway.api.v1 import api_pb2_grpc
    s.stub = api_pb2_grpc.SlipwayStub(s.channel)

    code, ended = p.watch(deployment, check=False)
    assert ended["status"] == "DEPLOYED", ended
    assert p.get("/version.txt") == (200, "after\n")
    p.cli("delete", "hello")


def runc_instances(s):
    """The apps' containers runc runs: id → pid of its init."""
    listed = subprocess.run(["runc", "--root", os.path.join(s.data, "cluster", "runc"), "list", "-f", "json"], capture_output=True, text=True).stdout
    return {c["id"]: c["pid"] for c in json.loads(listed or "[]") or [] if c["status"] == "running"}


def test_apps_keep_serving_while_every_service_is_killed_and_are_adopted_when_they_return(slipway):
    """The data plane outlives the control plane: with the supervisor, the seven services and the
    registry kill -9'd, nginx goes on serving the app (h2load: no failed request; Python's ssl: the
    local CA's certificate verifies); `slipway up` brings the platform back and the cluster adopts
    the running instances (same containers, same processes), and a push deploys again."""
    s = slipway
    p = Project(s, "dataplane")
    _, answer = p.push({"www/version.txt": "steady\n"}, "steady")
    p.watch(answer["deployment_id"])
    instances = runc_instances(s)
    assert instances and p.get("/version.txt") == (200, "steady\n")

    load = local.H2Load(s.https_port, p.host)
    load.start()
    try:
        local.wait_until(lambda: load.rounds >= 1, 60, "h2load did not finish a round")
        victims = {name: s.pid(name) for name in ["supervisor", *SERVICES, "registry"]}
        for name, pid in victims.items():  # the supervisor first: nothing comes back on its own
            os.kill(pid, signal.SIGKILL)
        local.wait_until(lambda: not any(alive(pid) for pid in victims.values()), 30, "the platform's processes did not die")
        down_at = load.rounds
        # Served all along while nothing of the control plane runs.
        local.wait_until(lambda: load.rounds >= down_at + 3, 60, "h2load stalled while the control plane was down")
        assert p.get("/version.txt") == (200, "steady\n")
        assert not any(alive(pid) for pid in victims.values())
        s.up()
        back_at = load.rounds
        local.wait_until(lambda: load.rounds >= back_at + 2, 60, "h2load stalled after the platform came back")
    finally:
        load.stop()
    assert (load.failed, load.errored, load.non2xx) == (0, 0, 0), load.outputs[:1]
    assert load.succeeded == 100 * load.rounds and load.rounds >= 6
    # Adopted, not restarted: the same containers with the same processes.
    assert runc_instances(s) == instances
    s.channel.close()
    s.channel = grpc.insecure_channel(f"127.0.0.1:{s.ports['gateway']}")
    from slipway.api.v1 import api_pb2_grpc
    s.stub = api_pb2_grpc.SlipwayStub(s.channel)
    _, answer = p.push({"www/version.txt": "after the outage\n"}, "after the outage")
    p.watch(answer["deployment_id"])
    assert p.get("/version.txt") == (200, "after the outage\n")
    p.cli("delete", "hello")


def test_a_push_while_the_pipeline_is_down_is_accepted_and_deployed_once_it_is_back(slipway):
    """The pipeline killed and kept down (its supervisor paused): a push is answered 202 RECEIVED, on
    disk; once the supervisor runs again and restarts the pipeline, the gateway delivers it on its
    own (no redelivery) and the commit serves."""
    s = slipway
    p = Project(s, "pipeline-down")
    _, answer = p.push({"www/version.txt": "first\n"}, "first")
    p.watch(answer["deployment_id"])
    supervisor, pipeline = s.pid("supervisor"), s.pid("pipeline")
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(pipeline, signal.SIGKILL)
        local.wait_until(lambda: not alive(pipeline), 10, "the pipeline did not die")
        _, answer = p.push({"www/version.txt": "pushed while the pipeline was down\n"}, "while down")
        assert answer["outcome"] == "DELIVERY_RECEIVED" and "deploys it once it does" in answer["reason"], answer
        assert "deployment_id" not in answer
    finally:
        os.kill(supervisor, signal.SIGCONT)

    def delivered():
        listed = s.cli("webhook", "deliveries", "hello", *p.target, "-o", "json", check=False)
        if listed.returncode != 0:
            return None  # the pipeline is still starting: the CLI names the service through it
        found = next(d for d in json.loads(listed.stdout) if d["id"] == answer["delivery"])
        return found if found["outcome"] == "DELIVERY_DEPLOYED" else None

    local.wait_until(delivered, 60, "the gateway did not deliver the push once the pipeline was back")
    p.watch(delivered()["deployment_id"])
    assert p.get("/version.txt") == (200, "pushed while the pipeline was down\n")
    p.cli("delete", "hello")


def test_default_domains_are_unique_across_organizations(slipway):
    """Two organizations, each with service `hello` in an environment `twins`: the second gets another
    default domain when its service is created (before any deployment), each domain serves its own
    organization's app, and the first keeps the plain <service>-<environment> name."""
    s = slipway
    first, second = Project(s, "twin-a", env="twins"), Project(s, "twin-b", env="twins")
    assert first.service["domain_label"] == "hello-twins", first.service
    label = second.service["domain_label"]
    assert label.startswith("hello-twins-") and label != first.service["domain_label"], second.service
    # The label is the service's: shown before the first deployment, and by service show.
    shown = s.json("service", "show", "hello", *second.target)
    assert shown["domain_label"] == label and "default_domain" not in shown, shown
    for project in (first, second):
        _, answer = project.push({"www/index.html": f"<h1>{project.name}</h1>\n"}, f"{project.name}'s page")
        project.watch(answer["deployment_id"])
    for project, other in ((first, second), (second, first)):
        shown = s.json("service", "show", "hello", *project.target)
        assert shown["default_domain"] == project.host, shown
        status, body = project.get()
        assert status == 200 and project.name in body and other.name not in body, (project.host, status, body)
    # Deleted, a service's label is kept for its environment: another organization's new `hello` in
    # a `twins` environment gets neither, while the second organization re-creating it gets its own back.
    for project in (first, second):
        project.cli("delete", "hello")
    third = Project(s, "twin-c", env="twins")
    assert third.service["domain_label"] not in ("hello-twins", label), third.service
    again = s.json("service", "create", "hello", *second.target, "--git", second.bare, "--port", "8080:public")
    assert again["domain_label"] == label and again["id"] != second.service["id"], again
    for project in (second, third):
        project.cli("delete", "hello")


def test_an_organizations_quotas_are_read_by_its_members_and_changed_by_the_operator_alone(slipway):
    """`slipway quota show` through the gateway with an organization's token; `slipway quota set`
    with the operator identity of the platform's data directory, straight to the pipeline (the
    public API has no way to change a quota); over its own quota, the organization is refused."""
    s = slipway
    s.cli("org", "create", "quota-a")
    admin = s.json("token", "create", "boss", "--role", "admin", "--org", "quota-a")["secret"]
    projects = lambda shown: next(q for q in shown["quotas"] if q["name"] == "projects")
    shown = s.json("quota", "show", "--org", "quota-a", token=admin)
    assert projects(shown)["used"] == 0 and projects(shown)["limit"] == 50 and not projects(shown)["overridden"], shown
    # Not through the gateway, whatever the token.
    set_through_gateway = s.channel.unary_unary("/slipway.api.v1.Slipway/SetOrganizationQuotas",
                                                request_serializer=s.pb.SetOrganizationQuotasRequest.SerializeToString,
                                                response_deserializer=s.pb.OrganizationQuotas.FromString)
    with pytest.raises(grpc.RpcError) as error:
        set_through_gateway(s.pb.SetOrganizationQuotasRequest(organization_id=shown["organization_id"], limits={"projects": 1000}), metadata=s.md(admin))
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    # The operator's, on the platform's machine.
    changed = s.json("quota", "set", "--org", "quota-a", "projects=1")
    assert projects(changed)["limit"] == 1 and projects(changed)["overridden"], changed
    s.cli("project", "create", "one", "--org", "quota-a", token=admin)
    refused = s.cli("project", "create", "two", "--org", "quota-a", token=admin, check=False)
    assert refused.returncode == 6 and "quota of 1" in refused.stderr and "slipway quota set projects=N" in refused.stderr, refused.stderr
    assert "operator" in s.cli("quota", "show", "--org", "quota-a", token=admin).stdout
    bad = s.cli("quota", "set", "--org", "quota-a", "rockets=3", check=False)
    assert bad.returncode == 2 and "unknown quota" in bad.stderr, bad.stderr
    s.json("quota", "set", "--org", "quota-a", "--reset", "projects")
    s.cli("project", "create", "two", "--org", "quota-a", token=admin)
    assert projects(s.json("quota", "show", "--org", "quota-a", token=admin))["used"] == 2


def test_a_custom_domain_waits_for_its_organizations_ownership_record_and_does_not_fail_the_deployment(slipway):
    """Through `slipway up`: a service with a custom domain no DNS knows deploys (the domain is not
    routed), its CERTIFICATE step names the TXT record to add, and `service show` gives it. The
    record's value is the organization's: the same for its other service taking the domain over,
    another for another organization."""
    s = slipway
    p = Project(s, "owner-a", env="owned")
    s.cli("service", "update", "hello", *p.target, "--domain", "shop.owner.test")
    _, answer = p.push({"www/index.html": "<h1>owner-a</h1>\n"}, "owner-a's page")
    _, ended = p.watch(answer["deployment_id"])
    shown = s.json("service", "show", "hello", *p.target)
    [domain] = shown["custom_domains"]
    assert domain["domain"] == "shop.owner.test" and domain["state"] != "VERIFIED", domain
    assert domain["txt_name"] == "_slipway-challenge.shop.owner.test" and domain["txt_value"].startswith("slipway-verify="), domain
    assert domain["txt_value"] in domain["reason"], domain
    certificate = [step for step in ended["services"][0]["steps"] if step["step"] == "CERTIFICATE"]
    assert certificate and certificate[0]["status"] == "STEP_SUCCEEDED" and domain["txt_value"] in certificate[0]["message"], ended
    # Not routed: the name is nobody's yet.
    assert through_load_balancer(s, "shop.owner.test")[0] != 200
    assert p.get()[0] == 200
    # Another organization, once the domain is free, is asked for another value.
    s.cli("service", "update", "hello", *p.target, "--domain", "")
    other = Project(s, "owner-b", env="owned-b")
    s.cli("service", "update", "hello", *other.target, "--domain", "shop.owner.test")
    _, answer = other.push({"www/index.html": "<h1>owner-b</h1>\n"}, "owner-b's page")
    other.watch(answer["deployment_id"])
    [theirs] = s.json("service", "show", "hello", *other.target)["custom_domains"]
    assert theirs["txt_value"].startswith("slipway-verify=") and theirs["txt_value"] != domain["txt_value"], (theirs, domain)
    for project in (p, other):
        project.cli("delete", "hello")


def test_a_push_of_a_released_commit_is_ignored_naming_the_release(slipway):
    """The replay check beyond delivery ids: a signed push of the commit the service runs, or of an
    earlier release's (deployed by hand, so no delivery of it exists), deploys nothing."""
    s = slipway
    p = Project(s, "released")
    svc, secret = p.service["id"], p.webhook["secret"]
    p.cli("service", "update", "hello", "--auto-deploy", "off")
    first, answer = p.push({"www/index.html": "<h1>first</h1>\n"}, "first")
    assert answer["outcome"] == "DELIVERY_IGNORED" and "auto-deploy is off" in answer["reason"], answer
    deployed = s.json("deploy", "hello", *p.target)
    assert deployed["status"] == "DEPLOYED", deployed
    p.cli("service", "update", "hello", "--auto-deploy", "on")

    def push(after):
        return {"ref": "refs/heads/main", "before": "0" * 40, "after": after,
                "commits": [{"id": after, "added": [], "modified": ["www/index.html"], "removed": []}]}

    status, answer = deliver(s, svc, secret, push(first))
    assert (status, answer["outcome"]) == (200, "DELIVERY_IGNORED") and "is what service hello runs" in answer["reason"], answer
    second, answer = p.push({"www/index.html": "<h1>second</h1>\n"}, "second")
    p.watch(answer["deployment_id"])
    status, answer = deliver(s, svc, secret, push(first))
    assert answer["outcome"] == "DELIVERY_IGNORED" and "ran in an earlier release" in answer["reason"] and second[:12] in answer["reason"], answer
    assert p.get() == (200, "<h1>second</h1>\n")
    p.cli("delete", "hello")
