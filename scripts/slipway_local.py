"""Helpers shared by the demo, the builder benchmark and the builder's grpcio tests: the platform's
protos compiled by grpcio-tools, a docker-registry, the service executables, example repositories,
and a Build call that collects its events.
"""
import atexit
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Slipway Demo", "GIT_AUTHOR_EMAIL": "demo@slipway.invalid",
    "GIT_COMMITTER_NAME": "Slipway Demo", "GIT_COMMITTER_EMAIL": "demo@slipway.invalid",
}


def protos(*names):
    """Compiles protos/<name> with grpcio-tools; returns the (pb2, pb2_grpc) module pairs."""
    from grpc_tools import protoc
    import importlib

    out = tempfile.mkdtemp(prefix="slipway-pb-")
    # Every file, so imports (the public API imports the pipeline's and the logs' messages) resolve.
    every = sorted(os.path.relpath(os.path.join(d, f), f"{ROOT}/protos")
                   for d, _, files in os.walk(f"{ROOT}/protos") for f in files if f.endswith(".proto"))
    for name in every:
        assert protoc.main(["protoc", f"-I{ROOT}/protos", f"--python_out={out}", f"--grpc_python_out={out}", name]) == 0, name
    sys.path.insert(0, out)
    modules = []
    for name in names:
        base = name[:-len(".proto")].replace("/", ".")
        modules.append((importlib.import_module(base + "_pb2"), importlib.import_module(base + "_pb2_grpc")))
    return modules


def free_port():
    """A free loopback port below Linux's ephemeral range (32768–60999).

    Tests restart services on the port they had; a port the kernel hands out for port 0 comes from
    the ephemeral range, where any outgoing connection (a service calling the registry, grpcio) may
    take it while the service is down. Ports below that range are only taken by explicit binds.
    Nothing binds the port until its server starts, so two calls could find the same free port (a
    test once gave nginx one port for both HTTP and HTTPS): a port is never handed out twice by one
    process.
    """
    for port in random.sample(range(20000, 32000), 200):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port between 20000 and 32000")


_handed_out = set()


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} within {timeout} s")


def start_registry(directory, port):
    """A docker-registry on 127.0.0.1:port storing in directory, seeded with the base images."""
    os.makedirs(directory, exist_ok=True)
    config = os.path.join(directory, "config.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nlog: {{ level: error }}\nstorage: {{ filesystem: {{ rootdirectory: {directory}/data }}, delete: {{ enabled: true }} }}\n"
                f"http: {{ addr: 127.0.0.1:{port} }}\n")
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).status == 200
        except OSError:
            return False

    wait_until(up, 20, f"docker-registry did not answer on 127.0.0.1:{port}")
    subprocess.run([os.path.join(ROOT, "scripts", "seed-base-images.sh"), f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
    return proc


def prepare_pki(bin_dir, data):
    """The platform CA and every identity under <data>/pki (`slipway pki init`, as `slipway up` does):
    services refuse to start without their identity."""
    subprocess.run([os.path.join(bin_dir, "slipway"), "pki", "init", "--data-dir", data], check=True, stdout=subprocess.DEVNULL)


def issue_identity(bin_dir, data, name, out, *args):
    """`slipway pki issue NAME --out OUT`: a certificate for any identity name (known or not)."""
    subprocess.run([os.path.join(bin_dir, "slipway"), "pki", "issue", name, "--data-dir", data, "--out", out, *args],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def platform_credentials(data, identity="operator", directory=None):
    """grpcio channel credentials presenting a platform identity (default: the operator, who may call
    every method) and trusting only the platform CA."""
    import grpc

    directory = directory or os.path.join(data, "pki", "identities", identity)
    with open(os.path.join(data, "pki", "ca.crt"), "rb") as ca, open(os.path.join(directory, "tls.key"), "rb") as key, \
            open(os.path.join(directory, "tls.crt"), "rb") as cert:
        return grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())


def platform_channel(data, address, service, identity="operator", options=(), directory=None):
    """A grpcio channel to an internal service (mutual TLS): `service` is its name (pipeline, logs, ...),
    whose certificate the server must present (DNS name slipway-<service>)."""
    import grpc

    return grpc.secure_channel(address, platform_credentials(data, identity, directory),
                               options=[("grpc.ssl_target_name_override", f"slipway-{service}"), *options])


def isolation_tag(data, service):
    """The tag in every name a service's isolation makes on the host (bridges, veths, namespaces,
    the nftables table): a hash of its network state directory, as EnvironmentNetworks computes it."""
    path = os.path.realpath(os.path.join(data, service, "network"))
    return hashlib.sha256(path.encode()).hexdigest()[:4]


def remove_isolation(tags):
    """Removes what isolation made on the host for these tags (a test's services are gone, and its
    data directory may be too): namespaces, veths, bridges, the nftables tables."""
    for tag in tags:
        for name in os.listdir("/var/run/netns") if os.path.isdir("/var/run/netns") else []:
            if name.startswith(f"slipway-{tag}-"):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith((f"sv{tag}", f"sw{tag}")):
                subprocess.run(["ip", "link", "delete", name], capture_output=True)
        subprocess.run(["nft", "delete", "table", "inet", f"slipway_{tag}"], capture_output=True)


def track_isolation(data):
    """At exit, the cluster's and builder's isolation of this data directory go."""
    atexit.register(remove_isolation, [isolation_tag(data, "cluster"), isolation_tag(data, "builder")])


def start_service(bin_dir, name, data, port, *args, env=None):
    """slipway-<name> on 127.0.0.1:port (its identity prepared first); returns once it accepts connections."""
    prepare_pki(bin_dir, data)
    if name in ("cluster", "builder"):
        track_isolation(data)
    if name == "builder" and "--builder-local-sources" not in args:
        # Tests and benchmarks keep their git repositories in their scratch data directory.
        args = (*args, "--builder-local-sources", os.path.realpath(data))
    proc = subprocess.Popen([os.path.join(bin_dir, f"slipway-{name}"), "--listen", f"127.0.0.1:{port}", "--data-dir", data, *args],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, f"{name}.log"), "ab"), env=env)

    def listening():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            return proc.poll() is not None

    wait_until(listening, 30, f"slipway-{name} did not listen on {port}")
    if proc.poll() is not None:
        raise RuntimeError(f"slipway-{name} exited with {proc.returncode}; see {data}/{name}.log")
    return proc


def stop(*procs):
    for proc in procs:
        if proc and proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **GIT_IDENTITY}).stdout.strip()


def example_repository(path):
    """A git repository holding examples/hello, committed on branch main; returns the commit."""
    shutil.copytree(os.path.join(ROOT, "examples", "hello"), path)
    git(path, "init", "--quiet", "--initial-branch", "main")
    return commit(path, "hello")


def commit(repo, message, files=None):
    for name, content in (files or {}).items():
        full = os.path.join(repo, name)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(content)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def build(stub, pb, request, on_event=None):
    """Runs Builder.Build to its end; returns (events, result)."""
    events = []
    for event in stub.Build(request):
        events.append(event)
        if on_event:
            on_event(event)
        if event.WhichOneof("event") == "result":
            return events, event.result
    raise RuntimeError("the build stream ended without a result")


def build_request(pb, build_id, repository, registry, commit="", image="demo/hello", environment="demo", service="hello"):
    return pb.BuildRequest(
        build_id=build_id,
        context=pb.BuildContext(environment_id=environment, deployment_id=build_id, service_id=service),
        git=pb.GitSource(url=repository, commit=commit),
        repository=image,
        build_args={"BASE": f"{registry}/slipway/busybox:latest"},
    )


def nginx_master(data):
    """The pid of the nginx slipway-network runs over `data`, or None."""
    try:
        with open(os.path.join(data, "network", "nginx", "nginx.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def stop_nginx(data, timeout=20):
    """Stops that nginx gracefully (it outlives slipway-network on purpose)."""
    import signal

    pid = nginx_master(data)
    if pid is None:
        return
    os.kill(pid, signal.SIGQUIT)
    wait_until(lambda: nginx_master(data) is None, timeout, f"nginx {pid} did not stop")


def self_signed(directory, *names, days=30, ips=()):
    """A key and a self-signed certificate for `names` (and IP addresses `ips`) made by openssl;
    returns (cert_pem, key_pem), also written to files in `directory`."""
    cert, key = os.path.join(directory, f"{names[0]}-{time.monotonic_ns()}.crt"), os.path.join(directory, f"{names[0]}-{time.monotonic_ns()}.key")
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{ip}" for ip in ips])
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", str(days), "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    with open(cert) as c, open(key) as k:
        return c.read(), k.read()


def self_signed_files(directory, *names, ips=()):
    """Like self_signed, but returns the (cert, key) file paths."""
    cert_pem, key_pem = self_signed(directory, *names, ips=ips)
    cert, key = os.path.join(directory, f"{names[0]}.pem"), os.path.join(directory, f"{names[0]}-key.pem")
    with open(cert, "w") as c, open(key, "w") as k:
        c.write(cert_pem)
        k.write(key_pem)
    return cert, key


def push_example_image(data, registry_port, image="bench/hello:1"):
    """Builds examples/hello with buildah (storage under `data`) and pushes it to the registry on
    127.0.0.1:registry_port as `image`; returns its full reference."""
    reference = f"127.0.0.1:{registry_port}/{image}"
    storage = ["--storage-driver", "vfs", "--root", os.path.join(data, "containers"), "--runroot", os.path.join(data, "run")]
    subprocess.run(["buildah", *storage, "bud", "--isolation", "chroot", "--tls-verify=false",
                    "--build-arg", f"BASE=127.0.0.1:{registry_port}/slipway/busybox:latest", "-t", reference,
                    os.path.join(ROOT, "examples", "hello")], check=True, capture_output=True)
    subprocess.run(["buildah", *storage, "push", "--tls-verify=false", reference], check=True, capture_output=True)
    return reference


class H2Load(threading.Thread):
    """h2load through the load balancer in rounds of 100 requests (HTTPS, one connection per
    request), until stopped; sums what every round reports."""

    def __init__(self, https_port, host, requests=100):
        super().__init__()
        self.port, self.host, self.requests = https_port, host, requests
        self.stopped = threading.Event()
        self.rounds, self.succeeded, self.failed, self.errored, self.non2xx, self.outputs = 0, 0, 0, 0, 0, []

    def run(self):
        while not self.stopped.is_set():
            out = subprocess.run(["h2load", "--h1", "-n", str(self.requests), "-c", "2", "-H", "Connection: close", "--connect-to",
                                  f"127.0.0.1:{self.port}", f"https://{self.host}:{self.port}/"], capture_output=True, text=True, timeout=60).stdout
            requests = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
            codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
            assert requests and codes, out
            self.rounds += 1
            self.succeeded += int(requests.group(1))
            self.failed += int(requests.group(2))
            self.errored += int(requests.group(3))
            non2xx = int(codes.group(2)) + int(codes.group(3)) + int(codes.group(4))
            self.non2xx += non2xx
            if int(requests.group(2)) or non2xx:
                self.outputs.append(out)

    def stop(self):
        self.stopped.set()
        self.join()


SERVICES = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]


class LocalPlatform:
    """What `slipway up` needs to run on free ports over `data`: the CLI's environment (each
    service's SLIPWAY_<NAME>_LISTEN, the gateway for the CLI), the registry and nginx addresses;
    `cli()` runs `slipway`, `up()` starts it, `pid()` reads a process's pid file."""

    def __init__(self, bin_dir, data):
        self.bin_dir, self.data = bin_dir, data
        self.ports = {name: free_port() for name in SERVICES}
        self.env = {**os.environ, "SLIPWAY_DATA_DIR": data, "NO_COLOR": "1"}
        for name, port in self.ports.items():
            self.env[f"SLIPWAY_{name.upper()}_LISTEN"] = f"127.0.0.1:{port}"
        self.env["SLIPWAY_GATEWAY"] = self.env["SLIPWAY_GATEWAY_LISTEN"]
        self.registry, self.https_port, self.http_port = f"127.0.0.1:{free_port()}", free_port(), free_port()

    def cli(self, *arguments, check=True):
        result = subprocess.run([os.path.join(self.bin_dir, "slipway"), *arguments], env=self.env, capture_output=True, text=True, timeout=600)
        if check and result.returncode != 0:
            raise RuntimeError(f"slipway {' '.join(arguments)}: {result.stderr}{result.stdout}")
        return result.stdout

    def up(self):
        """`slipway up`, then the offline base images into its registry."""
        self.cli("up", "--registry", self.registry, "--local-sources", self.data, "--http-listen", f"127.0.0.1:{self.http_port}",
                 "--https-listen", f"127.0.0.1:{self.https_port}")
        subprocess.run([os.path.join(ROOT, "scripts", "seed-base-images.sh"), self.registry], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "SLIPWAY_SEED_STORAGE": os.path.join(self.data, "seed"),
                            "REGISTRY_AUTH_FILE": os.path.join(self.data, "registry", "auth.json")})

    def pid(self, name):
        try:
            with open(os.path.join(self.data, "run", f"{name}.pid")) as f:
                return int(f.read())
        except (OSError, ValueError):
            return None
