#!/usr/bin/env python3
"""The demo's build: examples/hello committed into a local git repository (DATA_DIR/demo/hello) and
built by the running slipway-builder, its steps printed as they happen, then the pushed image.

    python3 scripts/demo-build.py DATA_DIR    (the platform from `scripts/platform.sh up` must be running)
"""
import os
import shutil
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

data = sys.argv[1]
builder = os.environ.get("SLIPWAY_BUILDER_LISTEN", "127.0.0.1:7002")
registry = os.environ.get("SLIPWAY_REGISTRY", "127.0.0.1:5000")
(pb, pb_grpc), = local.protos("slipway/builder/v1/builder.proto")

repo = os.path.join(data, "demo", "hello")
if not os.path.isdir(os.path.join(repo, ".git")):
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(os.path.dirname(repo), exist_ok=True)
    commit = local.example_repository(repo)
else:
    # Bring the repository up to date with examples/hello (a new commit only when something changed).
    shutil.copytree(os.path.join(local.ROOT, "examples", "hello"), repo, dirs_exist_ok=True)
    commit = local.commit(repo, "update from examples/hello") if local.git(repo, "status", "--porcelain") else local.git(repo, "rev-parse", "HEAD")

build_id = f"demo-{int(time.time())}"
print(f"\nbuilding {repo} at {commit[:12]} with slipway-builder ({builder}); log stream: environment demo, deployment {build_id}")


def show(event):
    kind = event.WhichOneof("event")
    if kind == "step" and event.step.state != pb.STEP_STARTED:
        print(f"  {pb.Step.Name(event.step.step):<10} {pb.StepState.Name(event.step.state):<15} {event.step.duration_millis:>6} ms  {event.step.message}")
    elif kind == "queued":
        print(f"  queued, place {event.queued.position} in line")


with grpc.insecure_channel(builder) as channel:
    _, result = local.build(pb_grpc.BuilderStub(channel), pb, local.build_request(pb, build_id, os.path.abspath(repo), registry, commit=commit), show)
if result.outcome != pb.BUILD_SUCCEEDED:
    print(f"build {pb.Outcome.Name(result.outcome)}: {pb.FailureReason.Name(result.reason)}: {result.message}", file=sys.stderr)
    sys.exit(1)
print(f"image: {result.image.reference} ({result.image.digest}){' — already in the registry' if result.skipped else ''}")
