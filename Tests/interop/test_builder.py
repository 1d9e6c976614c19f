"""slipway-builder as a user's client sees it: grpcio (an independent gRPC implementation) drives the
real executable, which fetches with git, builds with buildah, pushes to a real docker-registry and
streams its output to the real slipway-logs. Both services take only mutual TLS: grpcio presents the
operator's platform certificate, the builder its own to slipway-logs.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import grpc
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
import slipway_local as local  # noqa: E402


@pytest.fixture(scope="module")
def pbs():
    (builder, builder_grpc), (logs, logs_grpc) = local.protos("slipway/builder/v1/builder.proto", "slipway/logs/v1/logs.proto")
    return builder, builder_grpc, logs, logs_grpc


@pytest.fixture
def platform(pbs):
    """registry + slipway-logs + slipway-builder (the real executables) in a scratch data directory."""
    from conftest import BIN_DIR

    data = tempfile.mkdtemp(prefix="slipway-builder-interop-")
    registry_port, logs_port, builder_port = local.free_port(), local.free_port(), local.free_port()
    registry = local.start_registry(os.path.join(data, "registry"), registry_port)
    logs = local.start_service(BIN_DIR, "logs", data, logs_port)
    builder_args = ["--builder-registry", f"127.0.0.1:{registry_port}", "--logs-address", f"127.0.0.1:{logs_port}"]
    builder = local.start_service(BIN_DIR, "builder", data, builder_port, *builder_args)
    state = {"data": data, "registry": f"127.0.0.1:{registry_port}", "builder_port": builder_port, "builder": builder, "args": builder_args}
    state["restart"] = lambda: state.update(builder=local.start_service(BIN_DIR, "builder", data, builder_port, *builder_args))
    yield state, logs_port
    local.stop(state["builder"], logs, registry)


def builder_channel(state):
    """grpcio to slipway-builder as the operator (mutual TLS)."""
    return local.platform_channel(state["data"], f"127.0.0.1:{state['builder_port']}", "builder")


def processes_containing(text):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def slow_repository(state, name, marker):
    """examples/hello with a last step that sleeps, `marker` in its shell's command line: a build to
    stop midway. (The sleep comes first: a shell may exec its last command, which would take the
    marker out of the process list.)"""
    repo = os.path.join(state["data"], name)
    local.example_repository(repo)
    with open(os.path.join(repo, "Dockerfile"), "a") as f:
        f.write(f"RUN sleep 600 && echo {marker}\n")
    return repo, local.commit(repo, "slow")


def test_build_with_grpcio_pushes_the_image_and_streams_its_log(pbs, platform):
    builder_pb, builder_grpc, logs_pb, logs_grpc = pbs
    state, logs_port = platform
    repo = os.path.join(state["data"], "hello")
    commit = local.example_repository(repo)
    build_id = f"interop-{uuid.uuid4().hex[:8]}"

    with builder_channel(state) as channel:
        events, result = local.build(builder_grpc.BuilderStub(channel), builder_pb,
                                     local.build_request(builder_pb, build_id, repo, state["registry"], image="interop/hello"))
    assert result.outcome == builder_pb.BUILD_SUCCEEDED, result.message
    assert result.commit == commit
    steps = [(builder_pb.Step.Name(e.step.step), builder_pb.StepState.Name(e.step.state)) for e in events if e.WhichOneof("event") == "step"]
    assert steps == [("GIT_CLONE", "STEP_STARTED"), ("GIT_CLONE", "STEP_SUCCEEDED"), ("BUILD", "STEP_STARTED"),
                     ("BUILD", "STEP_SUCCEEDED"), ("PUSH", "STEP_STARTED"), ("PUSH", "STEP_SUCCEEDED")]
    assert all(e.step.duration_millis > 0 for e in events if e.WhichOneof("event") == "step" and e.step.state == builder_pb.STEP_SUCCEEDED and e.step.step == builder_pb.BUILD)

    # The registry has the manifest the builder reported.
    request = urllib.request.Request(f"http://{state['registry']}/v2/interop/hello/manifests/{result.image.tag}", method="HEAD",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert urllib.request.urlopen(request).headers["Docker-Content-Digest"] == result.image.digest

    # The deployment's log stream holds buildah's output, tagged with the step, through to the push.
    with local.platform_channel(state["data"], f"127.0.0.1:{logs_port}", "logs") as channel:
        tail = logs_grpc.LogsStub(channel).Tail(logs_pb.TailRequest(
            stream=logs_pb.StreamKey(environment_id="demo", deployment_id=build_id), after_seq=0), timeout=30)
        lines = []
        for response in tail:
            lines.append(response.line)
            if "pushed" in response.line.text:
                tail.cancel()
                break
    assert any(line.step == "BUILD" and line.text.startswith("STEP 1/") for line in lines)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert all(line.service_id == "hello" for line in lines)


def test_a_client_that_cancels_its_call_stops_the_build(pbs, platform):
    builder_pb, builder_grpc, _, _ = pbs
    state, _ = platform
    marker = f"slipway-interop-{uuid.uuid4().hex[:8]}"
    repo, _ = slow_repository(state, "slow", marker)

    with builder_channel(state) as channel:
        call = builder_grpc.BuilderStub(channel).Build(local.build_request(builder_pb, f"slow-{marker}", repo, state["registry"], image="interop/slow"))
        for event in call:
            if event.WhichOneof("event") == "step" and event.step.step == builder_pb.BUILD and event.step.state == builder_pb.STEP_STARTED:
                break
        local.wait_until(lambda: processes_containing(marker), 60, "the slow RUN step did not start")
        call.cancel()
    local.wait_until(lambda: not processes_containing(marker), 10, "the build's processes were still running after the client cancelled")
    tags = urllib.request.urlopen(f"http://{state['registry']}/v2/_catalog").read()
    assert b"interop/slow" not in tags


def test_builder_killed_mid_build_restarts_clean_and_builds(pbs, platform):
    builder_pb, builder_grpc, _, _ = pbs
    state, _ = platform
    marker = f"slipway-kill-{uuid.uuid4().hex[:8]}"
    repo, slow_commit = slow_repository(state, "killed", marker)

    with builder_channel(state) as channel:
        call = builder_grpc.BuilderStub(channel).Build(local.build_request(builder_pb, f"killed-{marker}", repo, state["registry"], image="interop/killed"))
        local.wait_until(lambda: processes_containing(marker), 60, "the slow RUN step did not start")
        state["builder"].send_signal(signal.SIGKILL)
        state["builder"].wait()
        with pytest.raises(grpc.RpcError) as error:
            for _ in call:
                pass
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE

    # buildah runs in its own session and may outlive a SIGKILLed builder; the restarted builder
    # stops whatever its previous life left running (ProcessLedger, unit-tested on its own), removes
    # the dead builds' work directories, and builds again.
    state["restart"]()
    assert processes_containing(marker) == []
    work = os.path.join(state["data"], "builder", "work")
    assert os.listdir(work) == []
    fixed = local.commit(repo, "fixed", {"Dockerfile": open(os.path.join(local.ROOT, "examples", "hello", "Dockerfile")).read()})
    assert fixed != slow_commit
    with builder_channel(state) as channel:
        _, result = local.build(builder_grpc.BuilderStub(channel), builder_pb,
                                local.build_request(builder_pb, f"after-{marker}", repo, state["registry"], image="interop/killed"))
    assert result.outcome == builder_pb.BUILD_SUCCEEDED, result.message


def test_a_build_that_asks_for_no_network_gets_none(pbs, platform):
    """Per service: BUILD_NETWORK_NONE leaves RUN steps with loopback only; the builder's default
    (nat) gives them eth0 on the builds' bridge."""
    builder_pb, builder_grpc, _, _ = pbs
    state, _ = platform
    repo = os.path.join(state["data"], "offline")
    local.example_repository(repo)
    with open(os.path.join(repo, "Dockerfile"), "a") as f:
        f.write('RUN echo "interfaces: $(grep : /proc/net/dev | cut -d: -f1 | tr -d " " | tr "\\n" " ")" && test "$(grep -c : /proc/net/dev)" -eq 1\n')
    local.commit(repo, "offline")
    marker = uuid.uuid4().hex[:8]
    with builder_channel(state) as channel:
        stub = builder_grpc.BuilderStub(channel)
        # The default first (a failed step leaves nothing in the layer cache for the next build).
        events, result = local.build(stub, builder_pb, local.build_request(builder_pb, f"nat-{marker}", repo, state["registry"], image="interop/nat"))
        assert result.outcome == builder_pb.BUILD_FAILED, result.message
        request = local.build_request(builder_pb, f"none-{marker}", repo, state["registry"], image="interop/offline")
        request.network = builder_pb.BUILD_NETWORK_NONE
        _, result = local.build(stub, builder_pb, request)
        assert result.outcome == builder_pb.BUILD_SUCCEEDED, result.message


def test_sources_outside_https_ssh_and_the_allowed_directory_are_refused(pbs, platform):
    """The builder of this suite allows repositories under its data directory only (as `slipway up
    --local-sources` does): anything else on the machine, other transports and keyless ssh are
    INVALID_ARGUMENT, and the same process goes on building."""
    builder_pb, builder_grpc, _, _ = pbs
    state, _ = platform
    pid = state["builder"].pid
    outside = tempfile.mkdtemp(prefix="slipway-outside-")
    local.example_repository(os.path.join(outside, "repo"))
    with builder_channel(state) as channel:
        stub = builder_grpc.BuilderStub(channel)
        for url, words in [(os.path.join(outside, "repo"), "outside the directories"), ("file:///etc", "outside the directories"),
                           ("git://example.com/x.git", "transport is not allowed"), ("ext::sh -c id", "remote helpers"),
                           ("http://example.com/x.git", "plain http"), ("git@example.com:x.git", "ssh_key")]:
            request = local.build_request(builder_pb, f"src-{uuid.uuid4().hex[:8]}", url, state["registry"], image="interop/src")
            with pytest.raises(grpc.RpcError) as raised:
                list(stub.Build(request))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in raised.value.details(), (url, raised.value.details())
        repo = os.path.join(state["data"], "inside")
        local.example_repository(repo)
        _, result = local.build(stub, builder_pb, local.build_request(builder_pb, f"src-{uuid.uuid4().hex[:8]}", repo, state["registry"], image="interop/src"))
        assert result.outcome == builder_pb.BUILD_SUCCEEDED, result.message
    assert state["builder"].poll() is None and state["builder"].pid == pid
    shutil.rmtree(outside, ignore_errors=True)


def test_a_hostile_registry_cannot_send_the_builder_to_the_machine(pbs, platform):
    """A registry named in a build request answers 401 with a token realm on the builder's own
    machine (where the platform's services and metadata endpoints listen): the builder does not go
    there, fails the build saying why, and shows none of the registry's body."""
    import http.server
    import threading

    builder_pb, builder_grpc, _, _ = pbs
    state, _ = platform
    hits = []

    class Token(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"token":"t"}')

        def log_message(self, *args):
            pass

    token_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Token)

    class Hostile(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://localhost:{token_server.server_port}/token",service="x"')
            self.send_header("Content-Length", "26")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"SECRET-BODY-OF-A-REGISTRY!")

        do_GET = do_HEAD = answer

        def log_message(self, *args):
            pass

    registry = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    for server in (token_server, registry):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pid = state["builder"].pid
        repo = os.path.join(state["data"], "hostile-registry")
        local.example_repository(repo)
        request = local.build_request(builder_pb, f"hostile-{uuid.uuid4().hex[:8]}", repo, state["registry"], image="interop/hostile")
        request.registry.host = f"127.0.0.1:{registry.server_port}"
        request.registry.insecure = True
        request.registry.username, request.registry.password = "u", "p"
        with builder_channel(state) as channel:
            _, result = local.build(builder_grpc.BuilderStub(channel), builder_pb, request)
        assert result.outcome == builder_pb.BUILD_FAILED and "token requests" in result.message, result
        assert "SECRET" not in result.message
        assert hits == [], hits
        assert state["builder"].poll() is None and state["builder"].pid == pid
    finally:
        registry.shutdown()
        token_server.shutdown()
