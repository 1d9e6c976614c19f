"""deploy/kubernetes: Kubernetes' own schemas accept every object (`kubernetes-validate --strict`,
for the Kubernetes version the Swift tests validate against), and the objects fit together: each of
the seven services has a Deployment and a Service on its --listen port, every --X-address reaches a
Service that exists on that port, every flag is one the binary takes and every service is told where
the peers it calls are (both read from Sources), the stateful ones keep their data on a claim, only
the gateway is exposed, and slipway-cluster's service account may do what the Kubernetes driver does
and nothing more. The platform trust boundary: each Deployment mounts its own identity Secret and no
other's (only slipway-certs the platform CA), probes go to the plaintext health port, no container is
privileged, and the NetworkPolicies deny by default and admit each service's port from exactly its
callers in the access table. No API server is needed (none runs here).
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
# --health-listen: grpc.health.v1 alone, in plaintext, for the kubelet's probes (no client certificate).
HEALTH_PORTS = {name: port + 100 for name, port in PORTS.items()}
# Who calls whom (the access table, Sources/SlipwayServiceKit/Trust/AccessTable.swift): the services
# whose pods a service's NetworkPolicy admits on its main port. Every service calls certs (identity
# renewal). The gateway has no internal caller: its port is the public API (PUBLIC).
CALLERS = {
    "gateway": set(),
    "pipeline": {"gateway"},
    "builder": {"pipeline"},
    "network": {"gateway", "pipeline", "cluster", "certs"},
    "cluster": {"pipeline"},
    "certs": {"gateway", "pipeline", "builder", "network", "cluster", "logs"},
    "logs": {"gateway", "pipeline", "builder", "cluster"},
}
# Ports admitted from outside the namespace, each by one policy an overlay can replace:
# (service, container port name) -> NetworkPolicy.
PUBLIC = {("gateway", "grpc"): "slipway-gateway-public",
          ("network", "http"): "slipway-network-public", ("network", "https"): "slipway-network-public"}
# The identity Secrets `slipway pki kubernetes-secrets` makes (never in the repository).
IDENTITY_SECRET = "slipway-{}-identity"
PLATFORM_CA_SECRET = "slipway-platform-ca"
# What slipway-builder holds (builder.yaml): CAP_SYS_ADMIN inside its own user namespace, and the
# capabilities buildah gives RUN steps (containers.conf default_capabilities).
BUILDER_CAPABILITIES = {"SYS_ADMIN", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE",
                        "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
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
    *[("", resource, verb) for resource in ("resourcequotas", "limitranges") for verb in ("create", "patch")],
    ("networking.k8s.io", "networkpolicies", "create"), ("networking.k8s.io", "networkpolicies", "patch"),
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
        assert grpc is not None, f"{where}: no gRPC {probe} (grpc.health.v1; its port: test_every_probe_uses_the_health_port)"
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
            # ArgumentParser's spelling: a word starts at a capital after a lower-case letter or digit, or
            # at the last capital of a run followed by a lower-case one (platformCAKey: --platform-ca-key).
            name = "--" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", match.group(3)).lower()
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


def pod_containers(d):
    """Every container of the Deployment's pods, init and ephemeral ones included."""
    spec = d["spec"]["template"]["spec"]
    return [c for key in ("initContainers", "containers", "ephemeralContainers") for c in spec.get(key) or []]


def test_no_container_is_privileged(objects):
    for service in SERVICES:
        d = deployment(objects, service)
        pod = d["spec"]["template"]["spec"]
        pod_security = pod.get("securityContext") or {}
        where = f"Deployment slipway-{service}"
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key), f"{where}: {key}"
        host_paths = [v["name"] for v in pod.get("volumes", []) if "hostPath" in v]
        assert not host_paths, f"{where}: hostPath volumes {host_paths}"
        seccomp = (pod_security.get("seccompProfile") or {}).get("type")
        for c in pod_containers(d):
            security, name = c.get("securityContext") or {}, f"{where}, container {c['name']}"
            assert not security.get("privileged"), f"{name} is privileged"
            assert (security.get("seccompProfile") or {}).get("type", seccomp) == "RuntimeDefault", \
                f"{name}: seccompProfile must be RuntimeDefault"
            assert security.get("procMount", "Default") == "Default", f"{name}: procMount {security.get('procMount')}"
            capabilities = security.get("capabilities") or {}
            assert "ALL" in (capabilities.get("drop") or []), f"{name}: capabilities must drop ALL"
            added = set(capabilities.get("add") or [])
            if service == "builder" and c is container(d):
                # buildah: CAP_SYS_ADMIN and the RUN steps' capabilities, inside the pod's own user
                # namespace only, AppArmor unconfined (the default profiles deny mount(2)).
                assert added <= BUILDER_CAPABILITIES, f"{name} adds {sorted(added - BUILDER_CAPABILITIES)}, beyond what buildah needs"
                continue
            assert not added, f"{name} adds capabilities {sorted(added)}"
            assert security.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false"
            assert security.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true"
            assert (security.get("appArmorProfile") or {}).get("type") != "Unconfined", f"{name}: AppArmor unconfined"
            if service != "builder":
                assert pod_security.get("runAsNonRoot") is True or security.get("runAsNonRoot") is True, f"{name}: runAsNonRoot must be true"

    # Root with CAP_SYS_ADMIN is safe only as root of a user namespace of the pod's own: hostUsers
    # false, and an init container that refuses to go on where the runtime did not honour it.
    builder = deployment(objects, "builder")["spec"]["template"]["spec"]
    assert builder.get("hostUsers") is False, "slipway-builder adds CAP_SYS_ADMIN: it must run in a user namespace (hostUsers: false)"
    checks = [c for c in builder.get("initContainers") or [] if "/proc/self/uid_map" in " ".join(c.get("command", []) + c.get("args", []))]
    assert checks, "slipway-builder: no init container checks /proc/self/uid_map (fail closed when hostUsers: false is ignored)"
    namespace = find(objects, "Namespace", NAMESPACE, namespace=None)
    enforce = (namespace["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
    assert enforce == "privileged", (f"Namespace {NAMESPACE}: pod-security.kubernetes.io/enforce is {enforce!r}: the builder's "
                                     "CAP_SYS_ADMIN and AppArmor Unconfined are beyond `baseline`, it would not be admitted")


# --- identities and probes ---------------------------------------------------------------------------

def secret_references(d):
    """{secret name: [volume names]} of every Secret the Deployment's pods reference (volumes, env)."""
    spec, found = d["spec"]["template"]["spec"], {}
    for v in spec.get("volumes", []):
        names = [v["secret"]["secretName"]] if "secret" in v else []
        names += [s["secret"]["name"] for s in (v.get("projected") or {}).get("sources", []) if "secret" in s]
        for name in names:
            found.setdefault(name, []).append(v["name"])
    for c in pod_containers(d):
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                found.setdefault(ref["name"], [])
        for e in c.get("envFrom", []):
            if "secretRef" in e:
                found.setdefault(e["secretRef"]["name"], [])
    return found


def mount_of(c, volume, where):
    mounts = [m for m in c.get("volumeMounts", []) if m["name"] == volume]
    assert len(mounts) == 1, f"{where}: volume {volume} is mounted {len(mounts)} times"
    assert mounts[0].get("readOnly") is True, f"{where}: volume {volume} must be mounted readOnly"
    assert not mounts[0].get("subPath"), f"{where}: a subPath mount of a Secret never sees its updates"
    return mounts[0]["mountPath"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_deployment_mounts_its_own_identity_and_no_other(objects, service):
    d = deployment(objects, service)
    c, where = container(d), f"Deployment slipway-{service}"
    secrets = secret_references(d)
    own = IDENTITY_SECRET.format(service)
    assert own in secrets and len(secrets[own]) == 1, f"{where} does not mount Secret {own} (one volume): its identity"
    directory = mount_of(c, secrets[own][0], where)
    assert flag(c, "--identity-dir", where) == directory, f"{where}: --identity-dir must be where {own} is mounted, {directory}"
    platform_ca = [v for f, v in flags(c) if f == "--platform-ca"]
    assert all(v.startswith(directory + "/") for v in platform_ca), f"{where}: --platform-ca {platform_ca} is not in the identity directory"
    others = sorted(s for s in secrets if re.fullmatch(IDENTITY_SECRET.format(r"[a-z]+"), s) and s != own)
    assert not others, f"{where} references {others}: another service's identity"
    for other in pod_containers(d):
        if other is not c:
            assert not [m for m in other.get("volumeMounts", []) if m["name"] in secrets[own]], \
                f"{where}: container {other['name']} mounts the identity too"
    key = [v for f, v in flags(c) if f == "--platform-ca-key"]
    if service == "certs":
        assert PLATFORM_CA_SECRET in secrets and len(secrets[PLATFORM_CA_SECRET]) == 1, \
            f"{where} does not mount Secret {PLATFORM_CA_SECRET}: it renews the other identities"
        ca_directory = mount_of(c, secrets[PLATFORM_CA_SECRET][0], where)
        assert key == [ca_directory + "/tls.key"], f"{where}: --platform-ca-key must be {ca_directory}/tls.key, not {key}"
    else:
        assert PLATFORM_CA_SECRET not in secrets, f"{where} references {PLATFORM_CA_SECRET}: only slipway-certs holds the CA key"
        assert not key, f"{where} passes --platform-ca-key: only slipway-certs holds the CA key"


def test_no_key_is_kept_in_the_manifests(objects):
    kept = [f"{file}: Secret {o['metadata']['name']}" for file, o in objects if o["kind"] == "Secret"]
    assert not kept, f"Secrets in deploy/kubernetes (slipway pki kubernetes-secrets makes them): {kept}"


@pytest.mark.parametrize("service", SERVICES)
def test_every_probe_uses_the_health_port(objects, service):
    d = deployment(objects, service)
    c, health, where = container(d), HEALTH_PORTS[service], f"Deployment slipway-{service}"
    assert flag(c, "--health-listen", where) == f"0.0.0.0:{health}", f"{where}: --health-listen must be 0.0.0.0:{health}"
    assert container_port(c, "health") == health, f"{where}: no containerPort {health} named `health`"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = (c.get(probe) or {}).get("grpc")
        assert grpc is not None, f"{where}: no gRPC {probe}"
        assert grpc.get("port") == health, \
            f"{where}: {probe} on port {grpc.get('port')}: the kubelet has no client certificate, so the health port {health}"
    for other in pod_containers(d):
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            action = other.get(probe) or {}
            port = (action.get("grpc") or action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
            assert port in (None, health, "health"), f"{where}, container {other['name']}: {probe} on port {port}, not the health port"


# --- network policies ------------------------------------------------------------------------------

def selects(selector, labels):
    """Whether a label selector (matchLabels, matchExpressions) selects these labels; {} selects all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, values = e["key"], e.get("values") or []
        if {"In": key not in labels or labels[key] not in values, "NotIn": key in labels and labels[key] in values,
                "Exists": key not in labels, "DoesNotExist": key in labels}[e["operator"]]:
            return False
    return True


def namespace_labels(objects):
    namespace = find(objects, "Namespace", NAMESPACE, namespace=None)
    return {**(namespace["metadata"].get("labels") or {}), "kubernetes.io/metadata.name": NAMESPACE}


def pod_labels(objects, service):
    return deployment(objects, service)["spec"]["template"]["metadata"].get("labels") or {}


def ingress_peers(objects, service, port_name):
    """[(policy, peer)] admitted to the named port of slipway-<service>'s pods; peer None is every source."""
    labels, c = pod_labels(objects, service), container(deployment(objects, service))
    number = container_port(c, port_name)
    assert number is not None, f"slipway-{service} has no port named {port_name}"
    peers = []
    for _, policy in objects:
        if policy["kind"] != "NetworkPolicy" or policy["metadata"].get("namespace") != NAMESPACE:
            continue
        spec = policy["spec"]
        if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]) or not selects(spec.get("podSelector") or {}, labels):
            continue
        for rule in spec.get("ingress") or []:
            ports = rule.get("ports") or [{}]
            if not any(p.get("protocol", "TCP") == "TCP" and (
                    "port" not in p or p["port"] == port_name or p["port"] == number
                    or (isinstance(p["port"], int) and p["port"] <= number <= p.get("endPort", p["port"]))) for p in ports):
                continue
            for peer in rule.get("from") or [None]:
                peers.append((policy["metadata"]["name"], peer))
    return peers


def admitted_services(objects, peers):
    """The platform services whose pods these peers admit (a peer None, every source, admits all)."""
    ns = namespace_labels(objects)
    admitted = set()
    for _, peer in peers:
        for caller in SERVICES:
            if peer is None or ("ipBlock" not in peer and selects(peer.get("namespaceSelector") or {}, ns)
                                and ("namespaceSelector" in peer or "podSelector" in peer)
                                and selects(peer.get("podSelector") or {}, pod_labels(objects, caller))):
                admitted.add(caller)
    return admitted


def test_a_default_deny_policy_exists(objects):
    deny = [o["metadata"]["name"] for _, o in objects
            if o["kind"] == "NetworkPolicy" and o["metadata"].get("namespace") == NAMESPACE
            and o["spec"].get("podSelector") == {} and "Ingress" in (o["spec"].get("policyTypes") or [])
            and not o["spec"].get("ingress")]
    assert deny, (f"no NetworkPolicy in {NAMESPACE} selects every pod (podSelector: {{}}) with policyTypes [Ingress] and no "
                  "ingress rule: a pod no other policy selects would take connections from anywhere")


@pytest.mark.parametrize("service", SERVICES)
def test_each_network_policy_admits_exactly_the_callers(objects, service):
    where = f"slipway-{service}"
    # The main port: the callers of the access table, by their pods' labels, and nobody else.
    peers = ingress_peers(objects, service, "grpc")
    public = PUBLIC.get((service, "grpc"))
    internal = [(policy, peer) for policy, peer in peers if policy != public]
    broad = [(policy, peer) for policy, peer in internal if peer is None or "ipBlock" in peer or "namespaceSelector" in peer]
    assert not broad, f"{where}: port grpc is admitted beyond the platform's own pods: {broad}"
    admitted = admitted_services(objects, internal)
    assert admitted == CALLERS[service], (f"{where}: NetworkPolicies admit port grpc from {sorted(admitted)}, the access table "
                                          f"says {sorted(CALLERS[service])} (missing {sorted(CALLERS[service] - admitted)}, "
                                          f"extra {sorted(admitted - CALLERS[service])})")
    # The health port: every source (the kubelet's probes).
    assert any(peer is None for _, peer in ingress_peers(objects, service, "health")), \
        f"{where}: the health port is not open to every source (the kubelet's probes)"
    # Ports open from outside: only through their own policy, which an overlay can replace.
    for (exposed, port_name), policy_name in PUBLIC.items():
        if exposed != service:
            continue
        from_public = [peer for policy, peer in ingress_peers(objects, service, port_name) if policy == policy_name]
        assert from_public, f"{where}: NetworkPolicy {policy_name} does not admit port {port_name}"
    for port in container(deployment(objects, service)).get("ports", []):
        if port.get("name") not in ("grpc", "health") and (service, port.get("name")) not in PUBLIC:
            pytest.fail(f"{where}: port {port.get('name')} has no decided policy (add it to PUBLIC or to a caller rule)")
        if (service, port.get("name")) in PUBLIC and port.get("name") != "grpc":
            others = {policy for policy, _ in ingress_peers(objects, service, port["name"])} - {PUBLIC[(service, port["name"])]}
            assert not others, f"{where}: port {port['name']} is also admitted by {sorted(others)}"


def test_every_network_policy_selects_a_platform_pod(objects):
    for file, o in objects:
        if o["kind"] != "NetworkPolicy":
            continue
        selector = o["spec"].get("podSelector")
        assert selector is not None, f"{file}: NetworkPolicy {o['metadata']['name']} has no podSelector"
        assert any(selects(selector, pod_labels(objects, s)) for s in SERVICES), \
            f"{file}: NetworkPolicy {o['metadata']['name']} selects no platform pod ({selector})"


def access_table_callers():
    """Callers per service as Sources/SlipwayServiceKit/Trust/AccessTable.swift has them, or None."""
    path = os.path.join(ROOT, "Sources", "SlipwayServiceKit", "Trust", "AccessTable.swift")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read()
    rows = text[text.index("rows: [ServiceName: [Row]]"):]
    callers, current = {s: set() for s in SERVICES}, None
    for line in rows.splitlines():
        block = re.match(r"\s*\.(\w+): \[\s*$", line)
        if block:
            current = block.group(1)
            continue
        row = re.search(r"\brow\(\s*[\w.]+?\.self\s*((?:,\s*\.\w+\s*)*)\)", line)
        if row and current:
            callers[current] |= set(re.findall(r"\.(\w+)", row.group(1)))
    # Identity renewal is open to every platform identity.
    if "RenewIdentity.path" in text[:text.index("rows: [ServiceName: [Row]]")]:
        callers["certs"] |= set(SERVICES) - {"certs"}
    return callers


def test_the_callers_are_the_access_table(objects):
    table = access_table_callers()
    if table is None:
        pytest.skip("no Sources/SlipwayServiceKit/Trust/AccessTable.swift")
    assert table == CALLERS, (f"CALLERS (the NetworkPolicies) and AccessTable.swift differ: "
                              f"{ {s: (sorted(CALLERS[s]), sorted(table[s])) for s in SERVICES if CALLERS[s] != table[s]} }")


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
    extra = sorted({(g, res, v) for r in rules for g in r.get("apiGroups", []) for res in r.get("resources", [])
                    for v in r.get("verbs", [])} - set(DRIVER_NEEDS))
    assert not extra, f"{account} may do more than the Kubernetes driver does: {extra}"
