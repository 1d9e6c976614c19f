#!/usr/bin/env python3
"""Cost of the logs service's fsync policy: Append round trips (each batch acknowledged only after one
fdatasync per stream it touched), one batch in flight at a time, for several batch sizes.

    python3 scripts/bench-logs-ingest.py [BIN_DIR]    (default .build/release)
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import slipway_local as local  # noqa: E402
bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".build", "release")
out = tempfile.mkdtemp()
assert protoc.main(["protoc", f"-I{ROOT}/protos", f"--python_out={out}", f"--grpc_python_out={out}", "slipway/logs/v1/logs.proto"]) == 0
sys.path.insert(0, out)
from slipway.logs.v1 import logs_pb2 as pb, logs_pb2_grpc as pbg  # noqa: E402

data = tempfile.mkdtemp(prefix="slipway-ingest-", dir=os.environ.get("BENCH_DIR"))

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
# slipway-logs takes only mutual TLS: its identity (and the operator's, presented here) first.
local.prepare_pki(bin_dir, data)
proc = subprocess.Popen([os.path.join(bin_dir, "slipway-logs"), "--listen", f"127.0.0.1:{port}", "--data-dir", data], stderr=subprocess.DEVNULL)
try:
    channel = local.platform_channel(data, f"127.0.0.1:{port}", "logs")
    grpc.channel_ready_future(channel).result(timeout=20)
    stub = pbg.LogsStub(channel)
    key = pb.StreamKey(environment_id="bench", service_id="ingest")
    print("| lines per batch | batches | acked batches/s | acked lines/s | median ack latency ms |")
    print("|---|---|---|---|---|")
    for size in (1, 10, 100, 1000):
        batches = max(20, min(2000, 20000 // size))
        line = pb.LogLine(stream=key, text="x" * 100, level=pb.INFO)
        times = []

        def requests():
            for i in range(batches):
                times.append(time.perf_counter())
                yield pb.AppendRequest(batch_id=i, lines=[line] * size)
                # one batch in flight at a time: measure the round trip, not pipelining
                while len(acks) < i + 1:
                    time.sleep(0)

        acks = []
        start = time.perf_counter()
        for ack in stub.Append(requests(), timeout=300):
            acks.append(time.perf_counter())
        elapsed = time.perf_counter() - start
        latency = statistics.median((a - t) * 1000 for a, t in zip(acks, times))
        print(f"| {size} | {batches} | {batches / elapsed:,.0f} | {batches * size / elapsed:,.0f} | {latency:.3f} |")
finally:
    proc.terminate()
    proc.wait(timeout=20)
