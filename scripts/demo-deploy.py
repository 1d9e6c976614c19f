#!/usr/bin/env python3
"""The demo's deployment: examples/hello committed into a local git repository (DATA_DIR/demo/hello)
and deployed through slipway-pipeline — organization "demo", project "hello", environment "local",
service "hello" — watching its steps as they happen, then printing the deployment from the history.

    python3 scripts/demo-deploy.py DATA_DIR    (the platform from `scripts/platform.sh up` must be running)

Nothing is simulated: slipway-builder fetches and builds, slipway-cluster runs the app (runc, a
loopback port per instance), slipway-network routes https://hello-local.localhost to it through nginx,
and slipway-certs gives that name a certificate from the platform's local CA.
"""
import os
import shutil
import socket
import ssl
import sys
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import slipway_local as local  # noqa: E402

data = sys.argv[1]
pipeline = os.environ.get("SLIPWAY_PIPELINE_LISTEN", "127.0.0.1:7001")
cluster_address = os.environ.get("SLIPWAY_CLUSTER_LISTEN", "127.0.0.1:7004")
registry = os.environ.get("SLIPWAY_REGISTRY", "127.0.0.1:5000")
network_address = os.environ.get("SLIPWAY_NETWORK_LISTEN", "127.0.0.1:7003")
(pb, pb_grpc), (cluster_pb, cluster_grpc), (network_pb, network_grpc) = local.protos(
    "slipway/pipeline/v1/pipeline.proto", "slipway/cluster/v1/cluster.proto", "slipway/network/v1/network.proto")

repo = os.path.abspath(os.path.join(data, "demo", "hello"))
if not os.path.isdir(os.path.join(repo, ".git")):
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(os.path.dirname(repo), exist_ok=True)
    commit = local.example_repository(repo)
else:
    # Bring the repository up to date with examples/hello (a new commit only when something changed).
    shutil.copytree(os.path.join(local.ROOT, "examples", "hello"), repo, dirs_exist_ok=True)
    commit = local.commit(repo, "update from examples/hello") if local.git(repo, "status", "--porcelain") else local.git(repo, "rev-parse", "HEAD")
commit = commit.strip()


def find_or_create(items, name, create):
    for item in items:
        if item.name == name:
            return item
    return create()


with grpc.insecure_channel(pipeline) as channel:
    stub = pb_grpc.PipelineStub(channel)
    org = find_or_create(stub.ListOrganizations(pb.ListOrganizationsRequest()).organizations, "demo",
                         lambda: stub.CreateOrganization(pb.CreateOrganizationRequest(name="demo")))
    project = find_or_create(stub.ListProjects(pb.ListProjectsRequest(organization_id=org.id)).projects, "hello",
                             lambda: stub.CreateProject(pb.CreateProjectRequest(organization_id=org.id, name="hello")))
    env = find_or_create(stub.ListEnvironments(pb.ListEnvironmentsRequest(project_id=project.id)).environments, "local",
                         lambda: stub.CreateEnvironment(pb.CreateEnvironmentRequest(project_id=project.id, name="local")))
    config = pb.ServiceConfig(
        application=pb.GitSource(url=repo, branch="main", build_args={"BASE": f"{registry}/slipway/busybox:latest"}),
        ports=[pb.Port(internal_port=8080, public=True, protocol=pb.HTTP)],
        readiness_probe=pb.Probe(http=pb.HttpProbe(path="/health", port=8080)))
    service = find_or_create(stub.ListServices(pb.ListServicesRequest(environment_id=env.id)).services, "hello",
                             lambda: stub.CreateService(pb.CreateServiceRequest(environment_id=env.id, name="hello", config=config)))

    print(f"\ndeploying {repo} at {commit[:12]} through slipway-pipeline ({pipeline}): "
          f"demo / hello / local / hello (environment {env.id})")
    accepted = {}

    def deploy():
        # The commit is the idempotency key: running the demo again on the same commit shows that deployment.
        accepted["response"] = stub.Deploy(pb.DeployRequest(
            environment_id=env.id, service_ids=[service.id], versions={service.id: commit},
            trigger=pb.Trigger(origin=pb.CLI, triggered_by="make demo", idempotency_key=f"demo-{commit}")))
        response = accepted["response"]
        note = " (this commit was deployed before: showing that deployment)" if response.duplicate else ""
        print(f"  deployment {response.deployment_id}{note}")
        if response.duplicate and stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=response.deployment_id)).ended_unix_millis:
            return True
        return False

    done = False
    for event in stub.Watch(pb.WatchRequest(environment_id=env.id), timeout=600):
        if event.kind == pb.EVENT_SNAPSHOT_END:
            if deploy():
                break
            continue
        if "response" not in accepted or event.deployment_id != accepted["response"].deployment_id:
            continue
        if event.kind == pb.EVENT_STEP:
            print(f"  {pb.Step.Name(event.step):<18} {pb.StepStatus.Name(event.step_status)[5:].lower()}{': ' + event.message if event.message else ''}")
        elif event.kind == pb.EVENT_DEPLOYMENT_STATUS:
            print(f"  status {pb.DeploymentStatus.Name(event.deployment_status)}{': ' + event.message if event.message else ''}")
        elif event.kind == pb.EVENT_DEPLOYMENT_ENDED:
            break

    deployment = stub.GetDeployment(pb.GetDeploymentRequest(deployment_id=accepted["response"].deployment_id))
    hello = deployment.services[0]
    print(f"\ndeployment {deployment.id}: {pb.DeploymentStatus.Name(deployment.status)}"
          f" ({(deployment.ended_unix_millis - deployment.created_unix_millis)} ms)")
    for step in hello.steps:
        print(f"  {pb.Step.Name(step.step):<18} {pb.StepStatus.Name(step.status)[5:]:<10} {step.duration_millis:>6} ms  {step.message}")
    print(f"  commit {hello.commit}\n  image  {hello.image}")
    if deployment.status != pb.DEPLOYED:
        print(f"the deployment failed: {hello.reason}", file=sys.stderr)
        sys.exit(1)

with grpc.insecure_channel(cluster_address) as channel:
    workload = cluster_pb.Workload(environment_id=env.id, service_id=service.id, service_name="hello")
    instances = cluster_grpc.ClusterStub(channel).ListInstances(cluster_pb.WorkloadRequest(workload=workload)).instances
for instance in instances:
    try:
        with urllib.request.urlopen(f"http://{instance.address}/", timeout=2) as response:
            answer = f"HTTP {response.status}"
    except OSError as error:
        answer = f"not answering ({error})"
    print(f"  instance {instance.id} at http://{instance.address}/ (runc; {answer})")

with grpc.insecure_channel(network_address) as channel:
    network = network_grpc.NetworkStub(channel)
    route = network.GetRoute(network_pb.RouteKey(environment_id=env.id, service_id=service.id))
    balancer = network.GetLoadBalancer(network_pb.LoadBalancerRequest())
ca_file = os.path.abspath(os.path.join(data, "certs", "local-ca.crt"))
host, port = route.default_domain, int(balancer.https_address.rsplit(":", 1)[1])
# Through nginx, verified with the local CA (connecting to the load balancer's address: not every
# resolver maps *.localhost to loopback, curl and browsers do).
context = ssl.create_default_context(cafile=ca_file)
try:
    with socket.create_connection((balancer.https_address.rsplit(":", 1)[0], port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = tls.recv(200).decode(errors="replace").split("\r\n")[0]
except OSError as error:
    answer = f"not answering ({error})"
print(f"\nserving at {route.url}  ({answer}, through nginx; certificate from the local CA)")
print(f"  try: curl --cacert {ca_file} {route.url}")
print(f"  trust the local CA: cp {ca_file} /usr/local/share/ca-certificates/slipway-local-ca.crt && update-ca-certificates")
