#!/usr/bin/env python3
"""Builder benchmark: examples/hello built by the real slipway-builder (git + buildah + docker-registry),
measured from the Build call to its result, as the pipeline sees it.

    python3 scripts/bench-builder.py [BIN_DIR] [ROUNDS]     (default .build/release, 5 rounds)

Per round:
  cold     a new builder data directory (no git mirror, no layer cache, base image pulled) and a
           new repository: clone, full build, push
  rebuild  a one-line change to www/index.html, committed: fetch, build with the layer cache, push
  skip     the same commit again: the registry has the image, nothing is built
  cancel   a build whose RUN step sleeps is cancelled once the step runs: Cancel call to the result
Reports the median and the spread of each.
"""
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(local.ROOT, ".build", "release")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
(pb, pb_grpc), = local.protos("slipway/builder/v1/builder.proto")

root = tempfile.mkdtemp(prefix="slipway-bench-builder-", dir=os.environ.get("BENCH_DIR"))
registry_port, logs_port = local.free_port(), local.free_port()
registry = local.start_registry(os.path.join(root, "registry"), registry_port)
registry_host = f"127.0.0.1:{registry_port}"
logs_data = os.path.join(root, "logs")
os.makedirs(logs_data)
logs = local.start_service(bin_dir, "logs", logs_data, logs_port)
# The platform CA is the one made in the logs' data directory: each round's builder (a fresh data
# directory) presents its identity from there, so that it and slipway-logs trust each other (mutual TLS).
builder_identity = os.path.join(logs_data, "pki", "identities", "builder")

results = {"cold": [], "rebuild": [], "skip": [], "cancel": []}
rebuild_steps = {}  # step name -> [ms], from the builder's own step events


def running(cmdline):
    """Whether a process whose command line contains `cmdline` (NUL-separated) exists."""
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and cmdline in open(f"/proc/{pid}/cmdline", "rb").read():
                return True
        except OSError:
            pass
    return False


def timed_build(stub, request, steps=None):
    start = time.perf_counter()
    events, result = local.build(stub, pb, request)
    elapsed = time.perf_counter() - start
    assert result.outcome == pb.BUILD_SUCCEEDED, result.message
    for event in events:
        if steps is not None and event.WhichOneof("event") == "step" and event.step.state != pb.STEP_STARTED:
            steps.setdefault(pb.Step.Name(event.step.step), []).append(event.step.duration_millis)
    return elapsed, result


try:
    for round_ in range(rounds):
        data = os.path.join(root, f"builder-{round_}")
        os.makedirs(data)
        port = local.free_port()
        builder = local.start_service(bin_dir, "builder", data, port, "--builder-registry", registry_host, "--logs-address", f"127.0.0.1:{logs_port}",
                                      "--identity-dir", builder_identity)
        try:
            with local.platform_channel(logs_data, f"127.0.0.1:{port}", "builder") as channel:
                stub = pb_grpc.BuilderStub(channel)
                repo = os.path.join(root, f"repo-{round_}")
                local.example_repository(repo)
                image = f"bench/hello-{round_}"
                elapsed, cold = timed_build(stub, local.build_request(pb, f"cold-{round_}", repo, registry_host, image=image))
                assert not cold.skipped
                results["cold"].append(elapsed)

                changed = local.commit(repo, "one line", {"www/index.html": f"<h1>Hello from Slipway, round {round_}</h1>\n"})
                elapsed, rebuilt = timed_build(stub, local.build_request(pb, f"rebuild-{round_}", repo, registry_host, commit=changed, image=image), rebuild_steps)
                assert not rebuilt.skipped and rebuilt.image.digest != cold.image.digest
                results["rebuild"].append(elapsed)

                elapsed, skipped = timed_build(stub, local.build_request(pb, f"skip-{round_}", repo, registry_host, commit=changed, image=image))
                assert skipped.skipped
                results["skip"].append(elapsed)

                # Cancel: from the Cancel call to the build's result, with the RUN step running.
                slow = local.commit(repo, "slow", {"Dockerfile": open(os.path.join(repo, "Dockerfile")).read() + "RUN sleep 600\n"})
                build_id = f"cancel-{round_}-{uuid.uuid4().hex[:6]}"
                call = stub.Build(local.build_request(pb, build_id, repo, registry_host, commit=slow, image=image))
                done = threading.Event()
                ended = {}

                def read():
                    for event in call:
                        if event.WhichOneof("event") == "result":
                            ended["at"] = time.perf_counter()
                            ended["result"] = event.result
                    done.set()

                reader = threading.Thread(target=read)
                reader.start()
                # The sleep is running once buildah has started the RUN step's process.
                local.wait_until(lambda: running(b"sleep\x00600"), 60, "the slow RUN step did not start")
                start = time.perf_counter()
                stub.Cancel(pb.CancelRequest(build_id=build_id))
                done.wait(30)
                reader.join()
                assert ended["result"].outcome == pb.BUILD_CANCELED, ended["result"]
                results["cancel"].append(ended["at"] - start)
        finally:
            local.stop(builder)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in results.items()), flush=True)
finally:
    local.stop(logs, registry)
    shutil.rmtree(root, ignore_errors=True)

print(f"\n{'measurement':<10} {'median s':>9} {'min s':>7} {'max s':>7}   ({rounds} rounds, binaries from {bin_dir})")
for name, values in results.items():
    print(f"{name:<10} {statistics.median(values):>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
print("rebuild steps (median ms, from the step events): " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in rebuild_steps.items()))
