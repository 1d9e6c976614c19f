import Foundation
import SlipwayHTTP
import NIOCore
import NIOHTTP1

/// A client of the OCI distribution API (the subset the platform needs): does a manifest exist and
/// what is its digest, delete a manifest. Basic and bearer-token authentication, as registries
/// announce them in `WWW-Authenticate`.
public struct RegistryClient: Sendable {
    public struct Credentials: Sendable {
        public var username: String
        public var password: String
        public init(username: String, password: String) {
            self.username = username
            self.password = password
        }

        /// The user and password a containers-auth.json (`{"auths": {host: {"auth": base64(user:password)}}}`) holds for `host`.
        public init?(authFile data: Data, host: String) {
            guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let auths = json["auths"] as? [String: Any],
                  let entry = auths[host] as? [String: Any], let auth = entry["auth"] as? String,
                  let decoded = Data(base64Encoded: auth).map({ String(decoding: $0, as: UTF8.self) }), let colon = decoded.firstIndex(of: ":")
            else { return nil }
            self.init(username: String(decoded[..<colon]), password: String(decoded[decoded.index(after: colon)...]))
        }
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public enum Kind: Sendable { case unreachable, unauthorized, notFound, unexpected }
        public var kind: Kind
        public var description: String
    }

    /// host[:port]
    public let host: String
    public let insecure: Bool
    public let credentials: Credentials?
    var http: HTTPClient

    /// Media types accepted for manifests: OCI and Docker, single images and indexes.
    static let manifestTypes = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ].joined(separator: ", ")

    public init(host: String, insecure: Bool = false, credentials: Credentials? = nil, timeout: Duration = .seconds(30)) {
        self.host = host
        self.insecure = insecure
        self.credentials = credentials
        self.http = HTTPClient(timeout: .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000), insecureTLS: insecure)
    }

    /// Docker Hub's API lives at registry-1.docker.io, not at the name images use.
    var baseURL: String { "\(insecure ? "http" : "https")://\(host == "docker.io" ? "registry-1.docker.io" : host)" }

    /// The digest of `repository:reference` (a tag or a digest), or nil when the registry does not have it.
    public func manifestDigest(repository: String, reference: String) async throws(Failure) -> String? {
        let response = try await authorized(.HEAD, "/v2/\(repository)/manifests/\(reference)", scope: "repository:\(repository):pull", headers: ["Accept": Self.manifestTypes])
        switch response.status {
        case 200:
            if let digest = response.headers.first(name: "Docker-Content-Digest") { return digest }
            throw Failure(kind: .unexpected, description: "\(host) answered without a Docker-Content-Digest for \(repository):\(reference)")
        case 404:
            return nil
        default:
            throw unexpected(response, "HEAD \(repository):\(reference)")
        }
    }

    /// Removes the manifest `digest` of `repository` (and with it every tag pointing at it).
    public func deleteManifest(repository: String, digest: String) async throws(Failure) {
        let response = try await authorized(.DELETE, "/v2/\(repository)/manifests/\(digest)", scope: "repository:\(repository):delete", headers: [:])
        guard response.status == 202 || response.status == 200 || response.status == 404 else {
            throw unexpected(response, "DELETE \(repository)@\(digest)")
        }
    }

    /// The tags of `repository` (empty when the repository does not exist).
    public func tags(repository: String) async throws(Failure) -> [String] {
        let response = try await authorized(.GET, "/v2/\(repository)/tags/list", scope: "repository:\(repository):pull", headers: [:])
        if response.status == 404 { return [] }
        guard response.status == 200 else { throw unexpected(response, "GET \(repository) tags") }
        struct Tags: Decodable { var tags: [String]? }
        return (try? JSONDecoder().decode(Tags.self, from: Data(response.body)))?.tags ?? []
    }

    /// The user an image runs as (its config's `User`, "" when unset: root), for
    /// `repository:reference`; of an index (several platforms), its linux/amd64 image's.
    public func imageUser(repository: String, reference: String) async throws(Failure) -> String {
        var manifest = try await json("/v2/\(repository)/manifests/\(reference)", repository: repository, accept: Self.manifestTypes)
        if let entries = manifest["manifests"] as? [[String: Any]] {
            let chosen = entries.first { entry in
                let platform = entry["platform"] as? [String: Any]
                return platform?["os"] as? String == "linux" && platform?["architecture"] as? String == "amd64"
            } ?? entries.first
            guard let digest = chosen?["digest"] as? String else {
                throw Failure(kind: .unexpected, description: "\(host): \(repository):\(reference) is an index without images")
            }
            manifest = try await json("/v2/\(repository)/manifests/\(digest)", repository: repository, accept: Self.manifestTypes)
        }
        guard let config = (manifest["config"] as? [String: Any])?["digest"] as? String else {
            throw Failure(kind: .unexpected, description: "\(host): the manifest of \(repository):\(reference) names no config")
        }
        let image = try await json("/v2/\(repository)/blobs/\(config)", repository: repository, accept: "*/*")
        return ((image["config"] as? [String: Any])?["User"] as? String) ?? ""
    }

    private func json(_ path: String, repository: String, accept: String) async throws(Failure) -> [String: Any] {
        let response = try await authorized(.GET, path, scope: "repository:\(repository):pull", headers: ["Accept": accept])
        if response.status == 404 { throw Failure(kind: .notFound, description: "\(host) has no \(path)") }
        guard response.status == 200 else { throw unexpected(response, "GET \(path)") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any] else {
            throw Failure(kind: .unexpected, description: "\(host): \(path) is not a JSON object")
        }
        return object
    }

    /// `GET /v2/`: reachable and the credentials (if any) accepted.
    public func ping() async throws(Failure) {
        let response = try await authorized(.GET, "/v2/", scope: nil, headers: [:])
        guard response.status == 200 else { throw unexpected(response, "GET /v2/") }
    }

    // MARK: Authentication

    private func authorized(_ method: HTTPMethod, _ path: String, scope: String?, headers: HTTPHeaders) async throws(Failure) -> HTTPClient.Response {
        guard let url = URL(string: baseURL + path) else {
            throw Failure(kind: .unexpected, description: "\(host)\(path) is not a valid registry URL")
        }
        var response = try await send(method, url, headers: headers)
        guard response.status == 401, let challenge = response.headers.first(name: "WWW-Authenticate") else { return response }
        var retry = headers
        retry.replaceOrAdd(name: "Authorization", value: try await authorization(for: challenge, scope: scope))
        response = try await send(method, url, headers: retry)
        if response.status == 401 {
            throw Failure(kind: .unauthorized, description: "\(host) refused the credentials\(credentials == nil ? " (none were given)" : " of \(credentials!.username)")")
        }
        return response
    }

    /// The Authorization header answering a `WWW-Authenticate` challenge.
    func authorization(for challenge: String, scope: String?) async throws(Failure) -> String {
        let (scheme, parameters) = Self.parseChallenge(challenge)
        switch scheme.lowercased() {
        case "basic":
            guard let credentials else { throw Failure(kind: .unauthorized, description: "\(host) requires a login and no credentials were given") }
            return "Basic " + Data("\(credentials.username):\(credentials.password)".utf8).base64EncodedString()
        case "bearer":
            guard let realm = parameters["realm"], var components = URLComponents(string: realm) else {
                throw Failure(kind: .unexpected, description: "\(host) asked for a bearer token without a realm")
            }
            if let refusal = Self.refusal(realm: components, registryHost: host, insecure: insecure) {
                throw Failure(kind: .unexpected, description: "\(host) sent its token requests to \(components.scheme ?? "?")://\(components.host ?? "?"): \(refusal)")
            }
            var query = components.queryItems ?? []
            if let service = parameters["service"] { query.append(URLQueryItem(name: "service", value: service)) }
            if let scope = scope ?? parameters["scope"] { query.append(URLQueryItem(name: "scope", value: scope)) }
            components.queryItems = query
            var headers: HTTPHeaders = [:]
            if let credentials {
                headers.add(name: "Authorization", value: "Basic " + Data("\(credentials.username):\(credentials.password)".utf8).base64EncodedString())
            }
            let response = try await send(.GET, components.url!, headers: headers)
            guard response.status == 200 else {
                if response.status == 401 || response.status == 403 {
                    throw Failure(kind: .unauthorized, description: "the token service of \(host) refused the credentials")
                }
                throw unexpected(response, "token request")
            }
            struct Token: Decodable { var token: String?; var access_token: String? }
            guard let token = try? JSONDecoder().decode(Token.self, from: Data(response.body)), let value = token.token ?? token.access_token else {
                throw Failure(kind: .unexpected, description: "the token service of \(host) answered without a token")
            }
            return "Bearer " + value
        default:
            throw Failure(kind: .unexpected, description: "\(host) asks for an authentication scheme Slipway does not speak: \(scheme)")
        }
    }

    /// Why a bearer realm is not followed (nil: it is). A registry names where its tokens come from,
    /// and the credentials go there: only https, and never the machine itself or link-local
    /// addresses (cloud metadata) unless the registry itself is there (a local registry the
    /// operator configured, plain http when the registry is).
    static func refusal(realm: URLComponents, registryHost: String, insecure: Bool) -> String? {
        let registryName = Self.hostName(registryHost)
        let realmHost = (realm.host ?? "").lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        guard !realmHost.isEmpty else { return "the realm names no host" }
        let sameHost = realmHost == registryName
        switch realm.scheme?.lowercased() {
        case "https": break
        case "http" where insecure && sameHost: break
        default: return "only https realms are followed"
        }
        if !sameHost, Self.isInternal(realmHost) { return "a realm on loopback or link-local addresses is not followed" }
        return nil
    }

    /// `host:port`, `[v6]:port` → the host, lower-cased, without brackets.
    public static func hostName(_ hostPort: String) -> String {
        let lower = hostPort.lowercased()
        if lower.hasPrefix("["), let end = lower.firstIndex(of: "]") { return String(lower[lower.index(after: lower.startIndex)..<end]) }
        if lower.filter({ $0 == ":" }).count == 1, let colon = lower.firstIndex(of: ":") { return String(lower[..<colon]) }
        return lower
    }

    /// Loopback, link-local, unspecified addresses and `localhost`, in every spelling the C
    /// library accepts (`127.1`, `0x7f000001`, `[0:0::1]`, `::ffff:7f00:1`). A name that resolves
    /// to such an address is not caught here (that needs a check at connect time).
    public static func isInternal(_ host: String) -> Bool {
        let host = host.lowercased()
        if host == "localhost" || host.hasSuffix(".localhost") || host.hasSuffix(".localhost.") { return true }
        func internal4(_ value: UInt32) -> Bool {
            let (a, b) = (value >> 24, (value >> 16) & 0xff)
            return a == 127 || a == 0 || (a == 169 && b == 254)
        }
        var v4 = in_addr()
        // inet_aton takes the shorthand and hex forms that URL parsers and resolvers also accept.
        if inet_aton(host, &v4) != 0 { return internal4(UInt32(bigEndian: v4.s_addr)) }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            if bytes[0..<15].allSatisfy({ $0 == 0 }) && (bytes[15] == 0 || bytes[15] == 1) { return true }  // :: and ::1
            if bytes[0] == 0xfe && bytes[1] & 0xc0 == 0x80 { return true }  // fe80::/10
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xff && bytes[11] == 0xff {  // ::ffff:a.b.c.d
                return internal4(UInt32(bytes[12]) << 24 | UInt32(bytes[13]) << 16 | UInt32(bytes[14]) << 8 | UInt32(bytes[15]))
            }
        }
        return false
    }

    /// `Bearer realm="https://auth/token",service="registry",scope="repository:a:pull"` → scheme and parameters.
    static func parseChallenge(_ header: String) -> (String, [String: String]) {
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard let space = trimmed.firstIndex(of: " ") else { return (trimmed, [:]) }
        let scheme = String(trimmed[..<space])
        var parameters: [String: String] = [:]
        var rest = trimmed[trimmed.index(after: space)...]
        while !rest.isEmpty {
            rest = rest.drop { $0 == " " || $0 == "," }
            guard let equals = rest.firstIndex(of: "=") else { break }
            let key = rest[..<equals].trimmingCharacters(in: .whitespaces).lowercased()
            rest = rest[rest.index(after: equals)...]
            var value = ""
            if rest.first == "\"" {
                rest = rest.dropFirst()
                let end = rest.firstIndex(of: "\"") ?? rest.endIndex
                value = String(rest[..<end])
                rest = end < rest.endIndex ? rest[rest.index(after: end)...] : rest[end...]
            } else {
                let end = rest.firstIndex(of: ",") ?? rest.endIndex
                value = rest[..<end].trimmingCharacters(in: .whitespaces)
                rest = rest[end...]
            }
            parameters[key] = value
        }
        return (scheme, parameters)
    }

    private func send(_ method: HTTPMethod, _ url: URL, headers: HTTPHeaders) async throws(Failure) -> HTTPClient.Response {
        do {
            return try await http.send(method, url, headers: headers)
        } catch {
            throw Failure(kind: .unreachable, description: "cannot reach the registry at \(url.host ?? host): \(error)")
        }
    }

    /// The status and, when the body is an OCI error, its codes (`MANIFEST_UNKNOWN`): never the body
    /// itself, which a hostile registry (or whatever answers at its address) fills as it likes.
    private func unexpected(_ response: HTTPClient.Response, _ what: String) -> Failure {
        let kind: Failure.Kind = response.status == 401 || response.status == 403 ? .unauthorized : .unexpected
        let codes = Self.errorCodes(response.body)
        return Failure(kind: kind, description: "\(host): \(what) answered \(response.status)\(codes.isEmpty ? "" : " (\(codes.joined(separator: ", ")))")")
    }

    /// The `errors[].code` of an OCI error body, only when they look like codes (A-Z and _, ≤ 40).
    static func errorCodes(_ body: [UInt8]) -> [String] {
        struct Errors: Decodable { struct Entry: Decodable { var code: String? }; var errors: [Entry]? }
        guard body.count <= 64 * 1024, let decoded = try? JSONDecoder().decode(Errors.self, from: Data(body)) else { return [] }
        return (decoded.errors ?? []).compactMap(\.code).filter { code in
            !code.isEmpty && code.count <= 40 && code.allSatisfy { ($0 >= "A" && $0 <= "Z") || $0 == "_" }
        }.prefix(3).map { $0 }
    }
}
