"""slipway-certs with slipway-network and a real nginx: certificates from the local CA for the
default domains, from pebble (Let's Encrypt's test CA) through real HTTP-01 validation served by our
load balancer, renewal and rotation without a failed TLS handshake, failures that say why, revocation.
"""
import json
import os
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
from network_peers import Backend, Network, curl  # noqa: E402


@pytest.fixture(scope="module")
def pbs():
    (network, network_grpc), (certs, certs_grpc) = local.protos("slipway/network/v1/network.proto", "slipway/certs/v1/certs.proto")
    return network, network_grpc, certs, certs_grpc


class Certs:
    """slipway-certs (real executable) pointed at a network service. It runs over the network's data
    directory (its state in <data>/certs): the two hold identities from one platform CA, which their
    mutual-TLS calls (certs installs certificates through the network) need."""

    def __init__(self, pbs, network, *args, data=None):
        self.pb, self.pb_grpc = pbs[2], pbs[3]
        self.data = data or network.data
        self.port = local.free_port()
        self.args = ["--network-address", f"127.0.0.1:{network.port}", *args]
        self.start()

    def start(self):
        from conftest import BIN_DIR

        self.proc = local.start_service(BIN_DIR, "certs", self.data, self.port, *self.args)
        self.channel = local.platform_channel(self.data, f"127.0.0.1:{self.port}", "certs")
        self.stub = self.pb_grpc.CertsStub(self.channel)

    def stop(self):
        self.channel.close()
        local.stop(self.proc)

    def issue(self, *domains, issuer=0, force=False):
        return self.stub.Issue(self.pb.IssueRequest(domains=list(domains), issuer=issuer, force=force), timeout=120)

    def log(self):
        with open(os.path.join(self.data, "certs.log")) as f:
            return f.read()


def served_certificate(port, host, cafile):
    """The serial (int) of the certificate nginx presents for `host`, verified against `cafile`."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            return int(tls.getpeercert()["serialNumber"], 16), tls.selected_alpn_protocol()


@pytest.fixture
def platform(pbs):
    network = Network(pbs[:2])
    backend = Backend("web")
    network.route("svc-web", "web", domains=["app.example.test"])
    network.backends("svc-web", backend)
    yield network, backend
    backend.close()
    network.close()


def test_the_local_ca_gives_the_default_domain_https(pbs, platform):
    network, _ = platform
    certs = Certs(pbs, network)
    try:
        ca = certs.stub.GetLocalCA(certs.pb.LocalCARequest())
        assert ca.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
        assert ca.path in ca.trust_instructions and "update-ca-certificates" in ca.trust_instructions

        cert = certs.issue("web-dev.localhost")
        assert cert.state == certs.pb.CERTIFICATE_ISSUED, cert.reason
        assert cert.issuer == certs.pb.ISSUER_LOCAL_CA
        assert list(cert.domains) == ["web-dev.localhost"]
        lifetime = cert.not_after_unix_millis - cert.not_before_unix_millis
        assert abs(cert.renew_at_unix_millis - (cert.not_before_unix_millis + lifetime * 2 / 3)) < 1000

        # Verified against the local CA, over HTTP/2, with the route's instance answering.
        code, body, version, _ = curl("--resolve", f"web-dev.localhost:{network.https_port}:127.0.0.1", "--cacert", ca.path,
                                      f"https://web-dev.localhost:{network.https_port}/hello")
        assert (code, version) == (200, "2")
        assert body == "backend=web host=web-dev.localhost path=/hello proto=https"
        assert network.stub.GetRoute(network.key("svc-web")).url == f"https://web-dev.localhost:{network.https_port}/"
        serial, alpn = served_certificate(network.https_port, "web-dev.localhost", ca.path)
        assert serial == int(cert.serial, 16) and alpn == "h2"

        # Asked again: the same certificate, not a new one.
        assert certs.issue("web-dev.localhost").serial == cert.serial
        # Keys stay private: 0600 files, never in the log.
        state = os.path.join(certs.data, "certs")
        for name in os.listdir(state):
            if name.endswith(".key"):
                assert os.stat(os.path.join(state, name)).st_mode & 0o777 == 0o600, name
                with open(os.path.join(state, name)) as key:
                    assert key.read().strip().splitlines()[1] not in certs.log()

        # Bad requests are refused with what to fix; the service stays up.
        for domains, issuer, code, words in [
            (["web_dev.localhost"], 0, grpc.StatusCode.INVALID_ARGUMENT, "lowercase DNS name"),
            ([], 0, grpc.StatusCode.INVALID_ARGUMENT, "between 1 and 100"),
            (["web-dev.localhost"], 2, grpc.StatusCode.FAILED_PRECONDITION, "no ACME directory is configured"),
            (["shop.example.com"], 0, grpc.StatusCode.FAILED_PRECONDITION, "needs a public CA"),
        ]:
            with pytest.raises(grpc.RpcError) as error:
                certs.issue(*domains, issuer=issuer)
            assert error.value.code() == code and words in error.value.details(), error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            certs.stub.GetCertificate(certs.pb.CertificateKey(id="c-nope"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(certs.stub.ListCertificates(certs.pb.ListCertificatesRequest()).certificates) == 1
    finally:
        certs.stop()


def test_renewal_rotates_the_certificate_without_a_failed_handshake(pbs, platform):
    network, _ = platform
    # Certificates that live 6 s are renewed after 4 s; the renewal check runs every second.
    certs = Certs(pbs, network, "--certs-local-lifetime-seconds", "6", "--certs-renew-check-interval", "1")
    try:
        first = certs.issue("web-dev.localhost")
        assert first.state == certs.pb.CERTIFICATE_ISSUED, first.reason
        cafile = certs.stub.GetLocalCA(certs.pb.LocalCARequest()).path
        seen, failures, stop = set(), [], threading.Event()

        def handshakes():
            while not stop.is_set():
                try:
                    seen.add(served_certificate(network.https_port, "web-dev.localhost", cafile)[0])
                except (OSError, ssl.SSLError) as error:
                    failures.append(repr(error))

        thread = threading.Thread(target=handshakes)
        thread.start()
        try:
            local.wait_until(lambda: len(seen) >= 3, 30, f"the certificate was not renewed twice (seen serials: {seen})")
        finally:
            stop.set()
            thread.join()
        assert failures == [], failures[:3]
        assert int(first.serial, 16) in seen
        latest = certs.stub.GetCertificate(certs.pb.CertificateKey(id=first.id))
        # PENDING when the next renewal is under way at this moment.
        assert latest.state in (certs.pb.CERTIFICATE_ISSUED, certs.pb.CERTIFICATE_PENDING) and latest.serial != first.serial
        # Once renewals stop, only the newest certificate's files are left on the load balancer.
        certs.stop()
        assert len(os.listdir(os.path.join(network.data, "network", "nginx", "certificates"))) == 2
    finally:
        certs.stop()


def test_a_restart_finishes_an_interrupted_attempt(pbs, platform):
    network, _ = platform
    certs = Certs(pbs, network, "--certs-renew-check-interval", "1")
    try:
        issued = certs.issue("web-dev.localhost")
        certs.proc.kill()
        certs.proc.wait()
        certs.channel.close()
        # As if killed in the middle of an attempt: the record says PENDING.
        path = os.path.join(certs.data, "certs", "certificates.json")
        with open(path) as f:
            records = json.load(f)
        records[issued.id]["state"] = "pending"
        with open(path, "w") as f:
            json.dump(records, f)
        certs.start()
        local.wait_until(lambda: certs.stub.GetCertificate(certs.pb.CertificateKey(id=issued.id)).state == certs.pb.CERTIFICATE_ISSUED,
                         20, "the interrupted attempt was not finished after the restart")
        assert certs.stub.GetCertificate(certs.pb.CertificateKey(id=issued.id)).serial != issued.serial
    finally:
        certs.stop()


@pytest.fixture
def pebble(platform):
    """pebble (Let's Encrypt's test CA) validating HTTP-01 against our load balancer's HTTP port, with
    pebble-challtestsrv as its DNS (every name → 127.0.0.1 unless told otherwise)."""
    network, _ = platform
    work = tempfile.mkdtemp(prefix="slipway-pebble-")
    cert, key = local.self_signed_files(work, "localhost", ips=["127.0.0.1"])
    dns_port, management, listen, pebble_management = (local.free_port() for _ in range(4))
    challtestsrv = subprocess.Popen(["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
                                     "-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{management}",
                                     "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = os.path.join(work, "pebble.json")
    with open(config, "w") as f:
        json.dump({"pebble": {"listenAddress": f"127.0.0.1:{listen}", "managementListenAddress": f"127.0.0.1:{pebble_management}",
                              "certificate": cert, "privateKey": key, "httpPort": network.http_port, "tlsPort": local.free_port(),
                              "ocspResponderURL": "", "externalAccountBindingRequired": False}}, f)
    pebble = subprocess.Popen(["pebble", "-config", config, "-dnsserver", f"127.0.0.1:{dns_port}"],
                              env={**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
                              stdout=open(os.path.join(work, "pebble.log"), "w"), stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=cert)

    def management_get(path):
        return urllib.request.urlopen(f"https://127.0.0.1:{pebble_management}{path}", context=context, timeout=5).read().decode()

    def up():
        try:
            urllib.request.urlopen(f"https://127.0.0.1:{listen}/dir", context=context, timeout=1).read()
            return True
        except OSError:
            return pebble.poll() is not None

    local.wait_until(up, 30, "pebble did not start")
    assert pebble.poll() is None, open(os.path.join(work, "pebble.log")).read()

    def dns(path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{management}{path}", data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    yield {"directory": f"https://127.0.0.1:{listen}/dir", "ca_file": cert, "get": management_get, "dns": dns}
    pebble.kill()
    challtestsrv.kill()
    pebble.wait()
    challtestsrv.wait()


def test_a_custom_domain_gets_a_pebble_certificate_through_real_http01(pbs, platform, pebble):
    network, _ = platform
    certs = Certs(pbs, network, "--certs-acme-directory", pebble["directory"], "--certs-acme-ca-file", pebble["ca_file"],
                  "--certs-acme-email", "ops@example.test")
    try:
        cert = certs.issue("app.example.test", issuer=certs.pb.ISSUER_ACME)
        assert cert.state == certs.pb.CERTIFICATE_ISSUED, cert.reason
        assert cert.issuer == certs.pb.ISSUER_ACME
        # The chain is pebble's: it verifies against pebble's root, served by nginx for the custom domain.
        root = os.path.join(certs.data, "pebble-root.pem")
        with open(root, "w") as f:
            f.write(pebble["get"]("/roots/0"))
        code, body, version, _ = curl("--resolve", f"app.example.test:{network.https_port}:127.0.0.1", "--cacert", root,
                                      f"https://app.example.test:{network.https_port}/x")
        assert (code, version) == (200, "2"), body
        assert body == "backend=web host=app.example.test path=/x proto=https"
        status = {d.domain: d for d in network.stub.GetRoute(network.key("svc-web")).domains}
        assert status["app.example.test"].tls and not status["web-dev.localhost"].tls
        # No challenge is left on the load balancer.
        with open(os.path.join(network.data, "network", "nginx", "network.json")) as f:
            assert json.load(f)["challenges"] == {}

        # Revocation reaches the CA.
        revoked = certs.stub.Revoke(certs.pb.RevokeRequest(id=cert.id, reason=4))
        assert revoked.state == certs.pb.CERTIFICATE_REVOKED
        status = json.loads(pebble["get"](f"/cert-status-by-serial/{int(cert.serial, 16):x}"))
        assert status["Status"] == "Revoked", status
    finally:
        certs.stop()


def test_a_failing_challenge_is_reported_with_the_reason_and_retried_later(pbs, platform, pebble):
    network, _ = platform
    # The name resolves to an address where nothing answers: pebble cannot fetch the token.
    pebble["dns"]("/add-a", {"host": "broken.example.test.", "addresses": ["127.0.0.2"]})
    certs = Certs(pbs, network, "--certs-acme-directory", pebble["directory"], "--certs-acme-ca-file", pebble["ca_file"])
    try:
        cert = certs.issue("broken.example.test", issuer=certs.pb.ISSUER_ACME)
        assert cert.state == certs.pb.CERTIFICATE_FAILED
        assert "broken.example.test" in cert.reason and "127.0.0.2" in cert.reason, cert.reason
        assert cert.failed_attempts == 1
        assert cert.next_attempt_unix_millis > time.time() * 1000 + 30_000
        # The service is fine and the next name still works.
        assert certs.issue("app.example.test", issuer=certs.pb.ISSUER_ACME).state == certs.pb.CERTIFICATE_ISSUED
    finally:
        certs.stop()
