import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import SlipwayHTTP
import Yams

/// A small client of the Kubernetes REST API: server-side apply, get, list, delete, pod logs.
/// Objects are JSON dictionaries (`[String: Any]`), as ``KubernetesManifests`` makes them.
public struct KubernetesClient: Sendable {
    /// Where the API server is and who we are to it.
    public struct Configuration: Sendable {
        public var server: URL
        public var token: String?
        /// PEM, from the kubeconfig or the service account.
        public var certificateAuthority: String?
        public var clientCertificate: String?
        public var clientKey: String?
        public var insecureSkipTLSVerify = false
        /// The namespace of the context (kubeconfig) or of the pod (in cluster).
        public var namespace: String?

        public init(server: URL) {
            self.server = server
        }

        /// Inside a pod: the service account's token, CA and namespace, and the API server from
        /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`.
        public static func inCluster(
            environment: [String: String] = ProcessInfo.processInfo.environment,
            directory: String = "/var/run/secrets/kubernetes.io/serviceaccount"
        ) throws -> Configuration {
            guard let host = environment["KUBERNETES_SERVICE_HOST"], let port = environment["KUBERNETES_SERVICE_PORT"] else {
                throw KubernetesError(code: 0, reason: "NotInCluster", message: "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not running in a pod")
            }
            let bracketed = host.contains(":") ? "[\(host)]" : host
            guard let server = URL(string: "https://\(bracketed):\(port)") else {
                throw KubernetesError(code: 0, reason: "Invalid", message: "API server https://\(bracketed):\(port) is not a URL")
            }
            var configuration = Configuration(server: server)
            func read(_ name: String) throws -> String {
                guard let data = FileManager.default.contents(atPath: directory + "/" + name) else {
                    throw KubernetesError(code: 0, reason: "NotInCluster", message: "cannot read \(directory)/\(name)")
                }
                return String(decoding: data, as: UTF8.self)
            }
            configuration.token = try read("token").trimmingCharacters(in: .whitespacesAndNewlines)
            configuration.certificateAuthority = try read("ca.crt")
            configuration.namespace = (try? read("namespace"))?.trimmingCharacters(in: .whitespacesAndNewlines)
            return configuration
        }

        /// From a kubeconfig file as kubectl writes it: the given context, or its current-context.
        public static func kubeconfig(_ text: String, context wanted: String? = nil) throws -> Configuration {
            func fail(_ message: String) -> KubernetesError { KubernetesError(code: 0, reason: "InvalidKubeconfig", message: message) }
            guard let root = try Yams.load(yaml: text) as? [String: Any] else { throw fail("the kubeconfig is not a YAML mapping") }
            func named(_ list: String, _ name: String) throws -> [String: Any] {
                let entries = root[list] as? [[String: Any]] ?? []
                guard let entry = entries.first(where: { $0["name"] as? String == name }) else { throw fail("no \(list) entry named \"\(name)\"") }
                return entry
            }
            guard let contextName = wanted ?? root["current-context"] as? String, !contextName.isEmpty else {
                throw fail("no context given and no current-context")
            }
            let context = try named("contexts", contextName)["context"] as? [String: Any] ?? [:]
            guard let clusterName = context["cluster"] as? String else { throw fail("context \"\(contextName)\" names no cluster") }
            let cluster = try named("clusters", clusterName)["cluster"] as? [String: Any] ?? [:]
            guard let serverText = cluster["server"] as? String, let server = URL(string: serverText) else {
                throw fail("cluster \"\(clusterName)\" has no server URL")
            }
            var configuration = Configuration(server: server)
            configuration.namespace = context["namespace"] as? String
            configuration.insecureSkipTLSVerify = cluster["insecure-skip-tls-verify"] as? Bool ?? false
            configuration.certificateAuthority = try pem(cluster, data: "certificate-authority-data", file: "certificate-authority")
            if let userName = context["user"] as? String {
                let user = try named("users", userName)["user"] as? [String: Any] ?? [:]
                configuration.token = user["token"] as? String
                if configuration.token == nil, let file = user["tokenFile"] as? String, let data = FileManager.default.contents(atPath: file) {
                    configuration.token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                }
                configuration.clientCertificate = try pem(user, data: "client-certificate-data", file: "client-certificate")
                configuration.clientKey = try pem(user, data: "client-key-data", file: "client-key")
            }
            return configuration
        }

        /// A kubeconfig value given inline (base64 `…-data`) or as a file path.
        static func pem(_ section: [String: Any], data key: String, file fileKey: String) throws -> String? {
            if let base64 = section[key] as? String {
                guard let data = Data(base64Encoded: base64) else {
                    throw KubernetesError(code: 0, reason: "InvalidKubeconfig", message: "\(key) is not base64")
                }
                return String(decoding: data, as: UTF8.self)
            }
            if let path = section[fileKey] as? String {
                guard let data = FileManager.default.contents(atPath: path) else {
                    throw KubernetesError(code: 0, reason: "InvalidKubeconfig", message: "cannot read \(fileKey) \(path)")
                }
                return String(decoding: data, as: UTF8.self)
            }
            return nil
        }
    }

    public let configuration: Configuration
    let http: HTTPClient
    /// The field manager named in every server-side apply.
    public var fieldManager = "slipway"

    public init(_ configuration: Configuration, timeout: Duration = .seconds(30)) throws {
        self.configuration = configuration
        var http = HTTPClient(timeout: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000), maxBodyBytes: 16 * 1024 * 1024)
        http.insecureTLS = configuration.insecureSkipTLSVerify
        if let ca = configuration.certificateAuthority {
            http.trustRoots = try NIOSSLCertificate.fromPEMBytes(Array(ca.utf8))
        }
        if let certificate = configuration.clientCertificate, let key = configuration.clientKey {
            http.clientCertificate = (try NIOSSLCertificate.fromPEMBytes(Array(certificate.utf8)), try NIOSSLPrivateKey(bytes: Array(key.utf8), format: .pem))
        }
        self.http = http
    }

    // MARK: Paths

    /// Where objects of a kind live: the API group path and the resource (plural) name.
    static let resources: [String: (group: String, plural: String, namespaced: Bool)] = [
        "v1/Namespace": ("/api/v1", "namespaces", false),
        "v1/ConfigMap": ("/api/v1", "configmaps", true),
        "v1/Secret": ("/api/v1", "secrets", true),
        "v1/Service": ("/api/v1", "services", true),
        "v1/Pod": ("/api/v1", "pods", true),
        "v1/ResourceQuota": ("/api/v1", "resourcequotas", true),
        "v1/LimitRange": ("/api/v1", "limitranges", true),
        "networking.k8s.io/v1/NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", true),
        "apps/v1/Deployment": ("/apis/apps/v1", "deployments", true),
        "networking.k8s.io/v1/Ingress": ("/apis/networking.k8s.io/v1", "ingresses", true),
    ]

    /// The path of one object (`name`) or of the collection (`name` nil).
    public static func path(apiVersion: String, kind: String, namespace: String?, name: String?) throws -> String {
        guard let resource = resources["\(apiVersion)/\(kind)"] else {
            throw KubernetesError(code: 0, reason: "UnknownKind", message: "no resource path known for \(apiVersion) \(kind)")
        }
        var path = resource.group
        if resource.namespaced {
            guard let namespace, !namespace.isEmpty else { throw KubernetesError(code: 0, reason: "Invalid", message: "\(kind) needs a namespace") }
            path += "/namespaces/" + escape(namespace)
        }
        path += "/" + resource.plural
        if let name { path += "/" + escape(name) }
        return path
    }

    static func escape(_ segment: String) -> String {
        segment.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? segment
    }

    // MARK: Calls

    /// Server-side apply (`PATCH` with `application/apply-patch+yaml`; JSON is YAML): the object as
    /// the server now has it. `force` takes over fields another manager owns (Slipway owns the
    /// objects it makes).
    public func apply(_ object: [String: Any], force: Bool = true) async throws -> [String: Any] {
        guard let apiVersion = object["apiVersion"] as? String, let kind = object["kind"] as? String,
              let metadata = object["metadata"] as? [String: Any], let name = metadata["name"] as? String else {
            throw KubernetesError(code: 0, reason: "Invalid", message: "an object needs apiVersion, kind and metadata.name")
        }
        let path = try Self.path(apiVersion: apiVersion, kind: kind, namespace: metadata["namespace"] as? String, name: name)
        let body = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        let query = "fieldManager=\(Self.escape(fieldManager))" + (force ? "&force=true" : "")
        return try await json(.PATCH, path, query: query, body: Array(body), contentType: "application/apply-patch+yaml")
    }

    public func get(apiVersion: String, kind: String, namespace: String?, name: String) async throws -> [String: Any] {
        try await json(.GET, try Self.path(apiVersion: apiVersion, kind: kind, namespace: namespace, name: name))
    }

    /// The items of a collection, optionally by label selector (`app.kubernetes.io/instance=x`).
    public func list(apiVersion: String, kind: String, namespace: String?, labelSelector: String? = nil) async throws -> [[String: Any]] {
        let path = try Self.path(apiVersion: apiVersion, kind: kind, namespace: namespace, name: nil)
        let list = try await json(.GET, path, query: labelSelector.map { "labelSelector=" + Self.escape($0) })
        return list["items"] as? [[String: Any]] ?? []
    }

    /// Sets a Deployment's replicas through its `scale` subresource (a merge patch of one field:
    /// nothing else of the object changes hands).
    public func scale(namespace: String, deployment: String, replicas: Int) async throws {
        let path = try Self.path(apiVersion: "apps/v1", kind: "Deployment", namespace: namespace, name: deployment) + "/scale"
        _ = try await json(.PATCH, path, body: Array("{\"spec\":{\"replicas\":\(replicas)}}".utf8), contentType: "application/merge-patch+json")
    }

    /// Deletes an object; a missing one is not an error (delete is idempotent for the cluster service).
    public func delete(apiVersion: String, kind: String, namespace: String?, name: String) async throws {
        do {
            _ = try await json(.DELETE, try Self.path(apiVersion: apiVersion, kind: kind, namespace: namespace, name: name), query: "propagationPolicy=Foreground")
        } catch let error as KubernetesError where error.code == 404 {
        }
    }

    /// A pod's log lines after `since` (RFC 3339 with nanoseconds, as the server stamps them), each
    /// with its timestamp: polled to follow a pod without a long-lived stream.
    public func podLog(namespace: String, pod: String, container: String? = nil, since: String? = nil, limitBytes: Int = 1 << 20) async throws -> [(timestamp: String, text: String)] {
        var query = "timestamps=true&limitBytes=\(limitBytes)"
        if let container { query += "&container=" + Self.escape(container) }
        if let since { query += "&sinceTime=" + Self.escape(since) }
        let response = try await send(.GET, try Self.path(apiVersion: "v1", kind: "Pod", namespace: namespace, name: pod) + "/log", query: query, body: nil, contentType: nil)
        var text = String(decoding: response.body, as: UTF8.self)
        // Cut at limitBytes: a last line without its newline is read again next time, whole.
        if response.body.count >= limitBytes, !text.hasSuffix("\n"), let end = text.lastIndex(of: "\n") { text = String(text[...end]) }
        return Self.logLines(text)
    }

    /// `2024-01-01T00:00:00.123456789Z text` lines into (timestamp, text).
    static func logLines(_ text: String) -> [(timestamp: String, text: String)] {
        text.split(separator: "\n", omittingEmptySubsequences: true).map { line in
            guard let space = line.firstIndex(of: " ") else { return (String(line), "") }
            return (String(line[..<space]), String(line[line.index(after: space)...]))
        }
    }

    private func json(_ method: HTTPMethod, _ path: String, query: String? = nil, body: [UInt8]? = nil, contentType: String? = nil) async throws -> [String: Any] {
        let response = try await send(method, path, query: query, body: body, contentType: contentType)
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] else {
            throw KubernetesError(code: response.status, reason: "InvalidResponse", message: "\(method) \(path): the answer is not a JSON object")
        }
        return object
    }

    private func send(_ method: HTTPMethod, _ path: String, query: String?, body: [UInt8]?, contentType: String?) async throws -> HTTPClient.Response {
        var components = URLComponents(url: configuration.server, resolvingAgainstBaseURL: false)
        components?.percentEncodedPath = (configuration.server.path.hasSuffix("/") ? String(configuration.server.path.dropLast()) : configuration.server.path) + path
        components?.percentEncodedQuery = query
        guard let url = components?.url else { throw KubernetesError(code: 0, reason: "Invalid", message: "cannot make a URL for \(path)") }
        var headers: HTTPHeaders = ["Accept": "application/json"]
        if let contentType { headers.add(name: "Content-Type", value: contentType) }
        if let token = configuration.token { headers.add(name: "Authorization", value: "Bearer \(token)") }
        let response: HTTPClient.Response
        do {
            response = try await http.send(method, url, headers: headers, body: body)
        } catch {
            throw KubernetesError(code: 0, reason: "Unreachable", message: "\(method) \(configuration.server.absoluteString)\(path): \(error)")
        }
        guard (200..<300).contains(response.status) else { throw KubernetesError(status: response.status, body: response.body) }
        return response
    }
}

/// An error from the API server (its `Status` object) or from reaching it.
public struct KubernetesError: Error, CustomStringConvertible, Sendable {
    /// HTTP status (409 conflict, 404 not found, 403 forbidden, …); 0 when no answer came.
    public var code: Int
    /// The Status `reason` (Conflict, NotFound, Forbidden, Invalid, …).
    public var reason: String
    public var message: String

    public init(code: Int, reason: String, message: String) {
        self.code = code
        self.reason = reason
        self.message = message
    }

    /// From a `Status` body (metav1.Status), or the raw text when it is not one.
    init(status: Int, body: [UInt8]) {
        if let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any], object["kind"] as? String == "Status" {
            self.init(code: object["code"] as? Int ?? status, reason: object["reason"] as? String ?? "Unknown", message: object["message"] as? String ?? "")
        } else {
            self.init(code: status, reason: "Unknown", message: String(decoding: body.prefix(500), as: UTF8.self))
        }
    }

    public var description: String { "\(reason) (\(code)): \(message)" }
}
