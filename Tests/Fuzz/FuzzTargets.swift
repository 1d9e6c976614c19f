import Foundation
import NIOCore
@testable import SlipwayCluster
@testable import SlipwayGateway
@testable import SlipwayNetwork
import SlipwayProtos
@testable import SlipwayRPC

/// The fuzz targets: each takes arbitrary bytes where the platform takes input it does not control.
/// A target returns normally for any input; a crash, a trap or a failed check is a finding.
enum FuzzTarget: String, CaseIterable {
    /// gRPC's length-prefixed messages, split across reads as the input's first byte says.
    case grpcFraming = "grpc-framing"
    /// nghttp2's server session fed a client's bytes (after the connection preface), with the
    /// platform's callbacks.
    case http2Server = "http2-server"
    /// protobuf-c decoding through the generated Swift types, and re-encoding what decoded.
    case protobuf
    /// The four git hosts' webhook payload parsers.
    case webhooks
    /// A route as the network service receives it: validated, then rendered into nginx's
    /// configuration, whose structure must survive any value validation let through.
    case nginxConfig = "nginx-config"
    /// Kubernetes objects as an API server answers them: rollout and pod status.
    case kubernetesStatus = "kubernetes-status"
    /// A DNS answer as the custom-domain check receives it.
    case dnsAnswer = "dns-answer"

    func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .grpcFraming: Self.grpcFraming(data)
        case .http2Server: Self.http2Server(data)
        case .protobuf: Self.protobuf(data)
        case .webhooks: Self.webhooks(data)
        case .nginxConfig: Self.nginxConfig(data)
        case .kubernetesStatus: Self.kubernetesStatus(data)
        case .dnsAnswer: Self.dnsAnswer(data)
        }
    }

    // MARK: Targets

    static func grpcFraming(_ data: UnsafeRawBufferPointer) {
        guard let chunk = data.first.map({ Int($0) + 1 }) else { return }
        var reader = LengthPrefixedMessageReader(maxMessageSize: 64 * 1024, allocator: ByteBufferAllocator())
        var offset = 1
        var delivered = 0
        while offset < data.count {
            let end = min(data.count, offset + chunk)
            reader.append(UnsafeRawBufferPointer(rebasing: data[offset..<end]))
            offset = end
            do {
                while let message = try reader.next() {
                    delivered += message.readableBytes + 5
                }
            } catch {
                return  // a refused stream ends the call: nothing more is read
            }
        }
        precondition(delivered + reader.pendingBytes == data.count - 1, "bytes lost by the message reader")
    }

    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 0, 4, 0, 0, 0, 0, 0]

    static func http2Server(_ data: UnsafeRawBufferPointer) {
        let delegate = SessionRecorder()
        let session = HTTP2Session(role: .server, limits: RPCLimits())
        session.delegate = delegate
        var output = ByteBufferAllocator().buffer(capacity: 16 * 1024)
        _ = preface.withUnsafeBytes { session.receive($0) }
        var offset = 0
        let chunk = max(1, Int(data.first ?? 0) * 8)
        while offset < data.count {
            let end = min(data.count, offset + chunk)
            if session.receive(UnsafeRawBufferPointer(rebasing: data[offset..<end])) != nil { break }
            // Answer what opened, as the server would, and drain what nghttp2 wants to send.
            for id in delegate.takeOpened() { try? session.submitResponse(streamID: id, headers: [(":status", "200")], hasBody: false) }
            output.clear()
            guard session.send(into: &output, limit: 1 << 20) else { break }
            offset = end
        }
    }

    /// Request and record types the services decode from peers.
    static let messages: [@Sendable (UnsafeRawBufferPointer) -> [UInt8]?] = [
        { try? Slipway_Pipeline_V1_ServiceConfig(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Pipeline_V1_DeployRequest(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Api_V1_RollbackRequest(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Builder_V1_BuildRequest(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Cluster_V1_DeployRequest(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Network_V1_SetRouteRequest(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Logs_V1_AppendRequest(serializedBuffer: $0).serializedBytes() },
        { try? Slipway_Logs_V1_LogLine(serializedBuffer: $0).serializedBytes() },
    ]

    static func protobuf(_ data: UnsafeRawBufferPointer) {
        guard let selector = data.first else { return }
        let decode = messages[Int(selector) % messages.count]
        guard let once = decode(UnsafeRawBufferPointer(rebasing: data.dropFirst())) else { return }
        // What decoded re-encodes, and decoding that gives the same bytes again.
        guard let twice = once.withUnsafeBytes({ decode($0) }) else { preconditionFailure("a message's own encoding does not decode") }
        precondition(once == twice, "encoding is not stable across a decode")
    }

    static func webhooks(_ data: UnsafeRawBufferPointer) {
        guard let selector = data.first else { return }
        let body = Array(data.dropFirst())
        let headers: [String: String] = switch selector % 4 {
        case 0: ["x-github-event": "push", "x-github-delivery": "d"]
        case 1: ["x-gitlab-event": "Push Hook", "x-gitlab-event-uuid": "d"]
        case 2: ["x-gitea-event": "push", "x-gitea-delivery": "d"]
        default: ["x-event-key": "repo:push", "x-request-uuid": "d"]
        }
        let request = WebhookRequest(headers: headers, body: body)
        guard let delivery = try? WebhookParser.identify(request), let push = try? WebhookParser.push(delivery, body: body) else { return }
        precondition(push.commit.isEmpty || push.commit.allSatisfy(\.isHexDigit), "a pushed commit that is not hex: \(push.commit)")
    }

    /// Input: a 2-byte length, a SetRouteRequest of that length, then a SetBackendsRequest.
    static func nginxConfig(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 2 else { return }
        let split = min(data.count, 2 + (Int(data[0]) << 8 | Int(data[1])))
        guard let message = try? Slipway_Network_V1_SetRouteRequest(serializedBuffer: UnsafeRawBufferPointer(rebasing: data[2..<split])),
              let backends = try? Slipway_Network_V1_SetBackendsRequest(serializedBuffer: UnsafeRawBufferPointer(rebasing: data[split...])).addresses,
              let route = message.route, let key = route.key else { return }
        var state = NetworkState()
        var value = NetworkState.Route(environmentID: key.environmentId, serviceID: key.serviceId, serviceName: route.serviceName, environmentName: route.environmentName)
        value.customDomains = route.customDomains.map { $0.lowercased() }
        value.defaultLabel = route.defaultLabel.isEmpty ? nil : route.defaultLabel
        do {
            try NetworkService.validate(key)
            try RouteValidation.label(value.serviceName, field: "service_name")
            try RouteValidation.label(value.defaultLabel ?? value.environmentName, field: "label")
            value.pathPrefix = try RouteValidation.pathPrefix(route.pathPrefix)
            for domain in value.customDomains { try RouteValidation.domain(domain, field: "custom domain") }
            try RouteValidation.domain(value.defaultDomain(base: "localhost"), field: "default domain")
            for backend in backends { try RouteValidation.backend(backend) }
        } catch {
            return
        }
        state.routes[value.key] = value
        state.backends[value.key] = backends.isEmpty ? nil : backends
        let config = NginxConfig(settings: .init(directory: "/var/lib/slipway/nginx", httpListen: "127.0.0.1:80", httpsListen: "127.0.0.1:443", baseDomain: "localhost"))
            .render(state)
        checkStructure(config)
    }

    /// The directives the renderer writes: a value that ended a statement early (`;`, `{`, `}`, a
    /// quote) would make its next word a statement of its own, and most words are none of these.
    static let directives: Set<String> = [
        "daemon", "pid", "error_log", "worker_processes", "worker_shutdown_timeout", "events", "worker_connections", "http",
        "default_type", "server_tokens", "access_log", "client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path",
        "uwsgi_temp_path", "scgi_temp_path", "client_max_body_size", "ssl_protocols", "ssl_session_cache", "proxy_next_upstream",
        "map", "upstream", "server", "keepalive", "listen", "ssl_reject_handshake", "server_name", "location", "return",
        "ssl_certificate", "ssl_certificate_key", "proxy_pass", "proxy_http_version", "proxy_set_header", "grpc_pass", "grpc_set_header",
    ]

    /// nginx's own tokenizer, reduced: words, quoted strings, `;`, `{`, `}`, `#` comments. Every
    /// statement starts with a known directive (inside `map`, any key), every block closes, and each
    /// `location`, `server_name`, `server` (in an upstream) and `listen` has the arguments it should.
    static func checkStructure(_ config: String) {
        var tokens: [(text: String, quoted: Bool)] = []
        var chars = Array(config.unicodeScalars)[...]
        while let c = chars.first {
            if c == " " || c == "\n" || c == "\t" || c == "\r" { chars.removeFirst(); continue }
            if c == "#" { while let d = chars.first, d != "\n" { chars.removeFirst() }; continue }
            if c == ";" || c == "{" || c == "}" { tokens.append((String(c), false)); chars.removeFirst(); continue }
            if c == "\"" || c == "'" {
                chars.removeFirst()
                var text = ""
                while let d = chars.first, d != c {
                    if d == "\\" { chars.removeFirst() }
                    if let e = chars.first { text.unicodeScalars.append(e); chars.removeFirst() }
                }
                precondition(!chars.isEmpty, "a quoted string that does not end")
                chars.removeFirst()
                tokens.append((text, true))
                continue
            }
            var word = ""
            while let d = chars.first, !" \n\t\r;{}\"'".unicodeScalars.contains(d) { word.unicodeScalars.append(d); chars.removeFirst() }
            tokens.append((word, false))
        }
        var blocks: [String] = []
        var statement: [String] = []
        for token in tokens {
            switch (token.text, token.quoted) {
            case ("{", false):
                precondition(!statement.isEmpty, "a block without a directive")
                blocks.append(statement[0])
                statement = []
            case ("}", false):
                precondition(statement.isEmpty, "a statement without its ';' before '}': \(statement)")
                precondition(blocks.popLast() != nil, "a block closed that was not open")
            case (";", false):
                precondition(!statement.isEmpty, "an empty statement")
                statement = []
            default:
                if statement.isEmpty, blocks.last != "map" {
                    precondition(!token.quoted && directives.contains(token.text), "a statement that is no directive the renderer writes: \(token.text)")
                }
                statement.append(token.text)
            }
        }
        precondition(statement.isEmpty && blocks.isEmpty, "the configuration ends inside a statement or a block")
    }

    static func kubernetesStatus(_ data: UnsafeRawBufferPointer) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(data), options: [.fragmentsAllowed]) else { return }
        if let deployment = object as? [String: Any] {
            _ = KubernetesStatus.rollout(deployment)
            _ = KubernetesStatus.workload([KubernetesStatus.pod(deployment)])
        }
        if let list = object as? [String: Any], let items = list["items"] as? [[String: Any]] {
            _ = KubernetesStatus.workload(items.map(KubernetesStatus.pod))
        }
    }

    static func dnsAnswer(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        let id = bytes.count >= 2 ? UInt16(bytes[0]) << 8 | UInt16(bytes[1]) : 0
        _ = try? DNSClient.decodeAnswer(bytes, id: id)
    }
}

/// Records what the session reports; opened streams are answered by the target.
final class SessionRecorder: HTTP2SessionDelegate {
    private var opened: [Int32] = []

    func takeOpened() -> [Int32] {
        defer { opened.removeAll() }
        return opened
    }

    func session(_ session: HTTP2Session, header name: String, value: String, streamID: Int32) {}
    func session(_ session: HTTP2Session, didReceiveHeadersOn streamID: Int32, endStream: Bool) { opened.append(streamID) }
    func session(_ session: HTTP2Session, didReceiveData bytes: UnsafeRawBufferPointer, streamID: Int32) {
        try? session.consume(streamID: streamID, bytes: bytes.count)
    }
    func session(_ session: HTTP2Session, didReceiveEndOfDataOn streamID: Int32) {}
    func session(_ session: HTTP2Session, didCloseStream streamID: Int32, errorCode: UInt32) {}
    func session(_ session: HTTP2Session, readDataFor streamID: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: inout UInt32) -> Int { 0 }
    func session(_ session: HTTP2Session, didReceiveGoAway lastStreamID: Int32, errorCode: UInt32) {}
    func sessionDidReceivePingAck(_ session: HTTP2Session, opaque: UInt64) {}
}
