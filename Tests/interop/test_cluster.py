"""slipway-cluster through grpcio. Running status: Watch follows a workload from running to a crash
loop (with the exit status the service read as the containers' subreaper) to stopped.

Application logs: slipway-cluster ships every instance's stdout and stderr to slipway-logs, line
by line with the instance id, and neither loses nor repeats a line when the cluster service is
killed, when the logs service is down for a while, when the instance is replaced (its last words
on SIGTERM included), or when the cluster's record of what it shipped is behind the logs service.
The output files stay small on disk (acknowledged output is given back), and an instance that
writes more than the backlog limit while the logs service is away loses its oldest unshipped
output with a line saying so.

Real parts: docker-registry (seeded busybox), runc through slipway-cluster, slipway-logs, grpcio.
Both services take only mutual TLS (their identities under the shared data directory); grpcio calls
them as the operator.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import grpc
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
import slipway_local as local  # noqa: E402

LINES = 1500
# Serves on $PORT (readiness), writes LINES numbered lines to stdout and stderr in bursts, then
# waits; on SIGTERM says goodbye on stdout and exits.
SCRIPT = f"""trap 'echo "goodbye from $HOSTNAME"; exit 0' TERM
httpd -f -p $PORT &
i=0
while [ $i -lt {LINES} ]; do
  echo "out $i"; echo "err $i" >&2
  i=$((i+1))
  if [ $((i % 50)) -eq 0 ]; then echo $i > /written; sleep 0.05; fi
done
echo $i > /written
while true; do sleep 1 & wait $!; done
"""


class Platform:
    def __init__(self, *cluster_args):
        from conftest import BIN_DIR

        self.bin = BIN_DIR
        (self.cpb, cgrpc), (self.lpb, lgrpc) = local.protos("slipway/cluster/v1/cluster.proto", "slipway/logs/v1/logs.proto")
        self.cgrpc, self.lgrpc = cgrpc, lgrpc
        self.data = tempfile.mkdtemp(prefix="slipway-applogs-")
        self.registry_port, self.cluster_port, self.logs_port = local.free_port(), local.free_port(), local.free_port()
        self.cluster_args = cluster_args
        self.registry = local.start_registry(os.path.join(self.data, "registry"), self.registry_port)
        self.image = f"127.0.0.1:{self.registry_port}/slipway/busybox:latest"
        self.logs = self.cluster = None
        self.start_logs()
        self.start_cluster()
        self.workload = self.cpb.Workload(environment_id="env-logs", service_id="svc-logs", service_name="talker")

    def start_logs(self):
        self.logs = local.start_service(self.bin, "logs", self.data, self.logs_port)
        self.logs_stub = self.lgrpc.LogsStub(local.platform_channel(self.data, f"127.0.0.1:{self.logs_port}", "logs"))

    def start_cluster(self):
        self.cluster = local.start_service(self.bin, "cluster", self.data, self.cluster_port, "--cluster-traffic", "none",
                                           "--logs-address", f"127.0.0.1:{self.logs_port}", *self.cluster_args)
        self.cluster_stub = self.cgrpc.ClusterStub(local.platform_channel(self.data, f"127.0.0.1:{self.cluster_port}", "cluster"))

    def kill9(self, proc):
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def deploy(self, script=SCRIPT):
        response = self.cluster_stub.Deploy(self.cpb.DeployRequest(
            workload=self.workload, image=self.image, command=["sh", "-c", script], stop_grace_seconds=5,
            readiness=self.cpb.Readiness(tcp=self.cpb.TcpCheck())), timeout=120)
        return response.instances[0].id

    def lines(self, instance):
        """Every line of `instance` in the application log stream, in order: (source, text)."""
        request = self.lpb.QueryRequest(stream=self.lpb.StreamKey(environment_id="env-logs", service_id="svc-logs"),
                                        filter=self.lpb.Filter(instance_id=instance), page_size=1000)
        lines = []
        while True:
            try:
                page = self.logs_stub.Query(request, timeout=10)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return []
                raise
            lines += [(self.lpb.Source.Name(line.source), line.text) for line in page.lines]
            if not page.next_page_token:
                return lines
            request.page_token = page.next_page_token

    def instance_file(self, instance, name="stdout.log"):
        return os.path.join(self.data, "cluster", "instances", instance, name)

    def printed(self, instance):
        """Lines the instance says it has written so far (its /written; the output file cannot
        tell: its shipped part reads as zeros once the cluster has given its blocks back)."""
        try:
            with open(self.instance_file(instance, "bundle/rootfs/written")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def close(self):
        try:
            self.cluster_stub.Delete(self.cpb.WorkloadRequest(workload=self.workload, stop_grace_seconds=1), timeout=60)
        except grpc.RpcError:
            pass
        local.stop(self.cluster, self.logs, self.registry)
        for instance in subprocess.run(["runc", "--root", os.path.join(self.data, "cluster", "runc"), "list", "-q"],
                                       capture_output=True, text=True).stdout.split():
            subprocess.run(["runc", "--root", os.path.join(self.data, "cluster", "runc"), "delete", "--force", instance], capture_output=True)
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture
def platform():
    p = Platform()
    yield p
    p.close()


def expected(source, prefix):
    return [(source, f"{prefix} {i}") for i in range(LINES)]


def by_source(lines, source):
    return [line for line in lines if line[0] == source]


def test_every_line_arrives_once_through_kills_outages_and_replacement(platform):
    p = platform
    first = p.deploy()

    # Lines arrive while the instance writes them.
    local.wait_until(lambda: len(p.lines(first)) >= 100, 30, "no application lines reached the logs service")
    # The cluster service dies mid-stream; the instance writes on without it.
    p.kill9(p.cluster)
    local.wait_until(lambda: p.printed(first) >= LINES // 2, 30, "the instance stopped writing")
    # The logs service is down for a while too, while the cluster comes back.
    p.kill9(p.logs)
    p.start_cluster()
    local.wait_until(lambda: p.printed(first) >= LINES, 60, "the instance did not finish writing")
    p.start_logs()
    local.wait_until(lambda: len(p.lines(first)) >= 2 * LINES, 60, "not every line arrived after the restarts")
    lines = p.lines(first)
    assert by_source(lines, "STDOUT") == expected("STDOUT", "out")
    assert by_source(lines, "STDERR") == expected("STDERR", "err")

    # The cluster's record falls behind what the logs service holds (as if it was killed between an
    # acknowledgement and writing its record): the restarted service skips what is already there.
    p.kill9(p.cluster)
    record_path = os.path.join(p.data, "cluster", "applogs", f"{first}.json")
    with open(record_path) as f:
        record = json.load(f)
    assert record["stdout"] > 0 and record["stderr"] > 0
    record["stdout"], record["stderr"] = record["stdout"] // 3, 0
    with open(record_path, "w") as f:
        json.dump(record, f)
    p.start_cluster()
    local.wait_until(lambda: json.load(open(record_path))["stderr"] > 0, 30, "the restarted cluster did not resume")

    # A new version replaces the instance: what the old one says on SIGTERM still arrives, from its
    # retired file, and then the retired file goes.
    second = p.deploy()
    assert second != first
    local.wait_until(lambda: any(text.startswith("goodbye") for _, text in p.lines(first)), 30, "the old instance's last words never arrived")
    local.wait_until(lambda: os.listdir(os.path.join(p.data, "cluster", "applogs", "retired")) == [], 30, "the retired output was not removed")
    assert not os.path.exists(record_path)
    lines = p.lines(first)
    assert by_source(lines, "STDOUT") == expected("STDOUT", "out") + [("STDOUT", lines[-1][1])]
    assert by_source(lines, "STDERR") == expected("STDERR", "err")
    local.wait_until(lambda: len(p.lines(second)) == 2 * LINES, 60, "the new instance's lines did not all arrive")


# Writes `burst N first` lines of about 100 bytes at start and `burst N second` on SIGHUP; /burst
# names the last burst written to its end.
BURSTS = """burst() { i=0; while [ $i -lt $1 ]; do echo "$2 $i ................................................................................"; i=$((i+1)); done; echo "$2 end"; echo "$2" > /burst; }
trap 'burst 30000 second' HUP
httpd -f -p $PORT &
burst 8000 first
while true; do sleep 1 & wait $!; done
"""


def allocated(path):
    return os.stat(path).st_blocks * 512


def test_output_files_stay_small_and_a_runaway_backlog_is_cut_with_a_marker():
    p = Platform("--cluster-output-backlog-mib", "1")
    try:
        instance = p.deploy(BURSTS)
        stdout = p.instance_file(instance)
        # About 800 kB written (within the backlog limit) and shipped: the file keeps its size, but its
        # acknowledged blocks are given back.
        local.wait_until(lambda: ("STDOUT", "first end") in p.lines(instance), 60, "the first burst did not arrive")
        lines = p.lines(instance)
        assert [text.split()[1] for _, text in lines if text.startswith("first ")] == [str(i) for i in range(8000)] + ["end"]
        assert os.path.getsize(stdout) > 700_000
        local.wait_until(lambda: allocated(stdout) <= 128 * 1024, 10, f"the shipped output still takes {allocated(stdout)} bytes on disk")

        # The logs service goes away; the instance writes 3 MB, past the 1 MiB backlog limit.
        p.kill9(p.logs)
        subprocess.run(["runc", "--root", os.path.join(p.data, "cluster", "runc"), "kill", instance, "HUP"], check=True)
        burst = p.instance_file(instance, "bundle/rootfs/burst")
        local.wait_until(lambda: open(burst).read() == "second\n", 60, "the second burst was not written")
        p.start_logs()
        local.wait_until(lambda: ("STDOUT", "second end") in p.lines(instance), 60, "the second burst's end did not arrive")
        lines = p.lines(instance)
        markers = [i for i, (_, text) in enumerate(lines) if text.startswith("[slipway] ")]
        assert len(markers) == 1, [lines[i] for i in markers]
        assert "bytes of stdout dropped" in lines[markers[0]][1] and "1 MiB" in lines[markers[0]][1], lines[markers[0]]
        # Before the marker, the whole first burst; after it, the newest part of the second, in order
        # (the first line after the cut may be the end of a cut line).
        assert [text for _, text in lines[:markers[0]]] == [text for _, text in lines if text.startswith("first ")]
        kept = [text.split()[1] for _, text in lines[markers[0] + 2:]]
        assert kept[-1] == "end" and 4000 < len(kept) < 30000, len(kept)
        assert kept[:-1] == [str(i) for i in range(int(kept[0]), 30000)]
        local.wait_until(lambda: allocated(stdout) <= 128 * 1024, 10, f"the shipped output still takes {allocated(stdout)} bytes on disk")
    finally:
        p.close()


def test_bad_deploys_are_refused_with_what_to_fix(platform):
    p = platform
    cpb = p.cpb
    bad = [
        (dict(strategy=cpb.Strategy(rolling=cpb.RollingUpdate(max_surge=4294967295, max_unavailable=1))), "max_surge and max_unavailable are 0 to 50"),
        (dict(strategy=cpb.Strategy(rolling=cpb.RollingUpdate(max_surge=0, max_unavailable=0))), "not both 0"),
        (dict(readiness=cpb.Readiness(http=cpb.HttpCheck(path="/a b"))), "http.path"),
        (dict(readiness=cpb.Readiness(exec=cpb.ExecCheck(command=[]))), "readiness.exec.command"),
        (dict(liveness=cpb.Liveness(period_seconds=1)), "liveness.check is required"),
        (dict(replicas=51), "replicas"),
        # Numbers that once reached arithmetic which traps (a liveness timeout over 24 days stopped the service).
        (dict(liveness=cpb.Liveness(tcp=cpb.TcpCheck(), timeout_seconds=4294967295)), "liveness.timeout_seconds must be at most 3600, got 4294967295"),
        (dict(readiness=cpb.Readiness(tcp=cpb.TcpCheck(), timeout_millis=4294967295)), "readiness.timeout_millis must be at most 3600000"),
        (dict(ready_timeout_seconds=4294967295), "ready_timeout_seconds must be at most 86400"),
        (dict(stop_grace_seconds=4294967295), "stop_grace_seconds must be at most 3600"),
        (dict(memory_mib=4294967295), "memory_mib must be at most 1048576"),
        # Text that reaches a process's environment and command line.
        (dict(environment={"A=B": "x"}), "without '='"),
        (dict(environment={f"V{i}": "x" for i in range(2001)}), "at most 2000 variables"),
        (dict(environment={"BIG": "x" * 140000}), "at most 2000 variables of 131072 bytes"),
        (dict(command=["x"] * 65), "command: at most 64 arguments"),
        (dict(command=["x" * 5000]), "command: at most 64 arguments of 4096 bytes"),
    ]
    pid = p.cluster.pid
    for fields, words in bad:
        with pytest.raises(grpc.RpcError) as error:
            p.cluster_stub.Deploy(cpb.DeployRequest(workload=p.workload, image=p.image, **fields), timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (fields, error.value.details())
        assert words in error.value.details(), error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        p.cluster_stub.Deploy(cpb.DeployRequest(workload=cpb.Workload(environment_id="env logs", service_id="s", service_name="x"), image=p.image))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "A-Z, a-z, 0-9" in error.value.details()
    for image in ("", "not an image", "registry.example.com/X:1", 'host"x.example.com/x:1'):
        with pytest.raises(grpc.RpcError) as error:
            p.cluster_stub.Deploy(cpb.DeployRequest(workload=p.workload, image=image))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image" in error.value.details(), (image, error.value.details())
    # Every call checks the workload's names, whichever driver runs.
    with pytest.raises(grpc.RpcError) as error:
        p.cluster_stub.ListInstances(cpb.WorkloadRequest(workload=cpb.Workload(environment_id="e", service_id="s", service_name="Bad Name")))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "service_name" in error.value.details()
    # Still up, the same process.
    assert p.cluster_stub.ListInstances(cpb.WorkloadRequest(workload=p.workload)).instances == []
    assert p.cluster.poll() is None and p.cluster.pid == pid


def test_watch_follows_a_crash_loop_with_the_exit_status(platform):
    p = platform
    cpb = p.cpb
    events = p.cluster_stub.Watch(cpb.WatchRequest(environment_id="env-logs"), timeout=60)
    first = next(events)
    assert first.WhichOneof("event") == "snapshot_end", first  # nothing deployed in this environment yet

    seen = []

    def until(status):
        for event in events:
            if event.WhichOneof("event") == "workload":
                seen.append((cpb.RunningStatus.Name(event.workload.status), [i.last_exit for i in event.workload.instances]))
                if event.workload.status == status:
                    return event.workload
        raise AssertionError(f"the watch ended before {cpb.RunningStatus.Name(status)}: {seen}")

    # Serves for a second, then exits with status 3, again and again.
    p.deploy("httpd -p 0.0.0.0:$PORT; sleep 1; exit 3")
    assert until(cpb.RUNNING_STATUS_RUNNING).instances[0].running_status == cpb.RUNNING_STATUS_RUNNING
    crashed = until(cpb.RUNNING_STATUS_ERROR).instances[0]
    assert crashed.last_exit == "exited with status 3" and not crashed.oom_killed
    assert crashed.next_restart_unix_millis > 0
    # Started again after its backoff, and it exits again.
    until(cpb.RUNNING_STATUS_RUNNING)
    again = until(cpb.RUNNING_STATUS_ERROR).instances[0]
    assert again.restarts == 1 and again.last_exit == "exited with status 3"
    p.cluster_stub.Stop(cpb.WorkloadRequest(workload=p.workload, stop_grace_seconds=1))
    until(cpb.RUNNING_STATUS_STOPPED)
    events.cancel()


FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "SlipwayClusterTests", "Fixtures", "kubernetes")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


class RecordedAPIServer:
    """A Kubernetes API server replaying responses recorded from real ones (Fixtures/kubernetes,
    SOURCES.md): applies are answered with the object as sent, the Deployment as rolled out, the
    workload's pods with a recorded running pod, its log with a recorded log. Every request is kept."""

    def __init__(self):
        import http.server
        import threading

        server = self
        self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self, status, body, content_type="application/json"):
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PATCH(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                server.requests.append(("PATCH", self.path, self.headers.get("Content-Type"), self.headers.get("Authorization"), body))
                self.answer(200, body if "apply-patch" in self.headers.get("Content-Type", "") else '{"kind":"Scale","apiVersion":"autoscaling/v1"}')

            def do_GET(self):
                server.requests.append(("GET", self.path, None, self.headers.get("Authorization"), ""))
                if "/log?" in self.path:
                    self.answer(200, fixture("pod-log-timestamps.txt"), "text/plain")
                elif "/pods?" in self.path:
                    self.answer(200, '{"kind":"PodList","apiVersion":"v1","items":[%s]}' % fixture("pod-running.json"))
                elif "/deployments/" in self.path:
                    self.answer(200, fixture("deployment-complete.json"))
                else:
                    self.answer(404, fixture("status-not-found.json"))

            def do_DELETE(self):
                server.requests.append(("DELETE", self.path, None, self.headers.get("Authorization"), ""))
                self.answer(404 if "configmaps" in self.path else 200, fixture("status-not-found.json") if "configmaps" in self.path else "{}")

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", local.free_port()), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def rbac_need(method, path):
    """(API group, resource, verb) an API request needs (an apply may create: both are needed)."""
    parts = path.split("?")[0].strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if len(rest) <= 2:
        resource, named = "namespaces", len(rest) == 2
    else:
        resource, named = rest[2] + ("/" + rest[4] if len(rest) > 4 else ""), len(rest) > 3
    verb = {"PATCH": "patch", "DELETE": "delete"}.get(method) or ("get" if named else "list")
    return group, resource, verb


def test_the_kubernetes_driver_against_a_recorded_api_server():
    from conftest import BIN_DIR

    api = RecordedAPIServer()
    data = tempfile.mkdtemp(prefix="slipway-kube-")
    kubeconfig = os.path.join(data, "kubeconfig")
    with open(kubeconfig, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters:
- name: recorded
  cluster:
    server: http://127.0.0.1:{api.port}
users:
- name: slipway
  user:
    token: s3cret-token
contexts:
- name: recorded
  context:
    cluster: recorded
    user: slipway
current-context: recorded
""")
    logs_port, cluster_port = local.free_port(), local.free_port()
    logs = local.start_service(BIN_DIR, "logs", data, logs_port)
    cluster = local.start_service(BIN_DIR, "cluster", data, cluster_port, "--cluster-driver", "kubernetes", "--cluster-kubeconfig", kubeconfig,
                                  "--logs-address", f"127.0.0.1:{logs_port}")
    try:
        (cpb, cgrpc), (lpb, lgrpc) = local.protos("slipway/cluster/v1/cluster.proto", "slipway/logs/v1/logs.proto")
        stub = cgrpc.ClusterStub(local.platform_channel(data, f"127.0.0.1:{cluster_port}", "cluster"))
        workload = cpb.Workload(environment_id="env_4f2a9c", service_id="svc_81be", service_name="web")
        deployed = stub.Deploy(cpb.DeployRequest(
            workload=workload, image="registry.example/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", replicas=2, environment={"MODE": "production"},
            readiness=cpb.Readiness(http=cpb.HttpCheck(path="/health")),
            strategy=cpb.Strategy(rolling=cpb.RollingUpdate(max_surge=1, max_unavailable=0))), timeout=60)
        assert [(i.id, i.address, i.status) for i in deployed.instances] == [("nginx-7fb78fb6d8-2w75j", "10.44.0.229:8080", cpb.INSTANCE_RUNNING)]

        applied = [(path.split("?")[0], query) for method, path, _, _, _ in api.requests if method == "PATCH" for query in [path.split("?")[1]]]
        assert [path for path, _ in applied] == [
            "/api/v1/namespaces/slipway-env-4f2a9c",
            "/apis/networking.k8s.io/v1/namespaces/slipway-env-4f2a9c/networkpolicies/slipway-environment",
            "/api/v1/namespaces/slipway-env-4f2a9c/resourcequotas/slipway-environment",
            "/api/v1/namespaces/slipway-env-4f2a9c/limitranges/slipway-environment",
            "/api/v1/namespaces/slipway-env-4f2a9c/configmaps/web-config",
            "/api/v1/namespaces/slipway-env-4f2a9c/secrets/web-secrets", "/apis/apps/v1/namespaces/slipway-env-4f2a9c/deployments/web",
            "/api/v1/namespaces/slipway-env-4f2a9c/services/web"]
        assert all(query == "fieldManager=slipway&force=true" for _, query in applied)
        # deploy/kubernetes grants the cluster's service account all of it (and no more: checked there).
        from test_deploy_kubernetes import DRIVER_NEEDS
        needed = {rbac_need(method, path) for method, path, _, _, _ in api.requests}
        assert needed <= set(DRIVER_NEEDS), f"the driver does what deploy/kubernetes does not grant: {sorted(needed - set(DRIVER_NEEDS))}"
        assert all(auth == "Bearer s3cret-token" for _, _, _, auth, _ in api.requests)
        deployment = json.loads(next(body for method, path, _, _, body in api.requests if method == "PATCH" and "/deployments/" in path))
        assert deployment["spec"]["replicas"] == 2
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == "registry.example/web@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" and container["readinessProbe"]["httpGet"]["path"] == "/health"
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        assert deployment["spec"]["template"]["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}

        # Watch: the workload from its pods.
        events = stub.Watch(cpb.WatchRequest(environment_id="env_4f2a9c"), timeout=30)
        first = next(events)
        assert first.workload.status == cpb.RUNNING_STATUS_RUNNING and first.workload.instances[0].id == "nginx-7fb78fb6d8-2w75j"
        events.cancel()

        # The pod's log reaches the logs service, with the pod as the instance.
        logs_stub = lgrpc.LogsStub(local.platform_channel(data, f"127.0.0.1:{logs_port}", "logs"))
        request = lpb.QueryRequest(stream=lpb.StreamKey(environment_id="env_4f2a9c", service_id="svc_81be"), page_size=100)

        def shipped():
            try:
                return logs_stub.Query(request, timeout=5).lines
            except grpc.RpcError:
                return []
        local.wait_until(lambda: len(shipped()) >= 7, 30, "the pod's log did not reach the logs service")
        lines = shipped()
        assert lines[0].instance_id == "nginx-7fb78fb6d8-2w75j"
        assert lines[0].text == "2019/05/08 06:02:13 http2: Framer 0xc4207ec1c0: read HEADERS flags=END_HEADERS stream=1 len=88"
        # Followed from the last line: the next polls (sinceTime = its timestamp) add nothing twice.
        local.wait_until(lambda: sum(1 for m, p, *_ in api.requests if m == "GET" and "sinceTime=" in p) >= 2, 30, "the log was not polled again")
        assert len(shipped()) == len(lines)

        # Stop scales the Deployment to 0 through its scale subresource; Delete removes the objects.
        stub.Stop(cpb.WorkloadRequest(workload=workload))
        scale = [r for r in api.requests if r[0] == "PATCH" and r[1].endswith("/scale")]
        assert scale and scale[-1][2] == "application/merge-patch+json" and json.loads(scale[-1][4]) == {"spec": {"replicas": 0}}
        stub.Delete(cpb.WorkloadRequest(workload=workload))
        deleted = [path.split("?")[0] for method, path, *_ in api.requests if method == "DELETE"]
        assert deleted == ["/api/v1/namespaces/slipway-env-4f2a9c/services/web", "/apis/apps/v1/namespaces/slipway-env-4f2a9c/deployments/web",
                           "/api/v1/namespaces/slipway-env-4f2a9c/secrets/web-secrets", "/api/v1/namespaces/slipway-env-4f2a9c/configmaps/web-config"]
    finally:
        local.stop(cluster, logs)
        api.close()
        shutil.rmtree(data, ignore_errors=True)
