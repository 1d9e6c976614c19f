"""slipway-logs: an environment-wide tail merges every service's lines in timestamp order, live, and
resumes exactly from the last timestamp seen."""
import sys
import tempfile
import threading

import grpc
import pytest

from conftest import ROOT, LogsServer


@pytest.fixture(scope="module")
def logs_api():
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="slipway-logs-pb-")
    assert protoc.main(["protoc", f"-I{ROOT}/protos", f"--python_out={out}", f"--grpc_python_out={out}", "slipway/logs/v1/logs.proto"]) == 0
    sys.path.insert(0, out)
    from slipway.logs.v1 import logs_pb2, logs_pb2_grpc

    return logs_pb2, logs_pb2_grpc


@pytest.fixture(scope="module")
def logs_server():
    """slipway-logs (mutual TLS: its platform identities under its data directory) until the module ends."""
    server = LogsServer(tempfile.mkdtemp(prefix="slipway-logs-data-"))
    yield server
    server.stop()
    code, log = server.proc.returncode, server.log()
    server.cleanup()
    assert code == 0, f"slipway-logs exited with {code} on SIGTERM: {log[-2000:]}"


def test_environment_tail_merges_services_in_timestamp_order(logs_server, logs_api):
    pb, grpc_pb = logs_api
    stub = grpc_pb.LogsStub(logs_server.channel())

    def key(service):
        return pb.StreamKey(environment_id="prod", service_id=service)

    def batch(i, services=("web", "api", "worker")):
        return pb.AppendRequest(batch_id=i, lines=[pb.LogLine(stream=key(services[j % len(services)]), text=f"{i}-{j}") for j in range(9)])

    list(stub.Append(iter([batch(i) for i in range(10)]), timeout=10))
    # Another environment's lines never show up.
    list(stub.Append(iter([pb.AppendRequest(batch_id=1, lines=[pb.LogLine(stream=pb.StreamKey(environment_id="staging", service_id="web"), text="other")])]), timeout=10))

    received = []
    call = stub.Tail(pb.TailRequest(stream=pb.StreamKey(environment_id="prod")), timeout=30)
    done = threading.Event()

    def read():
        try:
            for response in call:
                received.append(response.line)
                if len(received) == 181:
                    done.set()
                    return
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=read)
    thread.start()
    # Live lines, including a service that appears only now.
    list(stub.Append(iter([batch(i, ("web", "api", "worker", "cron")) for i in range(10, 20)]), timeout=10))
    list(stub.Append(iter([pb.AppendRequest(batch_id=99, lines=[pb.LogLine(stream=key("new"), text="late")])]), timeout=10))
    assert done.wait(30), f"received {len(received)} of 181 lines"
    call.cancel()
    thread.join()

    stamps = [line.timestamp_nanos for line in received]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert all(line.stream.environment_id == "prod" for line in received)
    assert received[-1].text == "late"
    assert {line.stream.service_id for line in received} == {"web", "api", "worker", "cron", "new"}

    # Resume from the middle: exactly the rest, no gap, no duplicate.
    middle = received[90].timestamp_nanos
    resumed = []
    call = stub.Tail(pb.TailRequest(stream=pb.StreamKey(environment_id="prod"), since_nanos=middle + 1), timeout=30)
    for response in call:
        resumed.append(response.line.timestamp_nanos)
        if len(resumed) == len(received) - 91:
            call.cancel()
            break
    assert resumed == stamps[91:]


def test_environment_tail_rejects_after_seq(logs_server, logs_api):
    pb, grpc_pb = logs_api
    stub = grpc_pb.LogsStub(logs_server.channel())
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Tail(pb.TailRequest(stream=pb.StreamKey(environment_id="prod"), after_seq=3), timeout=5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "since_nanos" in info.value.details()
