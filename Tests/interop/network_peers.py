"""What the network and certs suites share: small HTTP instances, slipway-network on free ports with
its own nginx, and curl through it."""
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts"))
import slipway_local as local  # noqa: E402

ENV = "env-1"


class Backend:
    """An HTTP/1.1 instance on a free port: answers who it is, the Host it saw and the path;
    /slow?ms=N answers after N ms."""

    def __init__(self, name):
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                if "ms" in query:
                    time.sleep(int(query["ms"][0]) / 1000)
                body = f"backend={backend.name} host={self.headers['Host']} path={self.path} proto={self.headers.get('X-Forwarded-Proto')}\n".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", local.free_port()), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Network:
    """slipway-network (real executable) with its own nginx on free ports. Its gRPC port takes only
    mutual TLS: the tests call it as the operator (identities under its data directory, which
    services that call it share, so that they hold identities from the same platform CA)."""

    def __init__(self, pbs, *args, data=None, verify_domains=False):
        self.pb, self.pb_grpc = pbs
        self.data = data or tempfile.mkdtemp(prefix="slipway-network-")
        self.port, self.http_port, self.https_port = local.free_port(), local.free_port(), local.free_port()
        self.args = ["--network-http-listen", f"127.0.0.1:{self.http_port}", "--network-https-listen", f"127.0.0.1:{self.https_port}", *args]
        # Custom domains are routed only once DNS verified them; tests about routing itself use
        # names no DNS knows, so they route them at once unless they test verification.
        if not verify_domains:
            self.args.append("--network-route-unverified-domains")
        self.start()

    def start(self):
        from conftest import BIN_DIR

        self.proc = local.start_service(BIN_DIR, "network", self.data, self.port, *self.args)
        self.channel = local.platform_channel(self.data, f"127.0.0.1:{self.port}", "network")
        self.stub = self.pb_grpc.NetworkStub(self.channel)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.channel.close()

    def close(self):
        self.channel.close()
        local.stop(self.proc)
        local.stop_nginx(self.data)
        shutil.rmtree(self.data, ignore_errors=True)

    def key(self, service):
        return self.pb.RouteKey(environment_id=ENV, service_id=service)

    def route(self, service, name, prefix="", domains=(), protocol=0, tokens=None):
        pb = self.pb
        return self.stub.SetRoute(pb.SetRouteRequest(route=pb.Route(
            key=self.key(service), service_name=name, environment_name="dev", path_prefix=prefix, custom_domains=list(domains), protocol=protocol,
            ownership_tokens=tokens or {})))

    def backends(self, service, *backends, drain=0):
        return self.stub.SetBackends(self.pb.SetBackendsRequest(key=self.key(service), addresses=[b.address if isinstance(b, Backend) else b for b in backends],
                                                                drain_timeout_seconds=drain))

    def config(self):
        with open(os.path.join(self.data, "network", "nginx", "nginx.conf")) as f:
            return f.read()


def curl(*args):
    """(status, body, http_version) of one curl call."""
    out = subprocess.run(["curl", "-s", "-m", "10", "-o", "-", "-w", "\n%{http_code} %{http_version} %{redirect_url}", *args],
                         capture_output=True, text=True)
    body, _, tail = out.stdout.rpartition("\n")
    status, version, redirect = (tail.split(" ") + ["", ""])[:3]
    return int(status or 0), body.rstrip("\n"), version, redirect


def get(net, host, path="/", https=False, cacert=None):
    if https:
        return curl("--resolve", f"{host}:{net.https_port}:127.0.0.1", "--cacert", cacert, f"https://{host}:{net.https_port}{path}")
    return curl("--resolve", f"{host}:{net.http_port}:127.0.0.1", f"http://{host}:{net.http_port}{path}")
