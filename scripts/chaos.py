#!/usr/bin/env python3
"""Chaos: many deployments while services are kill -9'd, the disk fills up and the registry stops
answering; then the invariants the platform promises are checked.

    python3 scripts/chaos.py [--bin-dir .build/debug] [--seconds 120] [--environments 3] [--seed N]
                             [--kill-every 5] [--json FILE]

The platform is what users run: `slipway up` (its supervisor restarts what crashes) on free ports,
over a data directory that is a small loop-mounted ext4 filesystem (when this machine can mount
one; else on the current one, and the disk-full fault is not injected). Each environment has one
service built from examples/hello through a bare git repository whose post-receive hook delivers the
signed webhook, as a git host would.

The driver, for --seconds: webhook pushes (each a new /version.txt), API deploys, redeploys,
restarts, rollbacks to an earlier release and cancels, on random environments, through the gateway
API (grpcio) as the admin. Meanwhile the fault thread kill -9's a random service every --kill-every
seconds (± half) and times how long until it answers its health check again (the supervisor
restarts it); once it fills the data filesystem for 10 s, once it SIGSTOPs the registry for 10 s.

Invariants, checked once every accepted request has ended:
  1. every accepted request reached a terminal state matching its intent (an error only while a
     disk-full or registry fault was on, with a reason; kills never make a deployment fail); one
     whose record is gone must have been removed by the history retention (200 kept per service);
  2. each service serves (through nginx, HTTPS, verified with the local CA) the version of the
     release its last DEPLOYED deployment recorded;
  3. the containers runc runs are exactly the instances the cluster knows of, one per service;
  4. every route belongs to a service, every service has its route, every certificate covers
     routed domains only (or the gateway's own);
  5. every deployment's log (the newest 20 per service: what the logs service keeps) has no gap
     and no duplicate (sequence numbers 1..n per stream) and, if it started, its "deployment ended" line;
  6. history is consistent: every deployment ended, no step is left RUNNING.
Exit status 1 if any is violated. A summary (and --json) has the counts and the recovery times.
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

SERVICES = local.SERVICES
# The pipeline's --pipeline-keep-deployments default: older deployments of a service are removed.
KEPT_DEPLOYMENTS = 200
# The logs service's --logs-retention-deployments-per-service default: logs of older ones are removed.
KEPT_LOGS = 20

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--bin-dir", default=os.path.join(local.ROOT, ".build", "debug"))
parser.add_argument("--seconds", type=float, default=120)
parser.add_argument("--environments", type=int, default=3)
parser.add_argument("--seed", type=int, default=int(time.time()))
parser.add_argument("--kill-every", type=float, default=5)
parser.add_argument("--settle-seconds", type=float, default=420, help="how long accepted deployments may take to end after the run")
parser.add_argument("--json", help="write the summary here too")
args = parser.parse_args()
rng = random.Random(args.seed)
bin_dir = os.path.abspath(args.bin_dir)
started = time.monotonic()


def log(message):
    print(f"[{time.monotonic() - started:7.1f}s] {message}", flush=True)


# MARK: The platform on a small filesystem

scratch = tempfile.mkdtemp(prefix="slipway-chaos-")
os.chmod(scratch, 0o755)  # isolated instances run as unprivileged uids: they pass through it
data = os.path.join(scratch, "data")
os.makedirs(data)
loop_image, mounted = os.path.join(scratch, "data.img"), False
if os.geteuid() == 0 and shutil.which("mkfs.ext4"):
    subprocess.run(["truncate", "-s", "4G", loop_image], check=True)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", loop_image], capture_output=True, text=True)
    mount = subprocess.run(["mount", "-o", "loop", loop_image, data], capture_output=True, text=True) if made.returncode == 0 else made
    mounted = mount.returncode == 0
    if not mounted:
        log(f"cannot mount a loop filesystem ({mount.stderr.strip()}): the disk-full fault is not injected")

platform = local.LocalPlatform(bin_dir, data)
env, ports, registry, https_port = platform.env, platform.ports, platform.registry, platform.https_port
slipway, pid_of = platform.cli, platform.pid
local.track_isolation(data)


summary = {"seed": args.seed, "seconds": args.seconds, "environments": args.environments, "violations": []}
violations = summary["violations"]
faults = []  # (kind, start, end) in time.time()


def violation(text):
    violations.append(text)
    log(f"VIOLATION: {text}")


try:
    platform.up()
    (api, api_grpc), (pipeline_pb, _), (cluster_pb, cluster_grpc), (network_pb, network_grpc), (certs_pb, certs_grpc), (health_pb, health_grpc) = local.protos(
        "slipway/api/v1/api.proto", "slipway/pipeline/v1/pipeline.proto", "slipway/cluster/v1/cluster.proto", "slipway/network/v1/network.proto",
        "slipway/certs/v1/certs.proto", "grpc/health/v1/health.proto")
    import grpc

    with open(os.path.join(data, "gateway", "admin-token")) as f:
        metadata = [("authorization", f"Bearer {f.read().strip()}")]
    gateway = api_grpc.SlipwayStub(grpc.insecure_channel(env["SLIPWAY_GATEWAY"]))

    def read(method, request, timeout=30):
        """A read through the gateway, waiting out its rate limit (50/s for a token) and restarts."""
        for _ in range(600):
            try:
                return method(request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as error:
                if error.code() not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                    raise
                time.sleep(0.1)
        raise RuntimeError(f"{method} kept failing")

    # MARK: Environments

    slipway("org", "create", "chaos")
    slipway("project", "create", "web", "--org", "chaos")
    environments = []
    versions = {}  # commit → the version.txt it serves
    for index in range(args.environments):
        name = f"e{index}"
        target = ["--org", "chaos", "--project", "web", "--env", name]
        slipway("env", "create", name, "--org", "chaos", "--project", "web")
        bare, work = os.path.join(data, "git", f"{name}.git"), os.path.join(data, "git", name)
        os.makedirs(bare)
        local.git(bare, "init", "--quiet", "--bare", "--initial-branch", "main")
        service = json.loads(slipway("service", "create", "hello", *target, "--git", bare, "--build-arg", f"BASE={registry}/slipway/busybox:latest",
                                     "--port", "8080:public", "--health-path", "/health", "--auto-deploy", "on", "-o", "json"))
        webhook = json.loads(slipway("webhook", "create", "hello", *target, "-o", "json"))
        subprocess.run([sys.executable, os.path.join(local.ROOT, "scripts", "git-webhook-hook.py"), "--install", bare], check=True)
        local.git(bare, "config", "slipway.webhook-url", webhook["url"])
        local.git(bare, "config", "slipway.webhook-secret", webhook["secret"])
        local.git(os.path.dirname(work), "clone", "--quiet", bare, work)
        local.git(work, "checkout", "--quiet", "-B", "main")
        shutil.copytree(os.path.join(local.ROOT, "examples", "hello"), work, dirs_exist_ok=True)
        environments.append({"name": name, "id": service["environment_id"], "service": service["id"], "work": work, "host": f"hello-{name}.localhost",
                             "pushes": 0})

    requests = []  # every accepted request: kind, environment, deployment id (or delivery), when
    lock = threading.Lock()

    def push(environment):
        number = environment["pushes"] = environment["pushes"] + 1
        version = f"{environment['name']}-v{number}"
        commit = local.commit(environment["work"], version, {"www/version.txt": version + "\n"})
        versions[commit] = version
        result = subprocess.run(["git", "-C", environment["work"], "push", "--quiet", "origin", "main"], capture_output=True, text=True,
                                env={**os.environ, **local.GIT_IDENTITY}, timeout=120)
        answers = [json.loads(line[line.index("{"):]) for line in result.stderr.splitlines() if "slipway:" in line and "{" in line]
        if not answers:
            return None  # the gateway did not answer (being restarted): not accepted; the next push carries this commit too
        answer = answers[-1]
        if answer.get("outcome") not in ("DELIVERY_DEPLOYED", "DELIVERY_RECEIVED"):
            return None
        return {"kind": "push", "deployment": answer.get("deployment_id", ""), "delivery": answer.get("delivery", ""), "version": version}

    def action(environment, kind):
        key = f"chaos-{time.time_ns()}"
        try:
            if kind == "deploy":
                answer = gateway.Deploy(api.DeployRequest(environment_id=environment["id"], idempotency_key=key), metadata=metadata, timeout=10)
            elif kind in ("redeploy", "restart"):
                method = gateway.Redeploy if kind == "redeploy" else gateway.Restart
                answer = method(api.EnvironmentActionRequest(environment_id=environment["id"], idempotency_key=key), metadata=metadata, timeout=10)
            elif kind == "rollback":
                releases = read(gateway.ListReleases, pipeline_pb.ListReleasesRequest(service_id=environment["service"])).releases
                if len(releases) < 2:
                    return None
                release = rng.choice(releases[1:])
                answer = gateway.Rollback(api.RollbackRequest(service_id=environment["service"], release_id=release.id, idempotency_key=key),
                                          metadata=metadata, timeout=10)
            elif kind == "cancel":
                answer = gateway.Deploy(api.DeployRequest(environment_id=environment["id"], idempotency_key=key), metadata=metadata, timeout=10)
                try:
                    gateway.Cancel(pipeline_pb.CancelRequest(deployment_id=answer.deployment_id), metadata=metadata, timeout=10)
                except grpc.RpcError:
                    pass  # it may have ended first, or the service is down: its outcome says which
            return {"kind": kind, "deployment": answer.deployment_id}
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                return None  # not accepted
            raise

    # Every environment deployed once before the chaos begins.
    for environment in environments:
        accepted = push(environment)
        assert accepted and accepted["deployment"], accepted
        local.wait_until(lambda: read(gateway.GetDeployment, pipeline_pb.GetDeploymentRequest(deployment_id=accepted["deployment"])).ended_unix_millis > 0,
                         300, "the first deployment did not end")

    # MARK: Faults

    stop = threading.Event()
    kills, recoveries = {name: 0 for name in SERVICES}, []

    def healthy(name):
        address = f"127.0.0.1:{ports[name]}"
        channel = grpc.insecure_channel(address) if name == "gateway" else local.platform_channel(data, address, name)
        try:
            return health_grpc.HealthStub(channel).Check(health_pb.HealthCheckRequest(), timeout=1).status == 1
        except grpc.RpcError:
            return False
        finally:
            channel.close()

    def fill_disk(seconds):
        filler = os.path.join(data, "filler")
        free = os.statvfs(data)
        size = free.f_bavail * free.f_frsize
        start = time.time()
        subprocess.run(["fallocate", "-l", str(size), filler], capture_output=True)
        log(f"disk full: {size >> 20} MiB taken for {seconds} s")
        stop.wait(seconds)
        os.remove(filler)
        faults.append(("disk-full", start, time.time() + 1))

    def pause_registry(seconds):
        pid = pid_of("registry")
        if not pid:
            return
        start = time.time()
        os.kill(pid, signal.SIGSTOP)
        log(f"registry stopped answering (SIGSTOP) for {seconds} s")
        stop.wait(seconds)
        os.kill(pid, signal.SIGCONT)
        faults.append(("registry-outage", start, time.time() + 1))

    def inject():
        disk_at = args.seconds * 0.3 if mounted else None
        registry_at = args.seconds * 0.6
        while not stop.is_set():
            elapsed = time.monotonic() - chaos_started
            if disk_at is not None and elapsed >= disk_at:
                disk_at = None
                fill_disk(10)
                continue
            if registry_at is not None and elapsed >= registry_at:
                registry_at = None
                pause_registry(10)
                continue
            if stop.wait(rng.uniform(args.kill_every / 2, args.kill_every * 1.5)):
                break
            victim = rng.choice(SERVICES)
            pid = pid_of(victim)
            if not pid:
                continue
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            kills[victim] += 1
            while not stop.is_set() and not (pid_of(victim) not in (None, pid) and healthy(victim)):
                time.sleep(0.02)
            if not stop.is_set():
                recoveries.append(time.monotonic() - killed_at)
                log(f"kill -9 {victim} (pid {pid}): serving again after {recoveries[-1]:.2f} s")

    # MARK: The run

    chaos_started = time.monotonic()
    injector = threading.Thread(target=inject)
    injector.start()
    kinds = ["push"] * 8 + ["deploy"] * 3 + ["redeploy"] * 2 + ["restart"] * 2 + ["rollback"] * 2 + ["cancel"] * 3
    attempted = 0
    while time.monotonic() - chaos_started < args.seconds:
        environment, kind = rng.choice(environments), rng.choice(kinds)
        attempted += 1
        at = time.time()
        accepted = push(environment) if kind == "push" else action(environment, kind)
        if accepted:
            accepted.update(environment=environment["name"], at=at)
            requests.append(accepted)
        time.sleep(rng.uniform(0.2, 1.0))
    stop.set()
    injector.join()
    log(f"run over: {len(requests)} of {attempted} requests accepted; waiting for them to end")

    # MARK: Settling

    # Webhook deliveries accepted while the pipeline was down: their deployment, once the gateway got it through.
    def resolve(request):
        if request["deployment"]:
            return True
        environment = next(e for e in environments if e["name"] == request["environment"])
        deliveries = read(gateway.ListDeliveries, api.ListDeliveriesRequest(service_id=environment["service"], page_size=500)).deliveries
        delivery = next((d for d in deliveries if d.id == request["delivery"]), None)
        if delivery and delivery.outcome != api.DELIVERY_RECEIVED:
            request["deployment"] = delivery.deployment_id
            request["delivery_outcome"] = api.DeliveryOutcome.Name(delivery.outcome)
            request["delivery_reason"] = delivery.reason
            return True
        return False

    def ended(request):
        if not resolve(request):
            return False
        if not request["deployment"]:
            return True
        if not request.get("ended"):
            try:
                request["ended"] = read(gateway.GetDeployment, pipeline_pb.GetDeploymentRequest(deployment_id=request["deployment"])).ended_unix_millis > 0
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # Removed by the history retention (200 per service by default): checked below.
                request["ended"] = request["pruned"] = True
        return request["ended"]

    deadline = time.monotonic() + args.settle_seconds
    while time.monotonic() < deadline and not all(ended(r) for r in requests):
        time.sleep(1)

    # MARK: Invariants

    def during_fault(start_ms, end_ms):
        return [kind for kind, start, end in faults if start * 1000 <= end_ms and start_ms <= end * 1000 + 2000]

    outcomes = {}
    deployments = {}
    for request in requests:
        if not ended(request):
            violation(f"{request['kind']} on {request['environment']} ({request['deployment'] or 'delivery ' + request['delivery']}) never ended")
            continue
        if not request["deployment"]:
            outcomes["push ignored"] = outcomes.get("push ignored", 0) + 1
            if "superseded" not in request.get("delivery_reason", ""):
                violation(f"push {request['version']}: delivery ended {request.get('delivery_outcome')} without a deployment: {request.get('delivery_reason')}")
            continue
        if request.get("pruned"):
            outcomes["pruned by retention"] = outcomes.get("pruned by retention", 0) + 1
            continue
        deployment = read(gateway.GetDeployment, pipeline_pb.GetDeploymentRequest(deployment_id=request["deployment"]))
        deployments[deployment.id] = deployment
        status = pipeline_pb.DeploymentStatus.Name(deployment.status)
        outcomes[f"{request['kind']} {status}"] = outcomes.get(f"{request['kind']} {status}", 0) + 1
        wanted = {"push": "DEPLOYED", "deploy": "DEPLOYED", "redeploy": "DEPLOYED", "rollback": "DEPLOYED", "restart": "RESTARTED", "cancel": "CANCELED"}[request["kind"]]
        service = deployment.services[0]
        fine = status == wanted or status == "SKIPPED" and "superseded" in service.reason or request["kind"] == "cancel" and status == "DEPLOYED"
        if not fine and status.endswith("_ERROR"):
            overlapping = during_fault(deployment.created_unix_millis, deployment.ended_unix_millis)
            fine = bool(overlapping) and bool(service.reason)
            if fine:
                request["fault"] = overlapping
                summary.setdefault("failed_in_faults_reasons", []).append(f"{'/'.join(overlapping)}: {status}: {service.reason[:300]}")
        if not fine:
            violation(f"{request['kind']} on {request['environment']}: deployment {deployment.id} ended {status}: {service.reason}")

    # 2. What serves is the last DEPLOYED deployment's release.
    context = ssl.create_default_context(cafile=os.path.join(data, "certs", "local-ca.crt"))

    def served(host):
        try:
            with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET /version.txt HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
            head, _, body = answer.decode(errors="replace").partition("\r\n\r\n")
            return head.split(" ")[1], body.strip()
        except (OSError, ssl.SSLError) as error:
            return None, repr(error)

    for environment in environments:
        history = read(gateway.ListDeployments, pipeline_pb.ListDeploymentsRequest(environment_id=environment["id"], page_size=500)).deployments
        pruned = [r for r in requests if r.get("pruned") and r["environment"] == environment["name"]]
        if pruned and len(history) < KEPT_DEPLOYMENTS:
            violation(f"{environment['name']}: {len(pruned)} accepted deployments are gone, yet its history holds {len(history)} (< {KEPT_DEPLOYMENTS} kept)")
        for deployment in history:
            deployments.setdefault(deployment.id, deployment)
        deployed = [d for d in history if d.status == pipeline_pb.DEPLOYED and d.action == pipeline_pb.DEPLOY]
        last = max(deployed, key=lambda d: d.ended_unix_millis)
        releases = {r.id: r for r in read(gateway.ListReleases, pipeline_pb.ListReleasesRequest(service_id=environment["service"], page_size=500)).releases}
        release = releases.get(last.services[0].release_id)
        expected = versions.get(release.commit) if release else None
        code, body = served(environment["host"])
        if code != "200" or body != expected:
            violation(f"{environment['host']} serves {code} {body!r}; its last DEPLOYED deployment {last.id} recorded release {last.services[0].release_id} ({expected})")

    # 3. Instances: what runc runs is what the cluster knows of.
    cluster = cluster_grpc.ClusterStub(local.platform_channel(data, f"127.0.0.1:{ports['cluster']}", "cluster"))
    known = set()
    for environment in environments:
        workload = cluster_pb.Workload(environment_id=environment["id"], service_id=environment["service"], service_name="hello")
        instances = cluster.ListInstances(cluster_pb.WorkloadRequest(workload=workload), timeout=10).instances
        known |= {i.id for i in instances}
        if len(instances) != 1:
            violation(f"{environment['name']}: the cluster knows of {len(instances)} instances, not 1: {[i.id for i in instances]}")
    listed = subprocess.run(["runc", "--root", os.path.join(data, "cluster", "runc"), "list", "-f", "json"], capture_output=True, text=True).stdout
    running = {c["id"] for c in json.loads(listed or "[]") or [] if c["status"] == "running"}
    if running != known:
        violation(f"runc runs {sorted(running - known)} the cluster does not know of; the cluster's {sorted(known - running)} do not run")

    # 4. Routes and certificates.
    network = network_grpc.NetworkStub(local.platform_channel(data, f"127.0.0.1:{ports['network']}", "network"))
    routes = network.ListRoutes(network_pb.ListRoutesRequest(), timeout=10).routes
    routed = {r.route.key.service_id for r in routes}
    if routed != {e["service"] for e in environments}:
        violation(f"routes for {sorted(routed)}; services {sorted(e['service'] for e in environments)}")
    domains = {r.default_domain for r in routes} | {d.domain for r in routes for d in r.domains}
    certs = certs_grpc.CertsStub(local.platform_channel(data, f"127.0.0.1:{ports['certs']}", "certs"))
    for certificate in certs.ListCertificates(certs_pb.ListCertificatesRequest(), timeout=10).certificates:
        stray = [d for d in certificate.domains if d not in domains and not d.startswith("api.")]
        if stray:
            violation(f"certificate {certificate.id} covers {stray}, which no route has")

    # 5. Logs: no gap, no duplicate, the end line.
    checked_logs = 0
    # The logs service keeps the newest 20 deployments' logs per service (--logs-retention-deployments-per-service).
    newest = sorted(deployments.values(), key=lambda d: d.created_unix_millis, reverse=True)
    by_environment = {}
    for deployment in newest:
        by_environment.setdefault(deployment.environment_id, [])
        if len(by_environment[deployment.environment_id]) < KEPT_LOGS:
            by_environment[deployment.environment_id].append(deployment)
    for deployment in (d for kept in by_environment.values() for d in kept):
        lines, token = [], ""
        while True:
            page = read(gateway.QueryLogs, api.LogsQueryRequest(deployment_id=deployment.id, page_size=1000, page_token=token))
            lines += page.lines
            token = page.next_page_token
            if not token:
                break
        streams = {}
        for line in lines:
            streams.setdefault((line.stream.deployment_id, line.stream.service_id), []).append(line.seq)
        for key, seqs in streams.items():
            if sorted(seqs) != list(range(1, len(seqs) + 1)):
                violation(f"deployment {deployment.id} log stream {key}: sequence numbers {sorted(seqs)[:5]}… are not 1..{len(seqs)}")
        # A deployment that never started (canceled or superseded while it waited) has no log.
        if deployment.started_unix_millis > 0 and not any("deployment ended" in line.text for line in lines):
            violation(f"deployment {deployment.id} ({pipeline_pb.DeploymentStatus.Name(deployment.status)}): its log has no 'deployment ended' line")
        checked_logs += 1

    # 6. History.
    for deployment in deployments.values():
        if deployment.ended_unix_millis == 0:
            violation(f"deployment {deployment.id} has not ended")
        for service in deployment.services:
            if any(s.status == pipeline_pb.STEP_RUNNING for s in service.steps):
                violation(f"deployment {deployment.id}: a step of {service.service_name} is still RUNNING")

    ordered = sorted(recoveries)
    summary.update({
        "requests_accepted": len(requests), "requests_attempted": attempted, "outcomes": outcomes, "deployments_checked": len(deployments),
        "logs_checked": checked_logs, "kills": kills, "kills_total": sum(kills.values()),
        "recovery_p50_s": round(statistics.median(ordered), 3) if ordered else None,
        "recovery_p99_s": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3) if ordered else None,
        "recovery_max_s": round(ordered[-1], 3) if ordered else None,
        "faults": [{"kind": kind, "seconds": round(end - start, 1)} for kind, start, end in faults],
        "failed_in_faults": sum(1 for r in requests if r.get("fault")),
        "disk_full_injected": mounted,
    })
finally:
    slipway("down", check=False)
    if os.environ.get("CHAOS_KEEP"):
        log(f"kept {scratch} (CHAOS_KEEP)")
    else:
        if mounted:
            subprocess.run(["umount", data], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)

print(json.dumps(summary, indent=2))
if args.json:
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=2)
sys.exit(1 if violations else 0)
