"""slipway-cluster through grpcio. Running status: Watch follows a workload from running to a crash
loop (with the exit status the service read as the containers' subreaper) to stopped.

Application logs: slipway-cluster ships every instance's stdout and stderr to slipway-logs, line
by line with the instance id, and neither loses nor repeats a line when the cluster service is
killed, when the logs service is down for a while, when the instance is replaced (its last words
on SIGTERM included), or when the cluster's record of what it shipped is behind the logs service.

Real parts: docker-registry (seeded busybox), runc through slipway-cluster, slipway-logs, grpcio.
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
  if [ $((i % 50)) -eq 0 ]; then sleep 0.05; fi
done
while true; do sleep 1 & wait $!; done
"""


class Platform:
    def __init__(self):
        from conftest import BIN_DIR

        self.bin = BIN_DIR
        (self.cpb, cgrpc), (self.lpb, lgrpc) = local.protos("slipway/cluster/v1/cluster.proto", "slipway/logs/v1/logs.proto")
        self.cgrpc, self.lgrpc = cgrpc, lgrpc
        self.data = tempfile.mkdtemp(prefix="slipway-applogs-")
        self.registry_port, self.cluster_port, self.logs_port = local.free_port(), local.free_port(), local.free_port()
        self.registry = local.start_registry(os.path.join(self.data, "registry"), self.registry_port)
        self.image = f"127.0.0.1:{self.registry_port}/slipway/busybox:latest"
        self.logs = self.cluster = None
        self.start_logs()
        self.start_cluster()
        self.workload = self.cpb.Workload(environment_id="env-logs", service_id="svc-logs", service_name="talker")

    def start_logs(self):
        self.logs = local.start_service(self.bin, "logs", self.data, self.logs_port)
        self.logs_stub = self.lgrpc.LogsStub(grpc.insecure_channel(f"127.0.0.1:{self.logs_port}"))

    def start_cluster(self):
        self.cluster = local.start_service(self.bin, "cluster", self.data, self.cluster_port, "--cluster-traffic", "none",
                                           "--logs-address", f"127.0.0.1:{self.logs_port}")
        self.cluster_stub = self.cgrpc.ClusterStub(grpc.insecure_channel(f"127.0.0.1:{self.cluster_port}"))

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
        """Lines the instance has written to its stdout file so far."""
        try:
            with open(self.instance_file(instance)) as f:
                return f.read().count("\n")
        except OSError:
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
