"""The platform's trust boundary through the real binaries (issue 15): a platform started by
`slipway up` on free ports, probed by grpcio, Python's ssl module and `cryptography` (certificates
made by another implementation), and by plain HTTP against the registry.

- Every internal service refuses a TLS handshake without a platform client certificate, and one
  that is expired, revoked, from another CA or for an unknown identity; each refusal is logged with
  its cause and the service stays up. A client that does not negotiate ALPN h2 is refused too.
- Every method of every internal service (found by reflection, so a new one cannot be left out) is
  called as every platform identity: outside its row of the access table (`slipway pki access`)
  the call ends PERMISSION_DENIED naming the identity and the method; inside it, it is not refused.
- Identity certificates are renewed through slipway-certs without a restart.
- The registry refuses anonymous pull, push and delete; the builder pushes with its credentials.
- The local CA signs only its suffixes (and says so in its certificate's name constraints).
"""
import base64
import datetime
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import BIN_DIR, ROOT

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import slipway_local as local  # noqa: E402

SERVICES = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]
INTERNAL = SERVICES[1:]
IDENTITIES = SERVICES + ["operator"]


class Platform:
    """`slipway up` over a scratch data directory, every port free."""

    def __init__(self):
        self.data = tempfile.mkdtemp(prefix="slipway-trust-")
        self.ports = {name: local.free_port() for name in SERVICES}
        self.registry = f"127.0.0.1:{local.free_port()}"
        self.env = {**os.environ, "SLIPWAY_DATA_DIR": self.data, "NO_COLOR": "1"}
        for name, port in self.ports.items():
            self.env[f"SLIPWAY_{name.upper()}_LISTEN"] = f"127.0.0.1:{port}"
        local.track_isolation(self.data)
        self.up_output = self.cli("up", "--registry", self.registry, "--local-sources", self.data, "--http-listen", f"127.0.0.1:{local.free_port()}",
                                  "--https-listen", f"127.0.0.1:{local.free_port()}").stdout
        self.access = json.loads(self.cli("pki", "access", "-o", "json").stdout)

    def cli(self, *args, check=True):
        result = subprocess.run([os.path.join(BIN_DIR, "slipway"), *args], env=self.env, capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, f"slipway {' '.join(args)} exited {result.returncode}: {result.stderr}{result.stdout}"
        return result

    def address(self, name):
        return f"127.0.0.1:{self.ports[name]}"

    def channel(self, name, identity="operator", directory=None):
        return local.platform_channel(self.data, self.address(name), name, identity, directory=directory)

    def log(self, name):
        with open(os.path.join(self.data, "logs", f"{name}.log")) as f:
            return f.read()

    def pid(self, name):
        with open(os.path.join(self.data, "run", f"{name}.pid")) as f:
            return int(f.read())

    def serving(self, name):
        with self.channel(name) as channel:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1

    def down(self):
        self.cli("down", check=False)
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="module")
def platform():
    p = Platform()
    yield p
    p.down()


def wait_for_log(platform, name, text, timeout=10):
    """The service's log gains a line containing every part of `text` (a tuple), after the event."""
    parts = text if isinstance(text, tuple) else (text,)
    local.wait_until(lambda: any(all(p in line for p in parts) for line in platform.log(name).splitlines()), timeout,
                     f"slipway-{name} logged no line with {parts}")


# MARK: Handshakes


@pytest.mark.parametrize("name", INTERNAL)
def test_a_call_without_a_client_certificate_fails_the_handshake(platform, name):
    with open(os.path.join(platform.data, "pki", "ca.crt"), "rb") as f:
        credentials = grpc.ssl_channel_credentials(f.read())
    with grpc.secure_channel(platform.address(name), credentials, options=[("grpc.ssl_target_name_override", f"slipway-{name}")]) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_for_log(platform, name, ("refused a TLS handshake", "presented no certificate"))
    # Plaintext is refused as well, and named.
    with grpc.insecure_channel(platform.address(name)) as channel:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    wait_for_log(platform, name, ("refused a TLS handshake", "did not speak TLS"))
    assert platform.serving(name)


def make_key_and_certificate(subject_uri, issuer_cert, issuer_key, not_before, not_after, client=True):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")]))
               .issuer_name(issuer_cert.subject if issuer_cert else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "foreign CA")]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject_uri)]), critical=False)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    certificate = builder.sign(issuer_key, hashes.SHA256())
    return key, certificate


def write_identity(directory, key, certificate):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tls.key"), "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(os.path.join(directory, "tls.crt"), "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    return directory


def platform_ca(platform):
    with open(os.path.join(platform.data, "pki", "ca.crt"), "rb") as f:
        certificate = x509.load_pem_x509_certificate(f.read())
    with open(os.path.join(platform.data, "pki", "ca.key"), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return certificate, key


def bad_certificates(platform):
    """(label, identity directory, the cause the service must log): certificates made with
    `cryptography`, signed by the platform CA's key unless foreign."""
    ca, ca_key = platform_ca(platform)
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    scratch = tempfile.mkdtemp(prefix="slipway-bad-certs-", dir=platform.data)
    cases = []
    key, certificate = make_key_and_certificate("spiffe://slipway/gateway", ca, ca_key, now - 2 * day, now - day)
    cases.append(("expired", write_identity(os.path.join(scratch, "expired"), key, certificate), "expired at"))
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    key, certificate = make_key_and_certificate("spiffe://slipway/gateway", None, foreign_key, now - day, now + day)
    cases.append(("foreign", write_identity(os.path.join(scratch, "foreign"), key, certificate), "not issued by the platform CA"))
    key, certificate = make_key_and_certificate("spiffe://slipway/intruder", ca, ca_key, now - day, now + day)
    cases.append(("unknown identity", write_identity(os.path.join(scratch, "unknown"), key, certificate),
                  "spiffe://slipway/intruder is not a platform identity"))
    # Revoked: a real operator certificate from `slipway pki issue`, then `slipway pki revoke`.
    revoked = os.path.join(scratch, "revoked")
    platform.cli("pki", "issue", "operator", "--out", revoked)
    platform.cli("pki", "revoke", os.path.join(revoked, "tls.crt"), "--reason", "test")
    cases.append(("revoked", revoked, "is revoked"))
    return cases


def test_bad_certificates_are_refused_with_their_cause_and_the_service_stays_up(platform):
    for label, directory, cause in bad_certificates(platform):
        for name in ("pipeline", "logs"):
            with platform.channel(name, directory=directory) as channel:
                with pytest.raises(grpc.RpcError) as failure:
                    health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE, label
            wait_for_log(platform, name, ("refused a TLS handshake", cause))
            assert platform.serving(name), f"slipway-{name} stopped serving after a {label} certificate"


def tls_connect(platform, name, alpn):
    """A TLS connection as the operator, offering `alpn` (None: no ALPN extension)."""
    context = ssl.create_default_context(cafile=os.path.join(platform.data, "pki", "ca.crt"))
    identity = os.path.join(platform.data, "pki", "identities", "operator")
    context.load_cert_chain(os.path.join(identity, "tls.crt"), os.path.join(identity, "tls.key"))
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection(("127.0.0.1", platform.ports[name]), timeout=5)
    return context.wrap_socket(raw, server_hostname=f"slipway-{name}")


@pytest.mark.parametrize("alpn", [["http/1.1"], None])
def test_a_client_hello_without_alpn_h2_is_refused(platform, alpn):
    connection = tls_connect(platform, "logs", alpn)
    try:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: slipway-logs\r\n\r\n")
        # The server closes without answering: nothing but EOF (or a reset).
        try:
            assert connection.recv(1024) == b""
        except (ConnectionResetError, ssl.SSLError):
            pass
    finally:
        connection.close()
    wait_for_log(platform, "logs", ("refused a connection", "did not negotiate HTTP/2 with ALPN"))
    assert platform.serving("logs")
    # The same client with h2 gets in.
    ok = tls_connect(platform, "logs", ["h2"])
    assert ok.selected_alpn_protocol() == "h2"
    ok.close()


# MARK: The access table, method by method


def methods_of(platform, name):
    """Every method the service serves, by reflection: (path, client streaming, server streaming)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    from google.protobuf.descriptor_pool import DescriptorPool

    with platform.channel(name) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = DescriptorPool(database)
        found = []
        for service in database.get_services():
            for method in pool.FindServiceByName(service).methods:
                found.append((f"/{service}/{method.name}", method.client_streaming, method.server_streaming))
        return found


def call(channel, path, client_streaming, server_streaming):
    """Calls `path` with an empty request; returns the status code it ended with (OK included)."""
    identity = lambda b: b  # noqa: E731  (raw bytes both ways)
    try:
        if client_streaming and server_streaming:
            for _ in channel.stream_stream(path, identity, identity)(iter([]), timeout=2):
                pass
        elif client_streaming:
            channel.stream_unary(path, identity, identity)(iter([]), timeout=2)
        elif server_streaming:
            for _ in channel.unary_stream(path, identity, identity)(b"", timeout=1):
                pass
        else:
            channel.unary_unary(path, identity, identity)(b"", timeout=2)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as error:
        return error.code(), error.details() or ""


def allowed(platform, name, path, identity):
    if identity == "operator" or path in platform.access["any_platform_identity"]:
        return True
    return identity in platform.access["services"].get(f"slipway-{name}", {}).get(path, [])


# Methods whose call with an empty request would change the platform's state for the other tests
# are still called: an empty request is invalid for every one of them (no id, no name).
@pytest.mark.parametrize("name", INTERNAL)
def test_every_method_outside_a_callers_row_is_denied(platform, name):
    methods = methods_of(platform, name)
    assert len(methods) >= 5, f"reflection listed only {methods}"
    table = platform.access["services"][f"slipway-{name}"]
    own = [m for m in methods if not m[0].startswith(("/grpc.", "/slipway.certs.v1.Certs/RenewIdentity"))]
    # Reflection and the table agree: no method is served without a row.
    assert sorted(m[0] for m in own) == sorted(table), f"slipway-{name}: served {sorted(m[0] for m in own)}, table {sorted(table)}"
    mismatches = []
    for identity in IDENTITIES:
        with platform.channel(name, identity) as channel:
            for path, client_streaming, server_streaming in methods:
                code, details = call(channel, path, client_streaming, server_streaming)
                if allowed(platform, name, path, identity):
                    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                        mismatches.append(f"{identity} refused {path}: {code} {details}")
                else:
                    expected = f"spiffe://slipway/{identity} may not call {path}"
                    if code != grpc.StatusCode.PERMISSION_DENIED or expected not in details:
                        mismatches.append(f"{identity} calling {path}: {code} {details!r}, expected PERMISSION_DENIED naming both")
    assert not mismatches, "\n".join(mismatches)
    assert platform.serving(name)


def test_grpcio_with_the_right_certificate_succeeds(platform):
    logs_pb, logs_grpc = local.protos("slipway/logs/v1/logs.proto")[0]
    with platform.channel("logs", "gateway") as channel:
        logs_grpc.LogsStub(channel).ListStreams(logs_pb.ListStreamsRequest(), timeout=5)
    cluster_pb, cluster_grpc = local.protos("slipway/cluster/v1/cluster.proto")[0]
    with platform.channel("cluster", "pipeline") as channel:
        cluster_grpc.ClusterStub(channel).ListInstances(cluster_pb.WorkloadRequest(workload=cluster_pb.Workload(environment_id="none", service_id="none", service_name="none")), timeout=5)
    # And the wrong one does not: the logs' writers may not read.
    with platform.channel("logs", "builder") as channel:
        with pytest.raises(grpc.RpcError) as failure:
            logs_grpc.LogsStub(channel).ListStreams(logs_pb.ListStreamsRequest(), timeout=5)
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "spiffe://slipway/builder may not call /slipway.logs.v1.Logs/ListStreams" in failure.value.details()
    wait_for_log(platform, "logs", ("denied a call", "caller=spiffe://slipway/builder", "/slipway.logs.v1.Logs/ListStreams"))


# MARK: Renewal


def served_serial(platform, name):
    connection = tls_connect(platform, name, ["h2"])
    try:
        return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number
    finally:
        connection.close()


def test_identity_certificates_are_renewed_through_certs_without_a_restart(platform):
    """The logs service's certificate is reissued with a 9-second life and the service restarted
    on it; two thirds in, it renews through slipway-certs (mutual TLS, RenewIdentity) and serves
    the new certificate from the next connection, with the same process."""
    pid = platform.pid("logs")
    os.kill(pid, 15)
    local.wait_until(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z", 20, "logs did not stop")
    platform.cli("pki", "issue", "logs", "--lifetime-seconds", "9")
    platform.cli("up", "--registry", platform.registry)  # starts what is not running: the logs service
    local.wait_until(lambda: platform.serving("logs"), 20, "logs did not come back")
    pid = platform.pid("logs")
    first = served_serial(platform, "logs")
    local.wait_until(lambda: served_serial(platform, "logs") != first, 20, "the logs service did not renew its certificate")
    second = served_serial(platform, "logs")
    # And again, once the first certificate has expired: the renewal does not go over a connection
    # that still presents it (slipway-certs would refuse every call there).
    local.wait_until(lambda: served_serial(platform, "logs") not in (first, second), 20, "the second renewal did not happen")
    assert platform.pid("logs") == pid, "renewal must not restart the service"
    wait_for_log(platform, "logs", "renewed the platform identity certificate")
    # Renewed, it still calls and is called.
    assert platform.serving("logs")
    renewed = os.path.join(platform.data, "logs", "identity", "tls.crt")
    with open(renewed, "rb") as f:
        assert x509.load_pem_x509_certificate(f.read()).serial_number == served_serial(platform, "logs")


# MARK: Registry


def registry_request(platform, method, path, auth=None, data=None, headers=None):
    request = urllib.request.Request(f"http://{platform.registry}{path}", method=method, data=data, headers=headers or {})
    if auth:
        request.add_header("Authorization", "Basic " + auth)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def registry_auth(platform):
    with open(os.path.join(platform.data, "registry", "auth.json")) as f:
        return json.load(f)["auths"][platform.registry]["auth"]


def test_the_registry_refuses_anonymous_pull_push_and_delete_and_the_builder_pushes(platform):
    assert oct(os.stat(os.path.join(platform.data, "registry", "auth.json")).st_mode & 0o777) == "0o600"
    # The builder pushes with its credentials: a real build of a FROM-scratch image.
    pb, pb_grpc = local.protos("slipway/builder/v1/builder.proto")[0]
    repository = os.path.join(platform.data, "repo")
    os.makedirs(repository)
    local.git(repository, "init", "--quiet", "--initial-branch", "main")
    commit = local.commit(repository, "scratch", {"Dockerfile": "FROM scratch\nCOPY hello.txt /hello.txt\n", "hello.txt": "hello\n"})
    with platform.channel("builder", "pipeline") as channel:
        request = pb.BuildRequest(build_id="trust-1", context=pb.BuildContext(environment_id="e", deployment_id="trust-1", service_id="s"),
                                  git=pb.GitSource(url=repository, commit=commit), repository="trust/scratch")
        _, result = local.build(pb_grpc.BuilderStub(channel), pb, request)
    assert result.outcome == pb.BUILD_SUCCEEDED, result
    auth = registry_auth(platform)
    manifest = "/v2/trust/scratch/manifests/" + result.image.digest
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"}
    assert registry_request(platform, "GET", manifest, auth, headers=accept) == 200
    # Anonymous: nothing.
    assert registry_request(platform, "GET", "/v2/_catalog") == 401
    assert registry_request(platform, "GET", manifest, headers=accept) == 401
    assert registry_request(platform, "POST", "/v2/trust/poison/blobs/uploads/", data=b"") == 401
    assert registry_request(platform, "DELETE", manifest) == 401
    # A wrong password is anonymous too.
    wrong = base64.b64encode(b"slipway:guess").decode()
    assert registry_request(platform, "POST", "/v2/trust/poison/blobs/uploads/", wrong, data=b"") == 401
    # The cluster pulls with its credentials file (skopeo --src-authfile): what it runs is reachable.
    layout = tempfile.mkdtemp(prefix="slipway-pull-", dir=platform.data)
    pulled = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-authfile",
                             os.path.join(platform.data, "registry", "auth.json"),
                             f"docker://{platform.registry}/trust/scratch@{result.image.digest}", f"oci:{layout}:x"],
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    anonymous = subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--src-no-creds",
                                f"docker://{platform.registry}/trust/scratch@{result.image.digest}", f"oci:{layout}:y"],
                               capture_output=True, text=True)
    assert anonymous.returncode != 0 and "unauthorized" in anonymous.stderr.lower(), anonymous.stderr


# MARK: The local CA


def test_the_local_ca_signs_only_its_suffixes(platform):
    certs_pb, certs_grpc = local.protos("slipway/certs/v1/certs.proto")[0]
    with platform.channel("certs", "pipeline") as channel:
        stub = certs_grpc.CertsStub(channel)
        for name in ("example.com", "hello.localhost.example.com", "bank.com"):
            with pytest.raises(grpc.RpcError) as failure:
                stub.Issue(certs_pb.IssueRequest(domains=[name], issuer=certs_pb.ISSUER_LOCAL_CA), timeout=30)
            assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "the local CA signs only names under" in failure.value.details() and name in failure.value.details()
        # A local name outside the suffixes, issuer left to the service: refused, saying how to allow it.
        with pytest.raises(grpc.RpcError) as failure:
            stub.Issue(certs_pb.IssueRequest(domains=["printer.lan"]), timeout=30)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--certs-local-ca-suffixes" in failure.value.details()
        issued = stub.Issue(certs_pb.IssueRequest(domains=["trust.test"], issuer=certs_pb.ISSUER_LOCAL_CA), timeout=30)
        assert issued.state == certs_pb.CERTIFICATE_ISSUED, issued
        local_ca = stub.GetLocalCA(certs_pb.LocalCARequest(), timeout=5)
    ca = x509.load_pem_x509_certificate(local_ca.certificate_pem.encode())
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert sorted(n.value for n in constraints.value.permitted_subtrees) == ["internal", "localhost", "test"]
    # No IP address at all: every IPv4 and IPv6 range is excluded.
    assert sorted(str(n.value) for n in constraints.value.excluded_subtrees) == ["0.0.0.0/0", "::/0"]
    assert platform.serving("certs")


def test_up_prints_where_the_platform_ca_lives(platform):
    assert f"platform CA            {platform.data}/pki/ca.crt" in platform.up_output


def test_a_certificate_is_renewed_only_when_due(platform):
    """RenewIdentity mints a certificate for the caller's own identity only when the caller's
    certificate is two thirds through its life: a stolen key cannot refresh itself at will."""
    certs_pb, certs_grpc = local.protos("slipway/certs/v1/certs.proto")[0]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")]))
           .sign(key, hashes.SHA256()))
    request = certs_pb.RenewIdentityRequest(csr_der=csr.public_bytes(serialization.Encoding.DER), lifetime_seconds=3600)
    with platform.channel("certs", "gateway") as channel:
        with pytest.raises(grpc.RpcError) as failure:
            certs_grpc.CertsStub(channel).RenewIdentity(request, timeout=10)
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "spiffe://slipway/gateway's certificate is not due for renewal" in failure.value.details()
    # Due (a 3-second certificate, two seconds in): renewed, for the caller's identity whatever the CSR says.
    short = os.path.join(platform.data, "short-gateway")
    platform.cli("pki", "issue", "gateway", "--out", short, "--lifetime-seconds", "3")
    local.wait_until(lambda: x509.load_pem_x509_certificate(open(os.path.join(short, "tls.crt"), "rb").read())
                     .not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) < datetime.timedelta(seconds=1), 10,
                     "the short certificate did not come due")
    with platform.channel("certs", "gateway", directory=short) as channel:
        renewed = certs_grpc.CertsStub(channel).RenewIdentity(request, timeout=10)
    certificate = x509.load_pem_x509_certificate(renewed.certificate_pem.encode())
    uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["spiffe://slipway/gateway"]
    assert certificate.public_key().public_numbers() == key.public_key().public_numbers()
    wait_for_log(platform, "certs", ("issued a platform identity certificate", "spiffe://slipway/gateway"))


def test_revoking_an_identity_cuts_its_open_connections_and_pki_init_reissues_it(platform):
    """`slipway pki revoke --identity operator`: a connection opened before keeps no power (its
    next call, within the recheck interval, is refused), new handshakes are refused, and
    `slipway pki init` issues the identity a new certificate that works."""
    copy = os.path.join(platform.data, "operator-before")
    shutil.copytree(os.path.join(platform.data, "pki", "identities", "operator"), copy)
    channel = platform.channel("logs", directory=copy)
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    platform.cli("pki", "revoke", "--identity", "operator", "--reason", "test: key stolen")

    def refused():
        try:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            return False
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
            assert "no longer holds" in error.details() and "revocation" in error.details()
            return True

    local.wait_until(refused, 15, "the open connection kept working after its identity was revoked")
    channel.close()
    with platform.channel("logs", directory=copy) as fresh:
        with pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest(), timeout=5)
    wait_for_log(platform, "logs", ("refused a TLS handshake", "revocation"))
    assert "operator" in platform.cli("pki", "init").stdout
    assert platform.serving("logs")
