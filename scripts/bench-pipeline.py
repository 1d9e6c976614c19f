#!/usr/bin/env python3
"""Control-plane benchmark: the pipeline's own cost per service-deployment, with every collaborator
(builder, cluster, network, certs) simulated and answering at once.

    python3 scripts/bench-pipeline.py [BIN_DIR] [ENVIRONMENTS] [DEPLOYMENTS] [ROUNDS] [--durability acknowledged|normal|full]
    (default .build/release, 100 environments, 10 deployments each, 3 rounds, durability acknowledged:
    the pipeline's default)

Every deployment is of one public application service, so it runs all five steps (GIT_CLONE, BUILD,
DEPLOYMENT, ROUTER_DEPLOYMENT, CERTIFICATE), each recorded in SQLite, published to watchers and
written to the deployment's log in a real slipway-logs.

  overhead    one deployment at a time (100 in a row in one environment): Deploy call to the end of
              the deployment as the pipeline records it (started -> ended, ms) and as the client sees
              it (Deploy answered -> GetDeployment shows it ended; includes the polling, 1 ms steps)
  throughput  ENVIRONMENTS environments x DEPLOYMENTS queued deployments each (one service each, so
              nothing is superseded). Each environment's first deployment takes 5 s (its service has
              SLIPWAY_SIMULATE_STEP_MS) so that every Deploy call is answered and the queues are full
              before the rest run with no client traffic; throughput counts those queued ones:
              service-deployments / (first start - last end).
"""
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

args = [a for a in sys.argv[1:] if not a.startswith("--")]
durability = sys.argv[sys.argv.index("--durability") + 1] if "--durability" in sys.argv else "acknowledged"
assert durability in ("acknowledged", "normal", "full"), durability
args = [a for a in args if a not in ("acknowledged", "normal", "full")]
bin_dir = args[0] if args else os.path.join(local.ROOT, ".build", "release")
environments = int(args[1]) if len(args) > 1 else 100
per_environment = int(args[2]) if len(args) > 2 else 10
rounds = int(args[3]) if len(args) > 3 else 3

(pb, pb_grpc), = local.protos("slipway/pipeline/v1/pipeline.proto")
data = tempfile.mkdtemp(prefix="slipway-bench-pipeline-")
logs_port, port = local.free_port(), local.free_port()
logs = local.start_service(bin_dir, "logs", data, logs_port)
pipeline = local.start_service(bin_dir, "pipeline", data, port, "--logs-address", f"127.0.0.1:{logs_port}",
                               "--pipeline-simulate", "builder,cluster,network,certs", "--pipeline-max-queued", str(per_environment),
                               "--pipeline-max-parallel", "4",
                               # One organization holds every environment and service of the run: above the default quotas.
                               "--pipeline-quota", "environments=100000", "--pipeline-quota", "services=100000",
                               "--pipeline-quota", "concurrent-builds=100000", "--pipeline-quota", "memory-mib=100000000",
                               "--pipeline-durability", durability)
try:
    channel = local.platform_channel(data, f"127.0.0.1:{port}", "pipeline")  # mutual TLS, as the operator
    stub = pb_grpc.PipelineStub(channel)
    org = stub.CreateOrganization(pb.CreateOrganizationRequest(name="bench"))
    project = stub.CreateProject(pb.CreateProjectRequest(organization_id=org.id, name="bench"))

    def service(env, name, **variables):
        config = pb.ServiceConfig(application=pb.GitSource(url=f"https://git.example.com/{name}.git", branch="main"),
                                  ports=[pb.Port(internal_port=8080, public=True)], environment_variables=variables)
        return stub.CreateService(pb.CreateServiceRequest(environment_id=env, name=name, config=config)).id

    def percentile(values, p):
        values = sorted(values)
        return values[min(len(values) - 1, int(len(values) * p))]

    # Overhead: one deployment at a time.
    alone = stub.CreateEnvironment(pb.CreateEnvironmentRequest(project_id=project.id, name="alone")).id
    alone_service = service(alone, "api")
    recorded, seen = [], []
    for _ in range(100):
        start = time.monotonic()
        deployment_id = stub.Deploy(pb.DeployRequest(environment_id=alone, trigger=pb.Trigger(origin=pb.API, triggered_by="bench"))).deployment_id
        while True:
            d = stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=deployment_id))
            if d.ended_unix_millis:
                break
            time.sleep(0.001)
        seen.append((time.monotonic() - start) * 1000)
        assert d.status == pb.DEPLOYED, d
        recorded.append(d.ended_unix_millis - d.started_unix_millis)
    print(f"durability {durability}")
    print(f"overhead, one deployment at a time (100): recorded started->ended p50 {percentile(recorded, 0.5)} ms, "
          f"p99 {percentile(recorded, 0.99)} ms; client Deploy->seen ended p50 {percentile(seen, 0.5):.1f} ms, p99 {percentile(seen, 0.99):.1f} ms")

    # Throughput: full queues, ROUNDS times on fresh environments.
    rates = []
    for round_ in range(rounds):
        plan = []
        for e in range(environments):
            env = stub.CreateEnvironment(pb.CreateEnvironmentRequest(project_id=project.id, name=f"r{round_}-env-{e}")).id
            for s in range(per_environment):
                plan.append((env, service(env, f"s{s}", **({"SLIPWAY_SIMULATE_STEP_MS": "1000"} if s == 0 else {}))))
        # Round-robin over environments: each one's slow first deployment starts first.
        plan = [plan[e * per_environment + s] for s in range(per_environment) for e in range(environments)]
        perf = None
        if os.environ.get("BENCH_PERF"):  # profile the throughput phase: BENCH_PERF=/tmp/perf.data
            import subprocess
            perf = subprocess.Popen(["perf", "record", "-g", "-o", os.environ["BENCH_PERF"], "-p", str(pipeline.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        submit_start = time.monotonic()
        futures = [stub.Deploy.future(pb.DeployRequest(environment_id=env, service_ids=[svc], trigger=pb.Trigger(origin=pb.API, triggered_by="bench")))
                   for env, svc in plan]
        ids = [f.result().deployment_id for f in futures]
        submit_seconds = time.monotonic() - submit_start
        submitted_at_millis = time.time() * 1000
        first_ids, queued_ids = ids[:environments], ids[environments:]
        local.wait_until(lambda: stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=queued_ids[-1])).ended_unix_millis > 0, 600,
                         "the deployments did not end")
        local.wait_until(lambda: all(stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=i)).ended_unix_millis > 0 for i in queued_ids), 600,
                         "the deployments did not end")
        if perf:
            perf.send_signal(2)
            perf.wait()
        firsts = [stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=i)) for i in first_ids]
        queued = [stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=i)) for i in queued_ids]
        statuses = {pb.DeploymentStatus.Name(d.status) for d in firsts + queued}
        assert statuses == {"DEPLOYED"}, statuses
        if min(d.ended_unix_millis for d in firsts) < submitted_at_millis:
            print("warning: a first deployment ended before every Deploy call was answered; throughput is mixed with client traffic")
        span = (max(d.ended_unix_millis for d in queued) - min(d.started_unix_millis for d in queued)) / 1000
        count = len(queued)
        rates.append(count / span)
        print(f"throughput, {environments} environments x {per_environment - 1} queued deployments: {count / span:.0f} service-deployments/s "
              f"({count} in {span:.2f} s, first start to last end; {1000 * span / count:.2f} ms each)")
        print(f"submit: {len(ids)} Deploy calls answered in {submit_seconds:.2f} s ({len(ids) / submit_seconds:.0f}/s)")
    print(f"throughput median of {rounds} rounds: {statistics.median(rates):.0f} service-deployments/s")
finally:
    local.stop(pipeline, logs)
