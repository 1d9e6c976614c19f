"""slipway-pipeline as its users see it: grpcio (an independent gRPC implementation) drives the real
executable. The crash tests kill -9 the process at every step boundary and check that, after a
restart, every deployment resumes where it was and reaches its outcome: there the collaborators are simulated
(--pipeline-simulate), each step taking --pipeline-simulated-step-ms. The last tests deploy a real
git repository through the real builder, registry, cluster, network (nginx) and certs services.
Every service takes only mutual TLS: they run over one data directory whose platform CA issued all
their identities, and grpcio calls them as the operator.
"""
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import grpc
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
import slipway_local as local  # noqa: E402

STEP_MS = 400


@pytest.fixture(scope="module")
def pbs():
    (pipeline, pipeline_grpc), (logs, logs_grpc) = local.protos("slipway/pipeline/v1/pipeline.proto", "slipway/logs/v1/logs.proto")
    return pipeline, pipeline_grpc, logs, logs_grpc


class Platform:
    """slipway-logs + slipway-pipeline (real executables) over one scratch data directory."""

    def __init__(self, pbs, *pipeline_args, data=None, logs=None):
        from conftest import BIN_DIR

        self.bin = BIN_DIR
        self.pb, self.pb_grpc, self.logs_pb, self.logs_grpc = pbs
        self.data = data or tempfile.mkdtemp(prefix="slipway-pipeline-interop-")
        self.port = local.free_port()
        if logs:
            self.logs_port, self.logs = logs
        else:
            self.logs_port = local.free_port()
            self.logs = local.start_service(BIN_DIR, "logs", self.data, self.logs_port)
        self.args = ["--logs-address", f"127.0.0.1:{self.logs_port}", *pipeline_args]
        self.pipeline = None
        self.start()

    def start(self):
        self.pipeline = local.start_service(self.bin, "pipeline", self.data, self.port, *self.args)
        self.channel = local.platform_channel(self.data, f"127.0.0.1:{self.port}", "pipeline")
        self.stub = self.pb_grpc.PipelineStub(self.channel)

    def kill9(self):
        self.pipeline.send_signal(signal.SIGKILL)
        self.pipeline.wait()
        self.channel.close()

    def stop(self):
        self.channel.close()
        local.stop(self.pipeline, self.logs)

    def environment(self, *services):
        """An organization, project and environment with `services` (name → ServiceConfig)."""
        pb = self.pb
        org = self.stub.CreateOrganization(pb.CreateOrganizationRequest(name=f"acme-{time.monotonic_ns()}"))
        project = self.stub.CreateProject(pb.CreateProjectRequest(organization_id=org.id, name="shop"))
        env = self.stub.CreateEnvironment(pb.CreateEnvironmentRequest(project_id=project.id, name="prod"))
        ids = {}
        for name, config in services:
            ids[name] = self.stub.CreateService(pb.CreateServiceRequest(environment_id=env.id, name=name, config=config)).id
        return env.id, ids

    def app(self, stage=0, public=True, url="https://git.example.com/app.git", build_args=None, **variables):
        pb = self.pb
        return pb.ServiceConfig(application=pb.GitSource(url=url, branch="main", build_args=build_args or {}), stage=stage,
                                ports=[pb.Port(internal_port=8080, public=public)], environment_variables=variables)

    def container(self, stage=0, public=True):
        pb = self.pb
        return pb.ServiceConfig(container=pb.ContainerSource(image="registry.example.com/web", tag="1.0"), stage=stage,
                                ports=[pb.Port(internal_port=80, public=public)])

    def deploy(self, env, services=(), versions=None, key=""):
        pb = self.pb
        return self.stub.Deploy(pb.DeployRequest(environment_id=env, service_ids=list(services), versions=versions or {},
                                                 trigger=pb.Trigger(origin=pb.API, triggered_by="interop", idempotency_key=key)))

    def deployment(self, deployment_id):
        return self.stub.GetDeployment(self.pb.GetDeploymentRequest(deployment_id=deployment_id))

    def wait_ended(self, deployment_id, timeout=60):
        local.wait_until(lambda: self.deployment(deployment_id).ended_unix_millis > 0, timeout, f"deployment {deployment_id} did not end")
        return self.deployment(deployment_id)

    def watch_until(self, env, predicate, then=None, timeout=30):
        """Streams Watch events until predicate(event) holds; returns that event. `then` runs once
        the watch is subscribed (after the snapshot), so nothing it causes can be missed."""
        call = self.stub.Watch(self.pb.WatchRequest(environment_id=env), timeout=timeout)
        try:
            for event in call:
                if event.kind == self.pb.EVENT_SNAPSHOT_END and then:
                    then()
                if predicate(event):
                    return event
        finally:
            call.cancel()
        raise AssertionError("the watch ended before the event came")

    def service(self, deployment, service_id):
        return next(s for s in deployment.services if s.service_id == service_id)


@pytest.fixture
def simulated(pbs):
    platform = Platform(pbs, "--pipeline-simulate", "builder,cluster,network,certs", "--pipeline-simulated-step-ms", str(STEP_MS))
    yield platform
    platform.stop()


# Each case: the step the kill lands in and the service it runs for.
BOUNDARIES = [
    ("GIT_CLONE", "api"),
    ("BUILD", "api"),
    ("DEPLOYMENT", "api"),
    ("ROUTER_DEPLOYMENT", "api"),
    ("CERTIFICATE", "api"),
    ("MIRROR_IMAGE", "web"),
]


@pytest.mark.parametrize("step,service", BOUNDARIES)
def test_kill9_at_a_step_resumes_there_and_every_deployment_reaches_its_outcome(simulated, step, service):
    p, pb = simulated, simulated.pb
    env, ids = p.environment(("api", p.app(stage=0)), ("web", p.container(stage=1)))
    accepted = {}

    def deploy_two():
        accepted["running"] = p.deploy(env)
        accepted["waiting"] = p.deploy(env, services=[ids["api"]], versions={ids["api"]: "v2"})

    # The moment the step is recorded as started, the process dies.
    p.watch_until(env, lambda e: e.kind == pb.EVENT_STEP and e.step == pb.Step.Value(step)
                  and e.step_status == pb.STEP_RUNNING and e.service_id == ids[service], then=deploy_two)
    p.kill9()
    running, waiting = accepted["running"], accepted["waiting"]
    assert waiting.queue_position == 1
    p.start()

    # The interrupted deployment goes on from the step it was in and deploys both stages.
    first = p.wait_ended(running.deployment_id)
    assert first.status == pb.DEPLOYED, [(s.service_name, s.reason) for s in first.services]
    killed = p.service(first, ids[service])
    interrupted = next(s for s in killed.steps if s.step == pb.Step.Value(step))
    assert interrupted.status == pb.STEP_SUCCEEDED and interrupted.interruptions == 1 and interrupted.resumed_unix_millis >= interrupted.started_unix_millis
    # Its duration runs from its first start to its end: the time the pipeline was down is in it.
    assert interrupted.started_unix_millis + interrupted.duration_millis >= interrupted.resumed_unix_millis
    assert sum(s.interruptions for svc in first.services for s in svc.steps) == 1
    expected = ["MIRROR_IMAGE", "DEPLOYMENT", "ROUTER_DEPLOYMENT", "CERTIFICATE"] if service == "web" else ["GIT_CLONE", "BUILD", "DEPLOYMENT", "ROUTER_DEPLOYMENT", "CERTIFICATE"]
    assert [pb.Step.Name(s.step) for s in killed.steps] == expected
    assert p.service(first, ids["web"]).status == pb.DEPLOYED
    releases = p.stub.ListReleases(pb.ListReleasesRequest(service_id=ids[service])).releases
    assert len([r for r in releases if r.deployment_id == running.deployment_id]) == 1

    # The deployment that was waiting runs after it.
    second = p.wait_ended(waiting.deployment_id)
    assert second.status == pb.DEPLOYED
    assert [pb.Step.Name(s.step) for s in p.service(second, ids["api"]).steps] == [
        "GIT_CLONE", "BUILD", "DEPLOYMENT", "ROUTER_DEPLOYMENT", "CERTIFICATE"]

    # Nothing is left queued or running.
    history = p.stub.ListDeployments(pb.ListDeploymentsRequest(environment_id=env))
    assert all(d.ended_unix_millis > 0 for d in history.deployments)
    status = p.stub.GetEnvironmentStatus(pb.GetEnvironmentStatusRequest(environment_id=env))
    assert status.running_deployment_id == "" and list(status.queued_deployment_ids) == []
    assert pb.DeploymentStatus.Name(status.deployment_status) == "DEPLOYED"


def test_kill9_between_stages_resumes_the_deployment(simulated):
    p, pb = simulated, simulated.pb
    env, ids = p.environment(("db", p.app(stage=0, public=False)), ("api", p.app(stage=1, public=False, SLIPWAY_SIMULATE_STEP_MS="3000")))
    accepted = {}
    # Stage 0 is done and stage 1's first step has begun (it takes 3 s): kill now, with db DEPLOYED.
    p.watch_until(env, lambda e: e.kind == pb.EVENT_DEPLOYMENT_STATUS and e.service_id == ids["db"] and e.deployment_status == pb.DEPLOYED,
                  then=lambda: accepted.update(running=p.deploy(env)))
    p.kill9()
    running = accepted["running"]
    p.start()
    deployment = p.wait_ended(running.deployment_id)
    assert p.service(deployment, ids["db"]).status == pb.DEPLOYED
    # Whether api had started or not, it is deployed, and db is not deployed again.
    api = p.service(deployment, ids["api"])
    assert api.status == pb.DEPLOYED, api.reason
    assert [pb.StepStatus.Name(s.status) for s in api.steps] == ["STEP_SUCCEEDED"] * 3 + ["STEP_SKIPPED"] * 2
    assert all(s.interruptions == 0 for s in p.service(deployment, ids["db"]).steps)


def test_a_stuck_step_times_out_with_a_reason(pbs):
    p = Platform(pbs, "--pipeline-simulate", "builder,cluster,network,certs", "--pipeline-build-timeout", "1")
    try:
        pb = p.pb
        env, ids = p.environment(("api", p.app(SLIPWAY_SIMULATE_STEP_MS="60000")))
        deployment = p.wait_ended(p.deploy(env).deployment_id, timeout=30)
        api = p.service(deployment, ids["api"])
        assert api.status == pb.BUILD_ERROR
        assert api.reason == "GIT_CLONE failed: did not finish within 1.00 s (the step timed out)"
    finally:
        p.stop()


def test_bad_requests_get_a_clear_status_and_the_service_stays_up(simulated):
    p, pb = simulated, simulated.pb
    env, ids = p.environment(("api", p.app()))
    cases = [
        (lambda: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="API!", config=p.app())), grpc.StatusCode.INVALID_ARGUMENT, "DNS label"),
        (lambda: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="x", config=pb.ServiceConfig())), grpc.StatusCode.INVALID_ARGUMENT, "source"),
        (lambda: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="api", config=p.app())), grpc.StatusCode.ALREADY_EXISTS, "api"),
        (lambda: p.deploy("env_nope"), grpc.StatusCode.NOT_FOUND, "env_nope"),
        (lambda: p.stub.Cancel(pb.CancelRequest(deployment_id="dep_nope")), grpc.StatusCode.NOT_FOUND, "dep_nope"),
        (lambda: p.stub.Watch(pb.WatchRequest()).next(), grpc.StatusCode.INVALID_ARGUMENT, "environment_id"),
        (lambda: p.stub.ListDeployments(pb.ListDeploymentsRequest(environment_id=env, page_size=501)), grpc.StatusCode.INVALID_ARGUMENT, "page_size"),
        (lambda: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="s", config=p.app(), secrets={"1BAD": "x"})), grpc.StatusCode.INVALID_ARGUMENT, "secrets"),
        # Numbers that once reached arithmetic which traps (the readiness timeout × 1000 stopped the service at its next deploy).
        (lambda: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="s", config=probed(p.app(), timeout_seconds=4294967295))),
         grpc.StatusCode.INVALID_ARGUMENT, "config.readiness_probe.timeout_seconds must be at most 3600, got 4294967295"),
        (lambda: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="s", config=probed(p.app(), period_seconds=4294967295, failure_threshold=4294967295))),
         grpc.StatusCode.INVALID_ARGUMENT, "config.readiness_probe.period_seconds must be at most 3600"),
    ]
    # Every field of a service's configuration is held to its documented bound (docs/limits.md).
    def config(**changes):
        config = p.app()
        for path, value in changes.items():
            target = config
            *parents, last = path.split("__")
            for name in parents:
                target = getattr(target, name)
            field = getattr(target, last)
            if hasattr(field, "CopyFrom"):
                field.CopyFrom(value)
            elif hasattr(field, "update"):
                field.update(value)
            elif hasattr(field, "extend"):
                field.extend(value)
            else:
                setattr(target, last, value)
        return config
    def http_probe(path="/health", port=8080):
        config = p.app()
        config.readiness_probe.CopyFrom(pb.Probe(http=pb.HttpProbe(path=path, port=port)))
        return config
    container = lambda image, tag="1": pb.ServiceConfig(container=pb.ContainerSource(image=image, tag=tag), ports=[pb.Port(internal_port=80)])
    bad_configs = [
        (config(application__url="https://git.example.com/a b.git"), "config.application.url"),
        (config(application__url="https://git.example.com/" + "x" * 2100), "config.application.url"),
        (config(application__branch="--upload-pack=touch"), "config.application.branch"),
        (config(application__branch="main..x"), "config.application.branch"),
        (config(application__root_path="../../etc"), "config.application.root_path"),
        (config(application__dockerfile_path="/etc/passwd"), "config.application.dockerfile_path"),
        (config(application__build_args={f"A{i}": "x" for i in range(101)}), "config.application.build_args holds 101"),
        (config(application__build_args={"BIG": "x" * 17000}), "config.application.build_args hold"),
        (config(environment_variables={f"V{i}": "x" for i in range(1001)}), "config.environment_variables holds 1001"),
        (config(environment_variables={"BIG": "x" * 33000}), "config.environment_variables hold"),
        (config(environment_variables={"NUL": "a\0b"}), "NUL"),
        (config(replicas=101), "config.replicas must be at most 100"),
        (config(custom_domains=[f"d{i}.example.com" for i in range(21)]), "at most 20 per service"),
        (config(custom_domains=["shop_x.example.com"]), "not a domain name"),
        (config(custom_domains=["shop;.example.com"]), "not a domain name"),
        (config(auto_deploy=pb.AutoDeploy(enabled=True, branches=[f"b{i}" for i in range(51)])), "config.auto_deploy.branches holds 51"),
        (config(auto_deploy=pb.AutoDeploy(enabled=True, branches=["-x"])), "config.auto_deploy.branches"),
        (config(auto_deploy=pb.AutoDeploy(enabled=True, paths=["../x"])), "config.auto_deploy.paths"),
        (container("registry.example.com/web:1.0"), "without a tag"),
        (container("registry.example.com/Web"), "config.container.image"),
        (container('registry"x.example.com/web'), "config.container.image"),
        (container("registry.example.com/web", tag="-bad"), "config.container.tag"),
        (http_probe(path="no-slash"), "http.path must start with '/'"),
        (http_probe(port=70000), "http.port"),
        (probed(p.app(), initial_delay_seconds=3600, period_seconds=3600, failure_threshold=100), "at most 86400"),
    ]
    exec_probe = p.app()
    exec_probe.readiness_probe.CopyFrom(pb.Probe(exec=pb.ExecProbe(command=["x"] * 65)))
    bad_configs.append((exec_probe, "exec.command must be 1 to 64 arguments"))
    for bad, text in bad_configs:
        cases.append((lambda bad=bad: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="s", config=bad)), grpc.StatusCode.INVALID_ARGUMENT, text))
    for name, text in [("a" * 41, "1 to 40"), ("web\u202eoof", "DNS label")]:
        cases.append((lambda name=name: p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name=name, config=p.app())), grpc.StatusCode.INVALID_ARGUMENT, text))
    cases.append((lambda: p.stub.CreateOrganization(pb.CreateOrganizationRequest(name="acme\u202eorc")), grpc.StatusCode.INVALID_ARGUMENT, "printable"))
    # Bytes that are not UTF-8 in a string field (grpcio cannot send them as a str): refused, not repaired.
    raw = p.channel.unary_unary("/slipway.pipeline.v1.Pipeline/CreateOrganization", request_serializer=lambda b: b,
                                response_deserializer=pb.Organization.FromString)
    cases.append((lambda: raw(b"\x0a\x02\xc3\x28"), grpc.StatusCode.INVALID_ARGUMENT, "not valid UTF-8"))
    cases.append((lambda: p.stub.UpdateService(pb.UpdateServiceRequest(service_id=ids["api"], config=config(replicas=101))), grpc.StatusCode.INVALID_ARGUMENT, "replicas"))
    pid = p.pipeline.pid
    for number, (call, code, text) in enumerate(cases):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == code, (number, text, raised.value.code(), raised.value.details())
        assert text in raised.value.details(), (number, raised.value.details())
    # Still serving, the same process, nothing lost.
    assert [s.name for s in p.stub.ListServices(pb.ListServicesRequest(environment_id=env)).services] == ["api"]
    assert p.wait_ended(p.deploy(env).deployment_id).status == pb.DEPLOYED
    assert p.pipeline.poll() is None and p.pipeline.pid == pid


def test_organization_quotas_answer_resource_exhausted_and_a_domain_is_one_services(pbs):
    p = Platform(pbs, "--pipeline-simulate", "builder,cluster,network,certs", "--pipeline-quota", "services=2", "--pipeline-quota", "memory-mib=2048")
    try:
        pb = p.pb
        pid = p.pipeline.pid
        env, ids = p.environment(("api", p.app()), ("web", p.app()))
        with pytest.raises(grpc.RpcError) as raised:
            p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="third", config=p.app()))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota of 2" in raised.value.details(), raised.value.details()
        big = p.app()
        big.replicas, big.memory_mib = 4, 1024
        with pytest.raises(grpc.RpcError) as raised:
            p.stub.UpdateService(pb.UpdateServiceRequest(service_id=ids["web"], config=big))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "memory" in raised.value.details(), raised.value.details()
        # A custom domain: one service's, whatever the organization, refused when the second is saved.
        claimed = p.app()
        claimed.custom_domains.append("shop.example.test")
        p.stub.UpdateService(pb.UpdateServiceRequest(service_id=ids["web"], config=claimed))
        other_env, _ = p.environment()
        with pytest.raises(grpc.RpcError) as raised:
            p.stub.CreateService(pb.CreateServiceRequest(environment_id=other_env, name="web", config=claimed))
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS and "another service's" in raised.value.details()
        assert ids["web"] not in raised.value.details()
        # The operator gives one organization its own quota; the others keep the default.
        organization_id = next(o.id for o in p.stub.ListOrganizations(pb.ListOrganizationsRequest()).organizations
                               if any(e.id == env for pr in p.stub.ListProjects(pb.ListProjectsRequest(organization_id=o.id)).projects
                                      for e in p.stub.ListEnvironments(pb.ListEnvironmentsRequest(project_id=pr.id)).environments))
        quotas = p.stub.GetOrganizationQuotas(pb.GetOrganizationQuotasRequest(organization_id=organization_id))
        services = next(q for q in quotas.quotas if q.name == "services")
        assert (services.limit, services.used, services.overridden) == (2, 2, False), services
        raised_quota = p.stub.SetOrganizationQuotas(pb.SetOrganizationQuotasRequest(organization_id=organization_id, limits={"services": 3}))
        assert next(q for q in raised_quota.quotas if q.name == "services").overridden
        third = p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="third", config=p.app()))
        with pytest.raises(grpc.RpcError) as raised:
            p.stub.CreateService(pb.CreateServiceRequest(environment_id=env, name="fourth", config=p.app()))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota of 3" in raised.value.details(), raised.value.details()
        for name in ("one", "two"):
            p.stub.CreateService(pb.CreateServiceRequest(environment_id=other_env, name=name, config=p.app()))
        with pytest.raises(grpc.RpcError) as raised:
            p.stub.CreateService(pb.CreateServiceRequest(environment_id=other_env, name="three", config=p.app()))
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota of 2" in raised.value.details(), raised.value.details()
        for bad, words in [(pb.SetOrganizationQuotasRequest(organization_id=organization_id, limits={"rockets": 1}), "unknown quota"),
                           (pb.SetOrganizationQuotasRequest(organization_id=organization_id, limits={"services": 0}), "must be 1 to"),
                           (pb.SetOrganizationQuotasRequest(organization_id=organization_id, limits={"services": 5}, reset=["services"]), "both set and reset")]:
            with pytest.raises(grpc.RpcError) as raised:
                p.stub.SetOrganizationQuotas(bad)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in raised.value.details(), raised.value.details()
        with pytest.raises(grpc.RpcError) as raised:
            p.stub.SetOrganizationQuotas(pb.SetOrganizationQuotasRequest(organization_id="org_nope", limits={"services": 5}))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        # Kept across a restart; reset, the default again (what it holds stays: nothing is taken away).
        p.kill9()
        p.start()
        kept = p.stub.GetOrganizationQuotas(pb.GetOrganizationQuotasRequest(organization_id=organization_id))
        assert [(q.limit, q.used, q.overridden) for q in kept.quotas if q.name == "services"] == [(3, 3, True)]
        reset = p.stub.SetOrganizationQuotas(pb.SetOrganizationQuotasRequest(organization_id=organization_id, reset=["services"]))
        assert [(q.limit, q.used, q.overridden) for q in reset.quotas if q.name == "services"] == [(2, 3, False)]
        assert p.stub.GetService(pb.GetServiceRequest(service_id=third.id)).name == "third"
        pid = p.pipeline.pid
        # Nothing lost, the same process.
        assert sorted(s.name for s in p.stub.ListServices(pb.ListServicesRequest(environment_id=env)).services) == ["api", "third", "web"]
        assert p.stub.GetService(pb.GetServiceRequest(service_id=ids["web"])).config.replicas != 4
        assert p.wait_ended(p.deploy(env).deployment_id).status == pb.DEPLOYED
        assert p.pipeline.poll() is None and p.pipeline.pid == pid
    finally:
        p.stop()


def test_history_beyond_what_is_kept_is_pruned_when_the_pipeline_starts(pbs):
    p = Platform(pbs, "--pipeline-simulate", "builder,cluster,network,certs", "--pipeline-keep-deployments", "2", "--pipeline-keep-releases", "2")
    try:
        pb = p.pb
        env, ids = p.environment(("api", p.app()))
        for _ in range(4):
            assert p.wait_ended(p.deploy(env).deployment_id).status == pb.DEPLOYED
        history = p.stub.ListDeployments(pb.ListDeploymentsRequest(environment_id=env, page_size=100)).deployments
        assert len(history) == 4  # pruned at start and every 10 minutes, not at each deployment
        p.kill9()
        p.start()
        kept = p.stub.ListDeployments(pb.ListDeploymentsRequest(environment_id=env, page_size=100)).deployments
        assert [d.id for d in kept] == [d.id for d in history[:2]]
        releases = p.stub.ListReleases(pb.ListReleasesRequest(service_id=ids["api"], page_size=100)).releases
        assert len(releases) == 2
        # Rollback to a kept release still works; the service runs on.
        assert p.wait_ended(p.stub.Rollback(pb.RollbackRequest(service_id=ids["api"], release_id=releases[1].id)).deployment_id).status == pb.DEPLOYED
    finally:
        p.stop()


def probed(config, **numbers):
    """`config` with an HTTP readiness probe with these numbers."""
    config.readiness_probe.http.path = "/health"
    for name, value in numbers.items():
        setattr(config.readiness_probe, name, value)
    return config


def test_watch_streams_status_changes_to_a_grpcio_client(simulated):
    p, pb = simulated, simulated.pb
    env, ids = p.environment(("api", p.app(SLIPWAY_SIMULATE_STEP_MS="50")))
    events = []
    ready = threading.Event()

    def watch():
        for event in p.stub.Watch(pb.WatchRequest(environment_id=env), timeout=30):
            events.append(event)
            if event.kind == pb.EVENT_SNAPSHOT_END:
                ready.set()
            if event.kind == pb.EVENT_DEPLOYMENT_ENDED:
                return

    thread = threading.Thread(target=watch)
    thread.start()
    assert ready.wait(10)
    accepted = p.deploy(env)
    thread.join(30)
    assert [e.kind for e in events[:2]] == [pb.EVENT_SNAPSHOT, pb.EVENT_SNAPSHOT_END]
    statuses = [pb.DeploymentStatus.Name(e.deployment_status) for e in events if e.kind == pb.EVENT_DEPLOYMENT_STATUS]
    assert statuses == ["QUEUED", "BUILDING", "DEPLOYING", "DEPLOYED"]
    assert all(e.deployment_id == accepted.deployment_id for e in events[2:])
    assert events[-1].environment_deployment_status == pb.DEPLOYED


@pytest.fixture
def with_builder(pbs):
    """registry + logs + builder + pipeline: applications are fetched and built for real."""
    from conftest import BIN_DIR

    data = tempfile.mkdtemp(prefix="slipway-pipeline-builder-")
    registry_port, builder_port, logs_port = local.free_port(), local.free_port(), local.free_port()
    registry = local.start_registry(os.path.join(data, "registry"), registry_port)
    logs = local.start_service(BIN_DIR, "logs", data, logs_port)
    builder = local.start_service(BIN_DIR, "builder", data, builder_port, "--builder-registry", f"127.0.0.1:{registry_port}",
                                  "--logs-address", f"127.0.0.1:{logs_port}")
    platform = Platform(pbs, "--builder-address", f"127.0.0.1:{builder_port}", "--pipeline-simulate", "cluster,network,certs",
                        data=data, logs=(logs_port, logs))
    yield platform, data, f"127.0.0.1:{registry_port}"
    platform.stop()
    local.stop(builder, registry)


def test_an_application_is_fetched_and_built_by_the_real_builder(with_builder):
    p, data, registry = with_builder
    pb = p.pb
    repo = os.path.join(data, "hello")
    local.example_repository(repo)
    head = local.git(repo, "rev-parse", "HEAD").strip()
    env, ids = p.environment(("hello", p.app(url=repo, build_args={"BASE": f"{registry}/slipway/busybox:latest"})))

    first = p.wait_ended(p.deploy(env, key="push-1").deployment_id, timeout=300)
    hello = p.service(first, ids["hello"])
    assert first.status == pb.DEPLOYED, hello.reason
    assert hello.commit == head
    assert [(pb.Step.Name(s.step), pb.StepStatus.Name(s.status)) for s in hello.steps][:2] == [("GIT_CLONE", "STEP_SUCCEEDED"), ("BUILD", "STEP_SUCCEEDED")]
    # The image is in the registry under the digest the deployment recorded.
    reference, digest = hello.image.split("@")
    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/manifests/{tag}", method="HEAD",
                                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"})
    assert urllib.request.urlopen(request).headers["Docker-Content-Digest"] == digest

    # The deployment's log holds the pipeline's lines and the builder's, in one stream.
    stream = p.logs_pb.StreamKey(environment_id=env, deployment_id=first.id)
    with local.platform_channel(p.data, f"127.0.0.1:{p.logs_port}", "logs") as channel:
        lines = p.logs_grpc.LogsStub(channel).Query(p.logs_pb.QueryRequest(stream=stream, page_size=1000)).lines
    texts = [line.text for line in lines]
    assert texts[0] == "DEPLOY of hello requested by interop (API)"
    assert "hello: BUILD started" in texts
    assert any(line.step == "BUILD" and line.source == p.logs_pb.STDOUT for line in lines)  # buildah's own output
    assert texts[-1].startswith("deployment ended: DEPLOYED in ")

    # Redeploy: the same commit, the image is already there, nothing is built.
    redeploy = p.wait_ended(p.stub.Redeploy(pb.ActionRequest(environment_id=env)).deployment_id, timeout=120)
    steps = {pb.Step.Name(s.step): pb.StepStatus.Name(s.status) for s in p.service(redeploy, ids["hello"]).steps}
    assert steps["BUILD"] == "STEP_SKIPPED"
    assert p.service(redeploy, ids["hello"]).requested_version == head

    # A commit that does not exist fails the build with the builder's reason.
    missing = p.wait_ended(p.deploy(env, versions={ids["hello"]: "0" * 40}).deployment_id, timeout=120)
    failed = p.service(missing, ids["hello"])
    assert failed.status == pb.BUILD_ERROR
    assert "0000000" in failed.reason and failed.reason.startswith("GIT_CLONE failed: "), failed.reason


@pytest.fixture
def with_cluster(pbs):
    """The whole platform, nothing simulated: registry + logs + builder + cluster + network (its own
    nginx) + certs + pipeline. Applications are built, run (runc) and served through the load balancer
    over HTTPS with a certificate from the local CA."""
    from conftest import BIN_DIR

    data = tempfile.mkdtemp(prefix="slipway-pipeline-cluster-")
    registry_port, builder_port, cluster_port, logs_port, network_port, certs_port, http_port, https_port = (local.free_port() for _ in range(8))
    registry = local.start_registry(os.path.join(data, "registry"), registry_port)
    logs = local.start_service(BIN_DIR, "logs", data, logs_port)
    # How each collaborator is started (again, after a kill).
    starts = {
        "builder": (builder_port, "--builder-registry", f"127.0.0.1:{registry_port}", "--logs-address", f"127.0.0.1:{logs_port}"),
        "cluster": (cluster_port, "--network-address", f"127.0.0.1:{network_port}"),
    }
    builder = local.start_service(BIN_DIR, "builder", data, *starts["builder"])
    network = local.start_service(BIN_DIR, "network", data, network_port, "--network-http-listen", f"127.0.0.1:{http_port}",
                                  "--network-https-listen", f"127.0.0.1:{https_port}")
    certs = local.start_service(BIN_DIR, "certs", data, certs_port, "--network-address", f"127.0.0.1:{network_port}")
    cluster = local.start_service(BIN_DIR, "cluster", data, *starts["cluster"])
    platform = Platform(pbs, "--builder-address", f"127.0.0.1:{builder_port}", "--cluster-address", f"127.0.0.1:{cluster_port}",
                        "--network-address", f"127.0.0.1:{network_port}", "--certs-address", f"127.0.0.1:{certs_port}",
                        "--pipeline-simulate", "none", "--pipeline-step-timeout", "30", data=data, logs=(logs_port, logs))
    (cluster_pb, cluster_grpc), = local.protos("slipway/cluster/v1/cluster.proto")
    channel = local.platform_channel(data, f"127.0.0.1:{cluster_port}", "cluster")
    platform.cluster = (cluster_pb, cluster_grpc.ClusterStub(channel))
    platform.https_port = https_port
    platform.local_ca = os.path.join(data, "certs", "local-ca.crt")
    platform.collaborators = {"builder": builder, "cluster": cluster}

    def restart(name):
        """kill -9 of a collaborator, then the same command again."""
        platform.collaborators[name].send_signal(signal.SIGKILL)
        platform.collaborators[name].wait()
        platform.collaborators[name] = local.start_service(BIN_DIR, name, data, *starts[name])

    platform.restart = restart
    yield platform, data, f"127.0.0.1:{registry_port}"
    channel.close()
    platform.stop()
    local.stop(*platform.collaborators.values(), certs, network, registry)
    local.stop_nginx(data)
    # Whatever a failed test left running.
    for instance in subprocess.run(["runc", "--root", os.path.join(data, "cluster", "runc"), "list", "-q"],
                                   capture_output=True, text=True).stdout.split():
        subprocess.run(["runc", "--root", os.path.join(data, "cluster", "runc"), "delete", "--force", instance], capture_output=True)


def through_load_balancer(p, host, path="/"):
    """(status, body) of GET https://host/path through the platform's nginx, verified with the local CA."""
    context = ssl.create_default_context(cafile=p.local_ca)
    connection = http.client.HTTPSConnection("127.0.0.1", p.https_port, timeout=5, context=context)
    try:
        connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", p.https_port), timeout=5), server_hostname=host)
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError as error:
        return None, repr(error)
    finally:
        connection.close()


class Traffic(threading.Thread):
    """One request after another through the load balancer, each on a new connection, until stopped;
    counts the answers that were not 200 with the expected page."""

    def __init__(self, p, host):
        super().__init__()
        self.p, self.host = p, host
        self.stopped = threading.Event()
        self.ok, self.failures, self.bodies = 0, [], set()

    def run(self):
        while not self.stopped.is_set():
            status, body = through_load_balancer(self.p, self.host)
            if status == 200:
                self.ok += 1
                self.bodies.add(body.strip())
            else:
                self.failures.append((status, body[:200]))

    def stop(self):
        self.stopped.set()
        self.join()


def serving(address, path="/"):
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_a_pushed_commit_is_built_run_and_replaced_by_the_next_one(with_cluster):
    p, data, registry = with_cluster
    pb = p.pb
    cluster_pb, cluster = p.cluster
    repo = os.path.join(data, "hello")
    local.example_repository(repo)
    config = p.app(url=repo, build_args={"BASE": f"{registry}/slipway/busybox:latest"})
    # Ready within 1 × 5 s (the cluster checks every 100 ms).
    config.readiness_probe.CopyFrom(pb.Probe(http=pb.HttpProbe(path="/health", port=8080), period_seconds=5, failure_threshold=1))
    config.replicas = 2
    env, ids = p.environment(("hello", config))
    workload = cluster_pb.Workload(environment_id=env, service_id=ids["hello"], service_name="hello")

    first = p.wait_ended(p.deploy(env).deployment_id, timeout=300)
    assert first.status == pb.DEPLOYED, p.service(first, ids["hello"]).reason
    assert [(s.step, s.status) for s in p.service(first, ids["hello"]).steps][-2:] == [(pb.ROUTER_DEPLOYMENT, pb.STEP_SUCCEEDED), (pb.CERTIFICATE, pb.STEP_SUCCEEDED)]
    instances = cluster.ListInstances(cluster_pb.WorkloadRequest(workload=workload)).instances
    assert len(instances) == 2 and all(i.status == cluster_pb.INSTANCE_RUNNING for i in instances)
    assert all("Hello from Slipway" in (serving(i.address) or "") for i in instances), [serving(i.address) for i in instances]
    # Through the load balancer, at the default domain, over HTTPS with the local CA's certificate.
    host = "hello-prod.localhost"
    status, body = through_load_balancer(p, host)
    assert status == 200 and "Hello from Slipway" in body, (status, body)

    # The next commit replaces them while requests keep coming through the load balancer: none
    # fails (new instances take the traffic once ready, the old ones drain, then stop).
    with open(os.path.join(repo, "www", "index.html"), "w") as f:
        f.write("<h1>second version</h1>\n")
    local.commit(repo, "second version")
    traffic, load = Traffic(p, host), local.H2Load(p.https_port, host)
    traffic.start()
    load.start()
    try:
        second = p.wait_ended(p.deploy(env).deployment_id, timeout=300)
        local.wait_until(lambda: any("second version" in b for b in traffic.bodies), 10, "the load balancer never served the new version")
    finally:
        traffic.stop()
        load.stop()
    assert traffic.failures == [], traffic.failures[:5]
    assert traffic.ok > 20 and any("Hello from Slipway" in b for b in traffic.bodies), traffic.ok
    assert (load.failed, load.errored, load.non2xx) == (0, 0, 0), load.outputs[:1]
    assert load.rounds >= 2 and load.succeeded == 100 * load.rounds
    assert second.status == pb.DEPLOYED, p.service(second, ids["hello"]).reason
    replaced = cluster.ListInstances(cluster_pb.WorkloadRequest(workload=workload)).instances
    assert {i.id for i in replaced}.isdisjoint({i.id for i in instances})
    assert all("second version" in (serving(i.address) or "") for i in replaced)
    assert all(serving(i.address) is None for i in instances)

    # A version that is never ready fails the deployment and the running one keeps serving.
    update = pb.ServiceConfig()
    update.CopyFrom(config)
    update.readiness_probe.http.path = "/missing"
    p.stub.UpdateService(pb.UpdateServiceRequest(service_id=ids["hello"], config=update))
    failed = p.wait_ended(p.deploy(env).deployment_id, timeout=300)
    hello = p.service(failed, ids["hello"])
    assert failed.status == pb.DEPLOYMENT_ERROR
    assert "GET /missing answered 404" in hello.reason, hello.reason
    assert all("second version" in (serving(i.address) or "") for i in replaced)

    # Rollback to the first release: its image and its configuration (the /health probe).
    releases = p.stub.ListReleases(pb.ListReleasesRequest(service_id=ids["hello"])).releases
    rolled = p.wait_ended(p.stub.Rollback(pb.RollbackRequest(service_id=ids["hello"], release_id=releases[-1].id)).deployment_id, timeout=300)
    assert rolled.status == pb.DEPLOYED, p.service(rolled, ids["hello"]).reason
    back = cluster.ListInstances(cluster_pb.WorkloadRequest(workload=workload)).instances
    assert all("Hello from Slipway" in (serving(i.address) or "") for i in back)

    # Stop: nothing serves; delete: nothing is left.
    stop = p.wait_ended(p.stub.Stop(pb.ActionRequest(environment_id=env)).deployment_id, timeout=120)
    assert stop.status == pb.STOPPED
    assert all(serving(i.address) is None for i in back)
    assert through_load_balancer(p, host)[0] == 503
    _, body = through_load_balancer(p, host)
    assert "no ready instance of hello" in body
    delete = p.wait_ended(p.stub.Delete(pb.ActionRequest(environment_id=env)).deployment_id, timeout=120)
    assert delete.status == pb.DELETED
    assert list(cluster.ListInstances(cluster_pb.WorkloadRequest(workload=workload)).instances) == []
    # The route is gone: the load balancer refuses the name (its HTTPS server is gone with the route).
    status, body = through_load_balancer(p, host)
    assert status is None and "UNRECOGNIZED_NAME" in body, (status, body)


def test_killed_services_mid_step_resume_and_the_new_version_serves(with_cluster):
    """kill -9 of the pipeline in each step of a real deployment (git, buildah, registry, runc, nginx,
    the local CA), and of the builder during BUILD and the cluster during DEPLOYMENT: each time the
    deployment goes on once the process is back, ends DEPLOYED, and the load balancer serves the new
    version."""
    p, data, registry = with_cluster
    pb = p.pb
    repo = os.path.join(data, "hello")
    local.example_repository(repo)
    config = p.app(url=repo, build_args={"BASE": f"{registry}/slipway/busybox:latest"})
    config.readiness_probe.CopyFrom(pb.Probe(http=pb.HttpProbe(path="/health", port=8080), period_seconds=5, failure_threshold=1))
    env, ids = p.environment(("hello", config))
    host = "hello-prod.localhost"
    assert p.wait_ended(p.deploy(env).deployment_id, timeout=300).status == pb.DEPLOYED

    kills = [("pipeline", step) for step in ("GIT_CLONE", "BUILD", "DEPLOYMENT", "ROUTER_DEPLOYMENT", "CERTIFICATE")]
    kills += [("builder", "BUILD"), ("cluster", "DEPLOYMENT")]
    for number, (victim, step) in enumerate(kills):
        version = f"version {number} ({victim} killed in {step})"
        with open(os.path.join(repo, "www", "index.html"), "w") as f:
            f.write(f"<h1>{version}</h1>\n")
        local.commit(repo, version)
        accepted = {}
        p.watch_until(env, lambda e: e.kind == pb.EVENT_STEP and e.step == pb.Step.Value(step) and e.step_status == pb.STEP_RUNNING,
                      then=lambda: accepted.update(deployment=p.deploy(env)), timeout=120)
        if victim == "pipeline":
            p.kill9()
            p.start()
        else:
            p.restart(victim)
        deployment = p.wait_ended(accepted["deployment"].deployment_id, timeout=300)
        hello = p.service(deployment, ids["hello"])
        assert deployment.status == pb.DEPLOYED, (victim, step, hello.reason, [(pb.Step.Name(s.step), s.message) for s in hello.steps])
        interruptions = {pb.Step.Name(s.step): s.interruptions for s in hello.steps if s.interruptions}
        # A pipeline killed in a step resumes that step. The short steps may have ended between the
        # RUNNING event and the kill: the kill then lands in a later step (or after the last one), and
        # that step is the one resumed. Either way, exactly one step of this one or after it resumes.
        if victim != "pipeline":
            assert interruptions == {}, (victim, step, interruptions)
        elif step in ("GIT_CLONE", "ROUTER_DEPLOYMENT", "CERTIFICATE"):
            later = [name for name in pb.Step.keys() if pb.Step.Value(name) >= pb.Step.Value(step)]
            assert interruptions == {} or (len(interruptions) == 1 and list(interruptions.values()) == [1]
                                           and next(iter(interruptions)) in later), (victim, step, interruptions)
        else:
            assert interruptions == {step: 1}, (victim, step, interruptions)
        status, body = through_load_balancer(p, host)
        assert status == 200 and version in body, (victim, step, status, body)


def test_deployment_logs_are_complete_across_a_kill_of_the_logs_service(simulated):
    """Lines the logs service had not acknowledged when it was kill -9'd are sent again once it is
    back: the deployment that ran meanwhile has every line, in order, ending with its end line."""
    p, pb = simulated, simulated.pb
    env, _ = p.environment(("api", p.app()))

    def lines(deployment_id):
        with local.platform_channel(p.data, f"127.0.0.1:{p.logs_port}", "logs") as channel:
            stream = p.logs_pb.StreamKey(deployment_id=deployment_id, environment_id=env)
            found = p.logs_grpc.LogsStub(channel).Query(p.logs_pb.QueryRequest(stream=stream, page_size=1000)).lines
        return [(line.seq, line.text.split(" in ")[0]) for line in found]

    before = p.wait_ended(p.deploy(env).deployment_id)
    local.wait_until(lambda: any("deployment ended" in text for _, text in lines(before.id)), 10, "the first deployment's log did not end")
    expected = [text for _, text in lines(before.id)]
    p.logs.send_signal(signal.SIGKILL)
    p.logs.wait()
    during = p.deploy(env)  # its lines queue while nothing listens
    p.wait_ended(during.deployment_id)
    p.logs = local.start_service(p.bin, "logs", p.data, p.logs_port)
    local.wait_until(lambda: any("deployment ended" in text for _, text in lines(during.deployment_id)), 20, "the log never got its end line")
    got = lines(during.deployment_id)
    assert [seq for seq, _ in got] == list(range(1, len(got) + 1))
    assert [text for _, text in got] == expected
