"""The seven platform executables: each starts, answers grpcio health and reflection, and stops
gracefully on SIGTERM. Every port but the gateway's public one takes only mutual TLS: the tests
present the operator's platform certificate (`slipway pki init` makes it with the services')."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import BIN_DIR, binary, free_port
from slipway_local import platform_channel, prepare_pki, stop_nginx, track_isolation

SERVICES = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]


def channel_to(name, address, data_dir):
    """grpcio channel to slipway-<name>: the gateway's public port in plaintext, any other over
    mutual TLS as the operator."""
    if name == "gateway":
        return grpc.insecure_channel(address)
    return platform_channel(data_dir, address, name)


def wait_serving(name, address, data_dir, timeout=20):
    deadline = time.monotonic() + timeout
    with channel_to(name, address, data_dir) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                return stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture(scope="module")
def platform():
    data_dir = tempfile.mkdtemp(prefix="slipway-data-")
    env = dict(os.environ)
    addresses = {}
    for name in SERVICES:
        addresses[name] = f"127.0.0.1:{free_port()}"
        env[f"SLIPWAY_{name.upper()}_LISTEN"] = addresses[name]
    env["SLIPWAY_DATA_DIR"] = data_dir
    prepare_pki(BIN_DIR, data_dir)  # as `slipway up` does: no service starts without its identity
    track_isolation(data_dir)
    # The load balancer on free ports too (its defaults are 80 and 443).
    extra = {"network": ["--network-http-listen", f"127.0.0.1:{free_port()}", "--network-https-listen", f"127.0.0.1:{free_port()}"]}
    procs = {name: subprocess.Popen([binary(f"slipway-{name}"), *extra.get(name, [])], env=env, stderr=subprocess.PIPE, text=True)
             for name in SERVICES}
    yield addresses, procs, data_dir
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
    # nginx outlives the network service on purpose.
    stop_nginx(data_dir)


@pytest.mark.parametrize("name", SERVICES)
def test_service_serves_health(platform, name):
    addresses, procs, data_dir = platform
    assert wait_serving(name, addresses[name], data_dir) == health_pb2.HealthCheckResponse.SERVING
    assert os.path.isdir(os.path.join(data_dir, name)), "each service keeps its state under <data-dir>/<service>"


def test_reflection_on_every_service(platform):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    addresses, _, data_dir = platform
    for name in SERVICES:
        with channel_to(name, addresses[name], data_dir) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert "grpc.health.v1.Health" in services, name


def test_sigterm_is_graceful(platform):
    addresses, procs, data_dir = platform
    # A health watcher sees NOT_SERVING as soon as shutdown begins, then its stream ends cleanly.
    channel = channel_to("logs", addresses["logs"], data_dir)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    for name in SERVICES:
        wait_serving(name, addresses[name], data_dir)
        procs[name].send_signal(signal.SIGTERM)
    assert [r.status for r in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
    channel.close()
    for name in SERVICES:
        assert procs[name].wait(timeout=20) == 0, f"{name} exited with {procs[name].returncode}: {procs[name].stderr.read()}"
        log = procs[name].stderr.read()
        assert "stopped serving gRPC" in log, log


def test_listen_flag_beats_environment(tmp_path):
    port = free_port()
    env = dict(os.environ, SLIPWAY_LOGS_LISTEN="127.0.0.1:1")
    prepare_pki(BIN_DIR, str(tmp_path))
    proc = subprocess.Popen([binary("slipway-logs"), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_serving("logs", f"127.0.0.1:{port}", str(tmp_path)) == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


@pytest.mark.parametrize("args,message", [
    (["--listen", "nonsense"], "is not HOST:PORT"),
    (["--log-level", "loud"], "log level"),
])
def test_bad_configuration_is_a_clear_error(args, message, tmp_path):
    result = subprocess.run([binary("slipway-pipeline"), "--data-dir", str(tmp_path)] + args, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_port_in_use_is_a_clear_error():
    # Not pytest's tmp_path: its parent is 0700, and the builder's isolated builds need the data
    # directory reachable by their mapped users (it says so and stops, as it should).
    tmp_path = tempfile.mkdtemp(prefix="slipway-port-")
    track_isolation(tmp_path)
    prepare_pki(BIN_DIR, str(tmp_path))  # so that the port, not a missing identity, is what stops it
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([binary("slipway-builder"), "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=30)
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr, result.stderr
