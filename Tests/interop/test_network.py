"""slipway-network against a real nginx: routes to instances, TLS, redirects, ACME challenges, draining
on a backend switch, zero failed requests under load, refused changes, restarts, and custom domain
checks through a real DNS server (pebble-challtestsrv).

The instances are small Python HTTP servers (and a grpcio server for the gRPC route): what the
network service sees of a service is only its ready addresses.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent import futures

import grpc
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
import slipway_local as local  # noqa: E402
from network_peers import ENV, Backend, Network, curl, get  # noqa: E402


@pytest.fixture(scope="module")
def pbs():
    (network, network_grpc), = local.protos("slipway/network/v1/network.proto")
    return network, network_grpc


@pytest.fixture
def network(pbs):
    net = Network(pbs)
    yield net
    net.close()


def test_a_route_sends_its_domains_to_the_ready_instances(network):
    a, b, api = Backend("a"), Backend("b"), Backend("api")
    try:
        status = network.route("svc-web", "web", domains=["shop.example.test"])
        assert status.default_domain == "web-dev.localhost"
        assert status.url == f"http://web-dev.localhost:{network.http_port}/"
        assert [d.domain for d in status.domains] == ["web-dev.localhost", "shop.example.test"]
        # No instance yet: a clear 503, not a hang or a 502.
        code, body, _, _ = get(network, "web-dev.localhost")
        assert (code, body) == (503, "no ready instance of web yet")

        network.backends("svc-web", a, b)
        seen = set()
        for _ in range(8):
            code, body, _, _ = get(network, "web-dev.localhost", "/x?y=1")
            assert code == 200, body
            assert "host=web-dev.localhost path=/x?y=1 proto=http" in body
            seen.add(body.split()[0])
        assert seen == {"backend=a", "backend=b"}, "requests are spread over both instances"
        assert get(network, "shop.example.test")[0] == 200

        # A second service on the same custom domain under a path prefix.
        network.route("svc-api", "api", prefix="/api/", domains=["shop.example.test"])
        network.backends("svc-api", api)
        assert get(network, "shop.example.test", "/api/orders")[1].startswith("backend=api ")
        assert get(network, "shop.example.test", "/api")[1].startswith("backend=api ")
        assert get(network, "shop.example.test", "/apix")[1].startswith("backend=")
        assert not get(network, "shop.example.test", "/apix")[1].startswith("backend=api")
        assert get(network, "api-dev.localhost", "/api/v1")[1].startswith("backend=api ")
        assert get(network, "unknown.localhost")[0:2] == (404, "no route for this host")

        # Backends may come first (a first deploy: the cluster before the pipeline's route step).
        network.backends("svc-late", b)
        assert get(network, "late-dev.localhost")[0] == 404
        network.route("svc-late", "late")
        assert get(network, "late-dev.localhost")[1].startswith("backend=b ")
        network.stub.DeleteRoute(network.key("svc-late"))

        listed = network.stub.ListRoutes(network.pb.ListRoutesRequest(environment_id=ENV)).routes
        assert sorted(r.default_domain for r in listed) == ["api-dev.localhost", "web-dev.localhost"]
        network.stub.DeleteRoute(network.key("svc-api"))
        assert get(network, "api-dev.localhost", "/api/v1")[0] == 404
        assert get(network, "shop.example.test", "/api/orders")[1].startswith("backend=a") or \
            get(network, "shop.example.test", "/api/orders")[1].startswith("backend=b")
    finally:
        for backend in (a, b, api):
            backend.close()


def test_bad_changes_are_refused_and_the_running_configuration_is_untouched(network):
    pb = network.pb
    a = Backend("a")
    try:
        network.route("svc-1", "one")
        network.backends("svc-1", a)
        before = network.config()
        bad_routes = [
            (dict(service_name="One"), "service_name"),
            (dict(service_name="one;"), "service_name"),
            (dict(service_name="one", environment_name="dev}"), "environment_name"),
            (dict(service_name="one", path_prefix="/a b"), "path_prefix"),
            (dict(service_name="one", path_prefix="/a;return 200"), "path_prefix"),
            (dict(service_name="one", custom_domains=["exa mple.com"]), "custom domain"),
            (dict(service_name="one", custom_domains=["-bad.example.com"]), "custom domain"),
            (dict(service_name="one", custom_domains=[f"d{i}.example.com" for i in range(21)]), "at most 20"),
        ]
        for fields, mentioned in bad_routes:
            fields.setdefault("environment_name", "dev")
            with pytest.raises(grpc.RpcError) as error:
                network.stub.SetRoute(pb.SetRouteRequest(route=pb.Route(key=network.key("svc-1"), **fields)))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
            assert mentioned in error.value.details(), error.value.details()
        for address in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "host;:80", "[zz]:80"]:
            with pytest.raises(grpc.RpcError) as error:
                network.backends("svc-1", address)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "HOST:PORT" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            network.route("svc-2", "two", domains=["one-dev.localhost"])
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already routed to service one" in error.value.details()
        for token, auth in [("a/b", "x"), ("tok", "x y"), ("", "x")]:
            with pytest.raises(grpc.RpcError) as error:
                network.stub.PresentChallenge(pb.ChallengeRequest(token=token, key_authorization=auth))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # nginx itself refuses a key that does not belong to the certificate: nothing changes.
        cert, _ = local.self_signed(network.data, "one-dev.localhost")
        _, other_key = local.self_signed(network.data, "one-dev.localhost")
        with pytest.raises(grpc.RpcError) as error:
            network.stub.InstallCertificate(pb.InstallCertificateRequest(certificate_chain_pem=cert, private_key_pem=other_key))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "nginx refused the change" in error.value.details() and "key values mismatch" in error.value.details()
        for garbage in [("not a pem", other_key), (cert, "not a key")]:
            with pytest.raises(grpc.RpcError) as error:
                network.stub.InstallCertificate(pb.InstallCertificateRequest(certificate_chain_pem=garbage[0], private_key_pem=garbage[1]))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        assert network.config() == before
        assert os.listdir(os.path.join(network.data, "network", "nginx", "certificates")) == []
        assert get(network, "one-dev.localhost")[0:2] == (200, "backend=a host=one-dev.localhost path=/ proto=http")
        assert network.stub.GetRoute(network.key("svc-1")).backends == [a.address]
    finally:
        a.close()


def test_https_with_http2_redirects_challenges_and_grpc(network):
    pb = network.pb
    a = Backend("a")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    grpc_port = local.free_port()
    grpc_server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    grpc_server.start()
    try:
        network.route("svc-web", "web")
        network.backends("svc-web", a)
        network.route("svc-rpc", "rpc", protocol=pb.UPSTREAM_PROTOCOL_GRPC)
        network.backends("svc-rpc", f"127.0.0.1:{grpc_port}")
        cert, key = local.self_signed(network.data, "web-dev.localhost", "rpc-dev.localhost")
        cafile = os.path.join(network.data, "ca.pem")
        with open(cafile, "w") as f:
            f.write(cert)
        installed = network.stub.InstallCertificate(pb.InstallCertificateRequest(certificate_chain_pem=cert, private_key_pem=key))
        assert sorted(installed.domains) == ["rpc-dev.localhost", "web-dev.localhost"]
        # Key and certificate files are the service's alone.
        certificates = os.path.join(network.data, "network", "nginx", "certificates")
        assert {oct(os.stat(os.path.join(certificates, f)).st_mode & 0o777) for f in os.listdir(certificates)} == {"0o600"}
        assert key not in open(os.path.join(network.data, "network.log")).read()

        status = network.stub.GetRoute(network.key("svc-web"))
        assert status.url == f"https://web-dev.localhost:{network.https_port}/"
        assert status.domains[0].tls
        code, _, _, redirect = get(network, "web-dev.localhost", "/a?b=c")
        assert (code, redirect) == (308, f"https://web-dev.localhost:{network.https_port}/a?b=c")
        code, body, version, _ = get(network, "web-dev.localhost", "/a", https=True, cacert=cafile)
        assert (code, version) == (200, "2"), body
        assert body == "backend=a host=web-dev.localhost path=/a proto=https"

        # gRPC through grpc_pass, over TLS with ALPN h2.
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.encode())
        with grpc.secure_channel(f"127.0.0.1:{network.https_port}", credentials,
                                 options=[("grpc.ssl_target_name_override", "rpc-dev.localhost")]) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

        # ACME HTTP-01: served over plain HTTP on every host, even routed and redirected ones.
        network.stub.PresentChallenge(pb.ChallengeRequest(token="tok_en-1", key_authorization="tok_en-1.thumb"))
        for host in ["web-dev.localhost", "not-routed.example.test"]:
            assert get(network, host, "/.well-known/acme-challenge/tok_en-1")[0:2] == (200, "tok_en-1.thumb")
        assert get(network, "web-dev.localhost", "/.well-known/acme-challenge/other")[0] == 404
        network.stub.CleanUpChallenge(pb.ChallengeRequest(token="tok_en-1"))
        assert get(network, "web-dev.localhost", "/.well-known/acme-challenge/tok_en-1")[0] == 404

        # A host without a certificate has no HTTPS: the handshake is refused.
        network.route("svc-plain", "plain")
        code, _, _, _ = curl("--resolve", f"plain-dev.localhost:{network.https_port}:127.0.0.1", "-k", f"https://plain-dev.localhost:{network.https_port}/")
        assert code == 0
    finally:
        grpc_server.stop(0)
        a.close()


def test_a_backend_switch_returns_once_requests_to_the_old_instances_finished(network):
    old, new = Backend("old"), Backend("new")
    try:
        network.route("svc-1", "one")
        network.backends("svc-1", old)
        result = {}

        def slow():
            result["response"] = get(network, "one-dev.localhost", "/slow?ms=1500")
            result["finished"] = time.monotonic()

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)  # the slow request is in flight at the old instance (it answers after 1.5 s)
        network.backends("svc-1", new)
        switched = time.monotonic()
        assert get(network, "one-dev.localhost")[1].startswith("backend=new ")
        thread.join()
        assert result["response"][0:2] == (200, "backend=old host=one-dev.localhost path=/slow?ms=1500 proto=http")
        # SetBackends returned only after the old instance's request was answered.
        assert switched >= result["finished"] - 0.05, (switched, result["finished"])
    finally:
        old.close()
        new.close()


def test_zero_failed_requests_while_the_backends_switch_under_load(network):
    a, b = Backend("a"), Backend("b")
    try:
        network.route("svc-1", "one")
        network.backends("svc-1", a)
        # One connection per request: a client never reuses a connection across the switch, so any
        # request sent to a stopped instance or dropped by a reload would count as failed.
        load = subprocess.Popen(["h2load", "--h1", "-n", "3000", "-c", "8", "-H", "Connection: close",
                                 "--connect-to", f"127.0.0.1:{network.http_port}", f"http://one-dev.localhost:{network.http_port}/"],
                                stdout=subprocess.PIPE, text=True)
        switches = 0
        while load.poll() is None:
            network.backends("svc-1", b if switches % 2 == 0 else a)
            switches += 1
        out = load.stdout.read()
        requests = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
        codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
        assert requests and codes, out
        assert requests.group(4) == "3000" and requests.group(5) == "0" and requests.group(6) == "0", out
        assert codes.group(1) == "3000", out
        assert switches >= 5, f"only {switches} switches during the load"
        # Every switch drained: the old instance had nothing in flight when it was replaced.
    finally:
        a.close()
        b.close()


def test_nginx_serves_on_while_the_service_is_down_and_is_adopted_on_restart(network):
    a = Backend("a")
    try:
        network.route("svc-1", "one")
        network.backends("svc-1", a)
        master = local.nginx_master(network.data)
        assert master
        network.kill9()
        assert get(network, "one-dev.localhost")[0] == 200, "traffic does not depend on the control plane"
        network.start()
        assert local.nginx_master(network.data) == master, "the running nginx was adopted, not replaced"
        assert network.stub.GetLoadBalancer(network.pb.LoadBalancerRequest()).master_pid == master
        assert network.stub.GetRoute(network.key("svc-1")).backends == [a.address]
        assert get(network, "one-dev.localhost")[0] == 200

        # A state written just before a crash, never loaded: the restart renders and loads it.
        state_path = os.path.join(network.data, "network", "nginx", "network.json")
        network.kill9()
        with open(state_path) as f:
            state = json.load(f)
        state["routes"][f"{ENV}/svc-1"]["customDomains"] = ["late.example.test"]
        with open(state_path, "w") as f:
            json.dump(state, f)
        network.start()
        assert get(network, "late.example.test")[0] == 200

        # If nginx is gone too, a restart starts it again.
        local.stop_nginx(network.data)
        network.kill9()
        network.start()
        assert local.nginx_master(network.data) not in (None, master)
        assert get(network, "one-dev.localhost")[0] == 200
    finally:
        a.close()


@pytest.fixture
def dns():
    """pebble-challtestsrv as the DNS server (answers only what its management API was told)."""
    dns_port, management = local.free_port(), local.free_port()
    proc = subprocess.Popen(["pebble-challtestsrv", "-http01", "", "-https01", "", "-tlsalpn01", "",
                             "-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{management}",
                             "-defaultIPv4", "", "-defaultIPv6", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def call(path, body):
        request = urllib.request.Request(f"http://127.0.0.1:{management}{path}", data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    def up():
        try:
            call("/clear-a", {"host": "probe.test."})
            return True
        except OSError:
            return proc.poll() is not None

    local.wait_until(up, 20, "pebble-challtestsrv did not start")
    assert proc.poll() is None, "pebble-challtestsrv exited"
    yield dns_port, call
    proc.kill()
    proc.wait()


def test_custom_domains_are_verified_through_dns(pbs, dns):
    dns_port, call = dns
    net = Network(pbs, "--network-dns-resolver", f"127.0.0.1:{dns_port}", "--network-public-addresses", "127.0.0.1,203.0.113.7", verify_domains=True)
    backend = Backend("web")
    try:
        net.backends("svc-web", backend)
        call("/add-a", {"host": "a.example.test.", "addresses": ["203.0.113.7"]})
        call("/add-a", {"host": "elsewhere.example.test.", "addresses": ["198.51.100.1"]})
        call("/set-cname", {"host": "www.example.test.", "target": "web-dev.localhost."})
        status = net.route("svc-web", "web", domains=["a.example.test", "elsewhere.example.test", "www.example.test", "none.example.test"])
        states = {d.domain: (d.state, d.reason) for d in status.domains}
        pb = net.pb
        assert states["web-dev.localhost"][0] == pb.DOMAIN_DEFAULT
        assert states["a.example.test"][0] == pb.DOMAIN_VERIFIED and "203.0.113.7" in states["a.example.test"][1]
        assert states["www.example.test"][0] == pb.DOMAIN_VERIFIED and "CNAME to web-dev.localhost" in states["www.example.test"][1]
        assert states["elsewhere.example.test"][0] == pb.DOMAIN_PENDING
        assert "resolves to 198.51.100.1" in states["elsewhere.example.test"][1] and "CNAME to web-dev.localhost" in states["elsewhere.example.test"][1]
        assert states["none.example.test"][0] == pb.DOMAIN_PENDING and "no A, AAAA or CNAME record" in states["none.example.test"][1]

        # Only verified domains are routed: the pending one is nobody's yet.
        assert get(net, "a.example.test")[0] == 200
        assert get(net, "elsewhere.example.test")[0] == 404 and "elsewhere.example.test" not in net.config()

        # The owner fixes the record; the next check verifies it, and from then it is routed.
        call("/clear-a", {"host": "elsewhere.example.test."})
        call("/add-a", {"host": "elsewhere.example.test.", "addresses": ["127.0.0.1"]})
        status = net.stub.CheckDomains(net.key("svc-web"))
        assert {d.domain: d.state for d in status.domains}["elsewhere.example.test"] == pb.DOMAIN_VERIFIED
        assert get(net, "elsewhere.example.test")[0] == 200

        # A resolver that fails is an error with the reason, not a verdict.
        call("/set-servfail", {"host": "none.example.test."})
        status = net.stub.CheckDomains(net.key("svc-web"))
        none = {d.domain: d for d in status.domains}["none.example.test"]
        assert none.state == pb.DOMAIN_ERROR and "response code 2" in none.reason
    finally:
        net.close()
        backend.close()


def test_a_custom_domain_is_routed_only_once_its_ownership_record_holds_the_claimants_value(pbs, dns):
    """Pointing here is not enough when the route carries an ownership token (the pipeline's, one per
    organization and domain): the domain stays PENDING, saying which TXT record to add, until
    _slipway-challenge.<domain> holds the value; claimed again under another token, it is checked again."""
    dns_port, call = dns
    net = Network(pbs, "--network-dns-resolver", f"127.0.0.1:{dns_port}", "--network-public-addresses", "127.0.0.1", verify_domains=True)
    backend = Backend("web")
    pb = net.pb
    try:
        net.backends("svc-web", backend)
        call("/add-a", {"host": "shop.example.test.", "addresses": ["127.0.0.1"]})
        status = net.route("svc-web", "web", domains=["shop.example.test"], tokens={"shop.example.test": "slipway-verify=aaaa"})
        shop = {d.domain: d for d in status.domains}["shop.example.test"]
        assert shop.state == pb.DOMAIN_PENDING, shop
        assert "_slipway-challenge.shop.example.test" in shop.reason and "slipway-verify=aaaa" in shop.reason, shop.reason
        assert (shop.ownership_record, shop.ownership_value) == ("_slipway-challenge.shop.example.test", "slipway-verify=aaaa")
        assert get(net, "shop.example.test")[0] == 404 and "shop.example.test" not in net.config()
        # Someone else's value does not do.
        call("/set-txt", {"host": "_slipway-challenge.shop.example.test.", "value": "slipway-verify=bbbb"})
        status = net.stub.CheckDomains(net.key("svc-web"))
        assert {d.domain: d.state for d in status.domains}["shop.example.test"] == pb.DOMAIN_PENDING
        # The owner's record: verified and routed.
        call("/set-txt", {"host": "_slipway-challenge.shop.example.test.", "value": "slipway-verify=aaaa"})
        status = net.stub.CheckDomains(net.key("svc-web"))
        shop = {d.domain: d for d in status.domains}["shop.example.test"]
        assert shop.state == pb.DOMAIN_VERIFIED and "proves ownership" in shop.reason, shop
        assert get(net, "shop.example.test")[0] == 200
        # Claimed under another value (another organization's): unrouted at once, pending until its own record.
        status = net.route("svc-web", "web", domains=["shop.example.test"], tokens={"shop.example.test": "slipway-verify=cccc"})
        assert {d.domain: d.state for d in status.domains}["shop.example.test"] == pb.DOMAIN_PENDING
        assert get(net, "shop.example.test")[0] == 404
        # Another service claiming it with its token (the pipeline moved the claim) takes it from the
        # route that still lists it; without a token, a shared name under one prefix stays a conflict.
        taken = net.route("svc-new", "new", domains=["shop.example.test"], tokens={"shop.example.test": "slipway-verify=dddd"})
        assert [d.domain for d in taken.domains] == ["new-dev.localhost", "shop.example.test"]
        assert list(net.stub.GetRoute(net.key("svc-web")).route.custom_domains) == []
        with pytest.raises(grpc.RpcError) as error:
            net.route("svc-third", "third", domains=["shop.example.test"])
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already routed" in error.value.details()
        # An upgrade: a domain verified before ownership records (a route without tokens) stays
        # routed when its route first carries a token, for a grace period, saying what to add.
        call("/add-a", {"host": "legacy.example.test.", "addresses": ["127.0.0.1"]})
        net.backends("svc-old", backend)
        status = net.route("svc-old", "old", domains=["legacy.example.test"])
        assert {d.domain: d.state for d in status.domains}["legacy.example.test"] == pb.DOMAIN_VERIFIED
        status = net.route("svc-old", "old", domains=["legacy.example.test"], tokens={"legacy.example.test": "slipway-verify=eeee"})
        legacy = {d.domain: d for d in status.domains}["legacy.example.test"]
        assert legacy.state == pb.DOMAIN_VERIFIED and "routed until" in legacy.reason and "slipway-verify=eeee" in legacy.reason, legacy
        assert get(net, "legacy.example.test")[0] == 200
        call("/set-txt", {"host": "_slipway-challenge.legacy.example.test.", "value": "slipway-verify=eeee"})
        legacy = {d.domain: d for d in net.stub.CheckDomains(net.key("svc-old")).domains}["legacy.example.test"]
        assert legacy.state == pb.DOMAIN_VERIFIED and "proves ownership" in legacy.reason, legacy
        # A token for a domain the route does not have is refused.
        with pytest.raises(grpc.RpcError) as error:
            net.route("svc-web", "web", domains=["shop.example.test"], tokens={"other.example.test": "x"})
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ownership_tokens" in error.value.details()
    finally:
        net.close()
        backend.close()


def test_a_resolver_that_does_not_answer_is_reported(pbs):
    silent = local.free_port()  # nothing listens there
    net = Network(pbs, "--network-dns-resolver", f"127.0.0.1:{silent}")
    try:
        status = net.route("svc-web", "web", domains=["shop.example.test"])
        domain = status.domains[1]
        assert domain.state == net.pb.DOMAIN_ERROR
        assert "DNS check failed" in domain.reason
    finally:
        net.close()
