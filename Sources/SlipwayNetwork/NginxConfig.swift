import Crypto
import Foundation

/// Renders the whole nginx configuration from ``NetworkState``: one file, so a change is tested and
/// swapped in one piece. Every value in it has passed ``RouteValidation``.
public struct NginxConfig: Sendable {
    public struct Settings: Sendable {
        /// Where nginx keeps its pid, logs, temp files and the certificates (absolute).
        public var directory: String
        /// HOST:PORT of the HTTP listener (challenges, redirects, routes without a certificate).
        public var httpListen: String
        /// HOST:PORT of the HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN).
        public var httpsListen: String
        public var baseDomain: String
        /// How long old workers may finish requests in flight after a reload.
        public var drainTimeoutSeconds: Int = 30
        public var workerProcesses = 2
        public var workerConnections = 4096
        /// Client request bodies larger than this get 413.
        public var maxBodyMiB = 100
        public var accessLog = true
        /// Custom domains are routed only once their DNS check verified them (they point at this
        /// load balancer), unless this is set. Default domains are always routed.
        public var routeUnverifiedDomains = false

        public init(directory: String, httpListen: String, httpsListen: String, baseDomain: String) {
            self.directory = directory
            self.httpListen = httpListen
            self.httpsListen = httpsListen
            self.baseDomain = baseDomain
        }

        var httpsPort: Int { Int(httpsListen.split(separator: ":").last ?? "443") ?? 443 }
    }

    public var settings: Settings

    public init(settings: Settings) {
        self.settings = settings
    }

    public var certificateDirectory: String { settings.directory + "/certificates" }
    public func chainPath(_ id: String) -> String { certificateDirectory + "/\(id).crt" }
    public func keyPath(_ id: String) -> String { certificateDirectory + "/\(id).key" }

    public func render(_ state: NetworkState) -> String {
        let s = settings
        var out = """
        # Written by slipway-network from its state (network.json). Do not edit: it is replaced whole.
        daemon on;
        pid \(s.directory)/nginx.pid;
        error_log \(s.directory)/logs/error.log warn;
        worker_processes \(s.workerProcesses);
        worker_shutdown_timeout \(s.drainTimeoutSeconds)s;
        events { worker_connections \(s.workerConnections); }
        http {
            default_type application/octet-stream;
            server_tokens off;
            \(s.accessLog ? "access_log \(s.directory)/logs/access.log;" : "access_log off;")
            client_body_temp_path \(s.directory)/tmp/body;
            proxy_temp_path \(s.directory)/tmp/proxy;
            fastcgi_temp_path \(s.directory)/tmp/fastcgi;
            uwsgi_temp_path \(s.directory)/tmp/uwsgi;
            scgi_temp_path \(s.directory)/tmp/scgi;
            client_max_body_size \(s.maxBodyMiB)m;
            ssl_protocols TLSv1.2 TLSv1.3;
            ssl_session_cache shared:SSL:10m;
            proxy_next_upstream error timeout;
            map $http_upgrade $connection_upgrade { default upgrade; '' ''; }

        """
        let byDomain = state.routesByDomain(baseDomain: s.baseDomain, unverified: s.routeUnverifiedDomains)
        var upstreams = Set<String>()
        for route in state.routes.values.sorted(by: { $0.key < $1.key }) where !state.backends(of: route).isEmpty {
            let name = upstreamName(route)
            guard upstreams.insert(name).inserted else { continue }
            out += "    upstream \(name) {\n"
            for backend in state.backends(of: route) { out += "        server \(backend) max_fails=1 fail_timeout=2s;\n" }
            out += "        keepalive 16;\n    }\n"
        }

        // Hosts nobody routes: challenges are still answered (an order may come before its route),
        // everything else is 404 over HTTP and a refused handshake over HTTPS.
        out += "    server {\n        listen \(s.httpListen) default_server;\n"
        out += challengeLocations(state)
        out += "        location / { default_type text/plain; return 404 \"no route for this host\\n\"; }\n    }\n"
        out += "    server {\n        listen \(s.httpsListen) ssl http2 default_server;\n        ssl_reject_handshake on;\n    }\n"

        for (domain, routes) in byDomain {
            let certificate = state.certificate(for: domain)
            out += "    server {\n        listen \(s.httpListen);\n        server_name \(domain);\n"
            out += challengeLocations(state)
            if certificate != nil {
                let port = s.httpsPort == 443 ? "" : ":\(s.httpsPort)"
                out += "        location / { return 308 https://$host\(port)$request_uri; }\n"
            } else {
                for route in routes { out += locations(route, state) }
            }
            out += "    }\n"
            if let certificate {
                out += "    server {\n        listen \(s.httpsListen) ssl http2;\n        server_name \(domain);\n"
                out += "        ssl_certificate \(chainPath(certificate.id));\n        ssl_certificate_key \(keyPath(certificate.id));\n"
                for route in routes { out += locations(route, state) }
                out += "    }\n"
            }
        }
        out += "}\n"
        return out
    }

    func upstreamName(_ route: NetworkState.Route) -> String {
        let digest = SHA256.hash(data: Data(route.key.utf8))
        return "u_" + digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    private func challengeLocations(_ state: NetworkState) -> String {
        var out = "        location ^~ /.well-known/acme-challenge/ { default_type text/plain; return 404 \"unknown challenge\\n\"; }\n"
        for (token, keyAuthorization) in state.challenges.sorted(by: { $0.key < $1.key }) {
            out += "        location = /.well-known/acme-challenge/\(token) { default_type text/plain; return 200 \"\(keyAuthorization)\"; }\n"
        }
        return out
    }

    private func locations(_ route: NetworkState.Route, _ state: NetworkState) -> String {
        let body: String
        if state.backends(of: route).isEmpty {
            body = "default_type text/plain; return 503 \"no ready instance of \(route.serviceName) yet\\n\";"
        } else {
            switch route.upstream {
            case .http:
                body = """
                proxy_pass http://\(upstreamName(route)); proxy_http_version 1.1; \
                proxy_set_header Host $host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
                proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; \
                proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection $connection_upgrade;
                """
            case .grpc, .http2:
                body = "grpc_pass grpc://\(upstreamName(route)); grpc_set_header Host $host; grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
            }
        }
        if route.pathPrefix == "/" {
            return "        location / { \(body) }\n"
        }
        return "        location = \(route.pathPrefix) { \(body) }\n        location \(route.pathPrefix)/ { \(body) }\n"
    }
}
