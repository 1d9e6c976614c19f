"""Workload isolation as an attacker meets it. The intruder (Tests/fixtures/intruder) is pushed to a
platform started by `slipway up` and built and deployed like any app: a Dockerfile RUN step and then
its running instance try to reach every platform port on every address of the host, the registry
without credentials, a service listening on all interfaces (as sshd would), an instance of another
environment, a raw socket, /proc/sys and the host's processes. Everything fails — while its own
public port serves through nginx and the service next to it in its environment answers by name.
Real runc, nftables, nginx and buildah.
"""
import os
import socket
import subprocess
import threading

import pytest

from conftest import ROOT
from test_gateway import Project, Slipway

FIXTURE = os.path.join(ROOT, "Tests", "fixtures", "intruder")


class HostService(threading.Thread):
    """A TCP service on every address of the host (what sshd or a database would be): it answers
    whoever connects, so a failed attempt is the firewall's doing, not an empty port."""

    def __init__(self):
        super().__init__(daemon=True)
        self.server = socket.socket()
        self.server.bind(("0.0.0.0", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.peers = []

    def run(self):
        while True:
            try:
                connection, peer = self.server.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            connection.close()


def host_addresses():
    """Every IPv4 address of the host but loopback (an instance's 127.0.0.1 is its own)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()} - {"127.0.0.1"})


def reachable(address, port):
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False


def instance_addresses(s, environment_id):
    """The addresses the cluster serves an environment's instances at (its Watch snapshot)."""
    import slipway_local as local

    (cpb, cgrpc), = local.protos("slipway/cluster/v1/cluster.proto")
    with local.platform_channel(s.data, f"127.0.0.1:{s.ports['cluster']}", "cluster") as channel:
        addresses = []
        for event in cgrpc.ClusterStub(channel).Watch(cpb.WatchRequest(environment_id=environment_id), timeout=30):
            if event.WhichOneof("event") == "snapshot_end":
                return addresses
            addresses += [instance.address for instance in event.workload.instances]
    return addresses


def findings(text):
    """{what: verdict} of the intruder's report (which must have run to its end)."""
    lines = text.splitlines()
    assert lines and lines[-1] == "done", text
    return {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in lines if line.startswith(("blocked ", "REACHED "))}


@pytest.fixture(scope="module")
def platform():
    s = Slipway()
    yield s
    s.down()


def test_an_intruder_reaches_nothing_but_its_own_environment(platform):
    s = platform
    listener = HostService()
    listener.start()

    # Another environment's app, the intruder's target.
    neighbour = Project(s, "neighbour")
    _, answer = neighbour.push({"www/index.html": "neighbour\n"}, "neighbour")
    neighbour.watch(answer["deployment_id"])
    neighbour_addresses = instance_addresses(s, neighbour.environment)
    assert neighbour_addresses and not any(a.startswith("127.") for a in neighbour_addresses), neighbour_addresses

    # What the intruder will try: each platform port (services, registry, load balancer) and the
    # host service on every host address, the host service on its network's gateway, the other
    # environment's instance. Each is reachable from the host itself.
    hosts = host_addresses()
    ports = {**{f"slipway-{name}": port for name, port in s.ports.items()},
             "registry": int(s.registry.split(":")[1]), "nginx-http": s.http_port, "nginx-https": s.https_port}
    targets = [("host-service", "GATEWAY", listener.port)]
    for address in hosts:
        targets += [(name, address, port) for name, port in ports.items()]
        targets.append(("host-service", address, listener.port))
        if reachable(address, 22):
            targets.append(("sshd", address, 22))
        assert reachable(address, listener.port), f"the host service does not answer on {address}"
    for address in neighbour_addresses:
        host, port = address.rsplit(":", 1)
        targets.append(("other-environment", host, int(port)))
        assert reachable(host, int(port)), f"the host cannot reach the neighbour's instance {address}"
    # The registry's own address (127.0.0.1 is the instance's loopback in there): any host address works.
    targets = [("registry-http", hosts[0], ports["registry"])] + targets

    intruder = Project(s, "intruder", var="BUDDY=buddy")
    files = {name: open(os.path.join(FIXTURE, name)).read() for name in ("Dockerfile", "intrude.sh", "server.sh")}
    files["www/index.html"] = "intruder\n"
    # The buddy's own Dockerfile: the same but for its RUN line (the layer cache would otherwise
    # give it the intruder's step, run with the other network).
    files["Dockerfile.buddy"] = files["Dockerfile"].replace("RUN sh /app/intrude.sh", "RUN echo buddy && sh /app/intrude.sh")
    files["targets"] = "".join(f"{what} {address} {port}\n" for what, address, port in targets)
    # Its neighbour in the same environment, built from the same repository (it serves its page at
    # /), its RUN steps without any network (a per-service setting).
    s.cli("service", "create", "buddy", *intruder.target, "--git", intruder.bare, "--build-arg", f"BASE={s.registry}/slipway/busybox:latest",
          "--dockerfile", "Dockerfile.buddy", "--port", "8080", "--health-path", "/health", "--build-network", "none")
    assert s.json("service", "show", "buddy", *intruder.target)["config"]["application"]["build_network"] == "BUILD_NETWORK_NONE"
    _, answer = intruder.push(files, "intruder")
    intruder.watch(answer["deployment_id"])
    buddy = s.json("deploy", "buddy", *intruder.target)
    assert buddy["status"] == "DEPLOYED", buddy
    # The intruder's RUN step had the builds' NAT network (a gateway), the buddy's none at all.
    def build_network(service):
        return s.cli("logs", service, "--deployment", "last", "--contains", "info gateway", *intruder.target).stdout
    assert "info gateway 10." in build_network("hello"), build_network("hello")
    assert "info gateway none" in build_network("buddy"), build_network("buddy")

    # Its public port serves through the load balancer.
    status, body = intruder.get("/")
    assert (status, body) == (200, "intruder\n")

    expected = {f"tcp {what} {address}:{port}" for what, address, port in targets if address != "GATEWAY"}
    expected |= {"registry POST", "registry DELETE", "raw-socket ping", "write /proc/sys/net/ipv4/ip_forward",
                 "write /proc/sys/kernel/sysrq", "host processes visible"}

    # From the Dockerfile's RUN step (its findings are part of the image).
    status, report = intruder.get("/build.txt")
    assert status == 200, report
    built = findings(report)
    assert set(built) >= expected and len(built) == len(targets) + 6, report
    assert [k for k, verdict in built.items() if verdict != "blocked"] == [], report
    assert "info uid_map 0 900000000 65536" in report, report

    # From the running instance (once the buddy is up, the instance tries again: redeploy).
    redeployed = s.json("redeploy", "hello", *intruder.target)
    assert redeployed["status"] == "DEPLOYED", redeployed

    def report_ready():
        status, text = intruder.get("/run.txt")
        return text if status == 200 else None

    import slipway_local as local
    local.wait_until(report_ready, 60, "the intruder's instance did not finish its attempts")
    report = report_ready()
    running = findings(report)
    reached = {k for k, verdict in running.items() if verdict == "REACHED"}
    assert [k for k in reached if not k.startswith("same-environment ")] == [], report
    assert any(k.startswith("same-environment buddy") for k in reached), report
    assert set(running) >= expected and len(running) == len(targets) + 7, report
    # Uid 0 in there is an unprivileged range of the host's.
    uid_map = [line for line in report.splitlines() if line.startswith("info uid_map ")][0].split()
    assert uid_map[2] == "0" and int(uid_map[3]) >= 1_000_000, report

    # The host service saw no connection from any instance or build (only the test's own checks).
    assert all(peer in hosts or peer == "127.0.0.1" for peer in listener.peers), listener.peers
