"""deploy/kubernetes: Kubernetes' own schemas accept every object (`kubernetes-validate --strict`,
for the Kubernetes version the Swift tests validate against), and the objects fit together: each of
the seven services has a Deployment and a Service on its --listen port, every --X-address reaches a
Service that exists on that port, every flag is one the binary takes and every service is told where
the peers it calls are (both read from Sources), the stateful ones keep their data on a claim, only
the gateway is exposed, and slipway-cluster's service account may do what the Kubernetes driver does.
No API server is needed (none runs here).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

MANIFESTS = os.path.join(ROOT, "deploy", "kubernetes")
NAMESPACE = "slipway"
IMAGE = "registry.example.com/slipway/slipway:VERSION"
DATA_DIR = "/var/lib/slipway"
# In port order, as ServiceName: gateway on 7000 through logs on 7006.
SERVICES = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]
PORTS = {name: 7000 + i for i, name in enumerate(SERVICES)}
# Services whose data must outlive their pod (a PersistentVolumeClaim at DATA_DIR, one replica,
# Recreate so two pods never share it): pipeline's SQLite, logs' segments, certs' keys, the gateway's
# tokens, the network's routes and certificates, the cluster's record of what it deployed.
STATEFUL = ["gateway", "pipeline", "network", "cluster", "certs", "logs"]
# Peers a service's code calls but the manifests need not name: the cluster service calls the network
# service only as the local driver's traffic switch; here it runs the Kubernetes driver.
NOT_CALLED_HERE = {"cluster": {"network"}}
# What the Kubernetes driver (Sources/SlipwayCluster/Kubernetes) asks the API server for:
# (API group, resource, verb). Server-side apply is a PATCH, and a create when the object is new.
DRIVER_NEEDS = [
    ("", "namespaces", "create"), ("", "namespaces", "patch"),
    *[("", resource, verb) for resource in ("configmaps", "secrets", "services") for verb in ("create", "patch", "delete")],
    *[("apps", "deployments", verb) for verb in ("get", "create", "patch", "delete")],
    ("apps", "deployments/scale", "patch"),
    ("", "pods", "list"),
    ("", "pods/log", "get"),
]


def kubernetes_version():
    """The version Tests/SlipwayTestSupport/KubernetesSchemas.swift validates against."""
    with open(os.path.join(ROOT, "Tests", "SlipwayTestSupport", "KubernetesSchemas.swift")) as f:
        match = re.search(r'static let version = "([0-9.]+)"', f.read())
    assert match, "no `static let version = \"…\"` in Tests/SlipwayTestSupport/KubernetesSchemas.swift"
    return match.group(1)


def manifest_files():
    return sorted(f for f in os.listdir(MANIFESTS) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")


def load_objects():
    """[(file, object)] of every document of every manifest."""
    objects = []
    for name in manifest_files():
        with open(os.path.join(MANIFESTS, name)) as f:
            try:
                documents = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as error:
                pytest.fail(f"deploy/kubernetes/{name} is not YAML: {error}")
        for document in documents:
            assert isinstance(document, dict) and "kind" in document and "metadata" in document, \
                f"deploy/kubernetes/{name}: a document is not a Kubernetes object: {document!r:.200}"
            objects.append((name, document))
    return objects


@pytest.fixture(scope="module")
def objects():
    return load_objects()


def find(objects, kind, name, namespace=NAMESPACE):
    """The object of that kind and name (and namespace, for namespaced kinds), or None."""
    for _, o in objects:
        meta = o["metadata"]
        if o["kind"] == kind and meta.get("name") == name and (namespace is None or meta.get("namespace") == namespace):
            return o
    return None


def deployment(objects, service):
    d = find(objects, "Deployment", f"slipway-{service}")
    assert d is not None, f"no Deployment slipway-{service} in namespace {NAMESPACE} in deploy/kubernetes"
    return d


def container(d):
    containers = d["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"Deployment {d['metadata']['name']}: expected one container, found {len(containers)}"
    return containers[0]


def flags(c):
    """The container's args as [(flag, value)]: `--x=v` and `--x v` both read as ("--x", "v")."""
    args, pairs, i = c.get("args", []), [], 0
    while i < len(args):
        arg = str(args[i])
        if arg.startswith("--") and "=" in arg:
            pairs.append(tuple(arg.split("=", 1)))
        elif arg.startswith("--") and i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
            pairs.append((arg, str(args[i + 1])))
            i += 1
        else:
            pairs.append((arg, None))
        i += 1
    return pairs


def flag(c, name, where):
    values = [v for f, v in flags(c) if f == name]
    assert len(values) == 1, f"{where}: expected one {name} in args, found {len(values)}: {c.get('args')}"
    return values[0]


def container_port(c, target):
    """What a Service's targetPort (number or port name) means in this container."""
    if isinstance(target, int):
        return target
    named = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == target]
    return named[0] if named else None


def service_ports(objects, service):
    """[(port, container port it reaches)] of Service slipway-<service>, checked to select the pods."""
    s = find(objects, "Service", f"slipway-{service}")
    assert s is not None, f"no Service slipway-{service} in namespace {NAMESPACE} in deploy/kubernetes"
    d = deployment(objects, service)
    selector = s["spec"].get("selector") or {}
    labels = d["spec"]["template"]["metadata"].get("labels", {})
    assert selector and all(labels.get(k) == v for k, v in selector.items()), \
        f"Service slipway-{service} selects {selector}, which the pods of Deployment slipway-{service} ({labels}) do not match"
    c = container(d)
    return [(p["port"], container_port(c, p.get("targetPort", p["port"]))) for p in s["spec"]["ports"]]


# --- the files ---------------------------------------------------------------------------------------

def test_the_kustomization_lists_every_manifest():
    with open(os.path.join(MANIFESTS, "kustomization.yaml")) as f:
        kustomization = yaml.safe_load(f)
    assert kustomization.get("kind") == "Kustomization", "deploy/kubernetes/kustomization.yaml is not a Kustomization"
    listed = kustomization.get("resources") or []
    missing = sorted(set(manifest_files()) - set(listed))
    unknown = sorted(set(listed) - set(manifest_files()))
    assert not missing, f"deploy/kubernetes/kustomization.yaml does not list {missing}: `kubectl apply -k` would leave them out"
    assert not unknown, f"deploy/kubernetes/kustomization.yaml lists {unknown}, which are not files in deploy/kubernetes"
    assert len(listed) == len(set(listed)), f"deploy/kubernetes/kustomization.yaml lists a file twice: {listed}"
    name = IMAGE.rsplit(":", 1)[0]
    assert any(i.get("name") == name for i in kustomization.get("images") or []), \
        f"kustomization.yaml has no `images` entry for {name} (where the tag is set)"


def test_kubernetes_accepts_every_object(objects):
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: scripts/install-deps.sh test (or pip install kubernetes-validate)")
    version = kubernetes_version()
    files = [os.path.join(MANIFESTS, f) for f in manifest_files()]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
                            capture_output=True, text=True)
    output = result.stdout + result.stderr
    # A kind without a schema is only a warning to the validator: here it is a failure too.
    problems = "\n".join(line for line in output.splitlines() if not line.startswith("INFO "))
    assert result.returncode == 0 and not problems, \
        f"kubernetes-validate --strict -k {version} refused a manifest:\n{problems}\n\nwhole output:\n{output}"
    for file, o in objects:
        assert f"INFO {os.path.join(MANIFESTS, file)} passed for resource {o['kind'].lower()}/{o['metadata']['name']} " in output, \
            f"kubernetes-validate did not pass {o['kind']} {o['metadata']['name']} of {file}:\n{output}"


def test_kustomize_renders_every_object(objects):
    if shutil.which("kubectl"):
        command = ["kubectl", "kustomize", MANIFESTS]
    elif shutil.which("kustomize"):
        command = ["kustomize", "build", MANIFESTS]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]

    def key(o):
        return (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])

    assert sorted(map(key, rendered)) == sorted(key(o) for _, o in objects), f"{' '.join(command)} renders other objects"
    images = {c["image"] for o in rendered if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {IMAGE}, f"rendered images: {images}"


def test_every_object_is_in_the_slipway_namespace(objects):
    assert find(objects, "Namespace", NAMESPACE, namespace=None) is not None, f"no Namespace {NAMESPACE}"
    cluster_wide = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for file, o in objects:
        if o["kind"] not in cluster_wide:
            assert o["metadata"].get("namespace") == NAMESPACE, \
                f"{file}: {o['kind']} {o['metadata']['name']} is in namespace {o['metadata'].get('namespace')!r}, not {NAMESPACE}"


# --- each service ------------------------------------------------------------------------------------

@pytest.mark.parametrize("service", SERVICES)
def test_each_service_has_a_deployment_and_a_service_on_its_port(objects, service):
    port, where = PORTS[service], f"Deployment slipway-{service}"
    d = deployment(objects, service)
    c = container(d)
    assert c.get("image") == IMAGE, f"{where}: image {c.get('image')!r}, expected the placeholder {IMAGE}"
    assert c.get("command") == [f"/usr/local/bin/slipway-{service}"], f"{where}: command {c.get('command')}"
    assert flag(c, "--listen", where) == f"0.0.0.0:{port}", f"{where}: --listen must be 0.0.0.0:{port}"
    assert flag(c, "--data-dir", where) == DATA_DIR, f"{where}: --data-dir must be {DATA_DIR}"
    assert any(m["mountPath"] == DATA_DIR for m in c.get("volumeMounts", [])), f"{where}: nothing is mounted at {DATA_DIR}"
    assert port in [p["containerPort"] for p in c.get("ports", [])], f"{where}: no containerPort {port}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = (c.get(probe) or {}).get("grpc")
        assert grpc is not None, f"{where}: no gRPC {probe} (grpc.health.v1)"
        assert grpc.get("port") == port, f"{where}: {probe} on port {grpc.get('port')}, the service listens on {port}"
    resources = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in (resources.get(kind) or {}), f"{where}: no {resource} in resources.{kind}"
    assert c.get("securityContext"), f"{where}: no securityContext"
    pod = d["spec"]["template"]["spec"]
    # Service links would put SLIPWAY_<SERVICE>_… variables in the environment: Slipway's prefix.
    assert pod.get("enableServiceLinks") is False, f"{where}: enableServiceLinks must be false"
    reached = [container_port for _, container_port in service_ports(objects, service)]
    assert port in reached, f"Service slipway-{service} reaches container ports {reached}, the service listens on {port}"


def test_every_address_points_at_a_service_on_that_port(objects):
    checked = 0
    for service in SERVICES:
        c = container(deployment(objects, service))
        for name, value in flags(c):
            match = re.fullmatch(r"--(\w+)-address", name)
            if not match:
                continue
            peer, where = match.group(1), f"Deployment slipway-{service}: {name}={value}"
            assert peer in SERVICES, f"{where}: no such service"
            host, _, port = (value or "").rpartition(":")
            assert host in (f"slipway-{peer}.{NAMESPACE}.svc", f"slipway-{peer}.{NAMESPACE}.svc.cluster.local"), \
                f"{where}: expected the Service's name slipway-{peer}.{NAMESPACE}.svc"
            assert port.isdigit(), f"{where}: not HOST:PORT"
            ports = dict(service_ports(objects, peer))
            assert int(port) in ports, f"{where}: Service slipway-{peer} has no port {port} (it has {sorted(ports)})"
            assert ports[int(port)] == PORTS[peer], \
                f"{where}: port {port} of Service slipway-{peer} reaches container port {ports[int(port)]}, slipway-{peer} listens on {PORTS[peer]}"
            checked += 1
    assert checked > 0, "no --X-address argument in any Deployment"


def declared_flags(service):
    """Every flag the service's binary takes: ServiceOptions' and its own options' (@Option, @Flag)."""
    sources = [os.path.join(ROOT, "Sources", "SlipwayServiceKit", "ServiceOptions.swift"),
               os.path.join(ROOT, "Sources", f"slipway-{service}", "main.swift")]
    for directory, _, files in os.walk(os.path.join(ROOT, "Sources", f"Slipway{service.capitalize()}")):
        sources += [os.path.join(directory, f) for f in files if f.endswith(".swift")]
    names = set()
    for path in sources:
        with open(path) as f:
            text = f.read()
        # Each @Option/@Flag is followed by its `var`, before the next one.
        for match in re.finditer(r"@(Option|Flag)\b(.*?)\bvar\s+(\w+)", text, re.S):
            name = "--" + re.sub(r"(?<!^)([A-Z])", r"-\1", match.group(3)).lower()
            names.add(name)
            if match.group(1) == "Flag" and "prefixedNo" in match.group(2):
                names.add("--no-" + name[2:])
    return names


@pytest.mark.parametrize("service", SERVICES)
def test_every_flag_is_one_the_service_takes(objects, service):
    declared = declared_flags(service)
    assert "--listen" in declared and "--data-dir" in declared, f"could not read the flags of slipway-{service} from Sources"
    unknown = sorted({f for f, _ in flags(container(deployment(objects, service)))} - declared)
    assert not unknown, (f"Deployment slipway-{service} passes {unknown}, which slipway-{service} does not take "
                         f"(Sources/Slipway{service.capitalize()}, ServiceOptions): it would exit at start")


def peers_called(service):
    """The services whose address the service's code reads (`directory[.logs]`)."""
    peers = set()
    for directory, _, files in os.walk(os.path.join(ROOT, "Sources", f"Slipway{service.capitalize()}")):
        for name in files:
            if name.endswith(".swift"):
                with open(os.path.join(directory, name)) as f:
                    peers |= set(re.findall(r"directory\[\.(\w+)\]", f.read()))
    return peers - {service}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_told_where_the_peers_it_calls_are(objects, service):
    called = peers_called(service) - NOT_CALLED_HERE.get(service, set())
    given = {re.fullmatch(r"--(\w+)-address", f).group(1) for f, _ in flags(container(deployment(objects, service)))
             if re.fullmatch(r"--(\w+)-address", f)}
    missing = sorted(called - given)
    assert not missing, (f"slipway-{service} calls {sorted(called)} (Sources/Slipway{service.capitalize()}) but its Deployment "
                         f"has no {', '.join(f'--{p}-address' for p in missing)}: it would call 127.0.0.1 in its own pod")


@pytest.mark.parametrize("service", STATEFUL)
def test_stateful_services_keep_their_data_on_a_claim(objects, service):
    d = deployment(objects, service)
    where = f"Deployment slipway-{service}"
    mount = next(m for m in container(d).get("volumeMounts", []) if m["mountPath"] == DATA_DIR)
    volume = next((v for v in d["spec"]["template"]["spec"].get("volumes", []) if v["name"] == mount["name"]), None)
    assert volume is not None, f"{where}: no volume {mount['name']} for {DATA_DIR}"
    claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
    assert claim, f"{where}: {DATA_DIR} is not a PersistentVolumeClaim: its state would die with the pod"
    assert find(objects, "PersistentVolumeClaim", claim) is not None, f"{where}: PersistentVolumeClaim {claim} is not in the manifests"


def test_a_claim_is_never_shared_by_two_pods(objects):
    for file, o in objects:
        if o["kind"] != "Deployment":
            continue
        if any("persistentVolumeClaim" in v for v in o["spec"]["template"]["spec"].get("volumes", [])):
            where = f"{file}: Deployment {o['metadata']['name']}"
            assert o["spec"].get("replicas") == 1, f"{where} has a claim, so one replica, not {o['spec'].get('replicas')}"
            assert (o["spec"].get("strategy") or {}).get("type") == "Recreate", \
                f"{where} has a claim, so strategy Recreate (a rolling update would run two pods on it)"


def test_only_the_gateway_is_exposed_on_443(objects):
    for file, o in objects:
        if o["kind"] == "Service" and o["metadata"]["name"] != "slipway-gateway":
            assert o["spec"].get("type", "ClusterIP") == "ClusterIP", f"{file}: Service {o['metadata']['name']} is exposed ({o['spec']['type']})"
    gateway = find(objects, "Service", "slipway-gateway")
    assert gateway is not None and gateway["spec"].get("type") == "LoadBalancer", "Service slipway-gateway is not of type LoadBalancer"
    assert (443, PORTS["gateway"]) in service_ports(objects, "gateway"), "Service slipway-gateway does not take 443 to the gateway's 7000"


def test_only_the_builder_is_privileged(objects):
    for service in SERVICES:
        d = deployment(objects, service)
        pod, security = d["spec"]["template"]["spec"], container(d).get("securityContext") or {}
        if service == "builder":
            assert security.get("privileged") is True, "slipway-builder runs buildah (chroot isolation): it needs privileged"
        else:
            where = f"Deployment slipway-{service}"
            assert not security.get("privileged"), f"{where} is privileged"
            assert security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false"
            assert (pod.get("securityContext") or {}).get("runAsNonRoot") is True or security.get("runAsNonRoot") is True, \
                f"{where}: runAsNonRoot must be true"
            assert "ALL" in ((security.get("capabilities") or {}).get("drop") or []), f"{where}: capabilities must drop ALL"
            seccomp = ((pod.get("securityContext") or {}).get("seccompProfile") or security.get("seccompProfile") or {}).get("type")
            assert seccomp == "RuntimeDefault", f"{where}: seccompProfile must be RuntimeDefault, not {seccomp}"
            assert security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem must be true"
    namespace = find(objects, "Namespace", NAMESPACE, namespace=None)
    enforce = (namespace["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
    assert enforce == "privileged", \
        f"Namespace {NAMESPACE}: pod-security.kubernetes.io/enforce is {enforce!r}: the privileged builder would not be admitted"


# --- slipway-cluster and the API server --------------------------------------------------------------

def granted(rules, group, resource, verb):
    return any((group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
               and (resource in r.get("resources", []) or "*" in r.get("resources", []))
               and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
               for r in rules)


def test_the_cluster_drives_kubernetes_with_its_service_account(objects):
    d = deployment(objects, "cluster")
    c = container(d)
    assert flag(c, "--cluster-driver", "Deployment slipway-cluster") == "kubernetes", "slipway-cluster must run --cluster-driver kubernetes"
    pod = d["spec"]["template"]["spec"]
    account = pod.get("serviceAccountName")
    assert account, "Deployment slipway-cluster names no serviceAccountName: it would act as `default`"
    assert pod.get("automountServiceAccountToken") is not False, "slipway-cluster needs its token mounted (in-cluster configuration)"
    assert find(objects, "ServiceAccount", account) is not None, f"ServiceAccount {account} is not in the manifests"
    for service in SERVICES:
        if service != "cluster":
            assert deployment(objects, service)["spec"]["template"]["spec"].get("automountServiceAccountToken") is False, \
                f"slipway-{service} does not talk to the API server: automountServiceAccountToken must be false"

    rules = []
    for _, binding in objects:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace", binding["metadata"].get("namespace")) == NAMESPACE
                   for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        assert binding["kind"] == "ClusterRoleBinding" or ref["kind"] == "ClusterRole", \
            f"{binding['kind']} {binding['metadata']['name']}: the apps' namespaces are made at run time, so a ClusterRoleBinding"
        role = find(objects, ref["kind"], ref["name"], namespace=None)
        assert role is not None, f"{binding['kind']} {binding['metadata']['name']} refers to {ref['kind']} {ref['name']}, which is not in the manifests"
        rules += role.get("rules", [])
    assert rules, f"ServiceAccount {NAMESPACE}/{account} is bound to no role"
    assert granted(rules, "apps", "deployments", "patch"), f"{account} may not patch deployments (apps): server-side apply fails"
    assert granted(rules, "", "pods/log", "get"), f"{account} may not get pods/log: the apps' logs are not shipped"
    missing = [need for need in DRIVER_NEEDS if not granted(rules, *need)]
    assert not missing, f"{account} lacks what the Kubernetes driver does: {missing}"
    wildcards = [r for r in rules if "*" in r.get("apiGroups", []) + r.get("resources", []) + r.get("verbs", [])]
    assert not wildcards, f"{account}: grant what the driver needs, not wildcards: {wildcards}"
