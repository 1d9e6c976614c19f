import Crypto
import Foundation
import Logging
import SlipwayServiceKit
import X509

/// The load balancer's state and the nginx that serves it. Every change is made on a copy of the
/// state, rendered, checked with `nginx -t`, written to disk, and only then put in place and loaded:
/// a change nginx refuses leaves both the state and the running configuration as they were, and a
/// crash between the write and the reload is repaired at the next start (the state is rendered again).
public actor LoadBalancer {
    public struct Failure: Error, CustomStringConvertible {
        public enum Kind: Sendable { case invalid, notFound, conflict, refused, internalError }
        public var kind: Kind
        public var description: String
    }

    public struct Limits: Sendable {
        public var maxCustomDomains = 20
        public var maxBackends = 100
        public var maxRoutes = 1000
        public var maxChallenges = 1000
        public var maxCertificateBytes = 64 * 1024
        /// Certificates installed at once (a renewal replaces its predecessor; expired ones go).
        public var maxCertificates = 2000
        public init() {}
    }

    public let config: NginxConfig
    public let nginx: Nginx
    public let limits: Limits
    private let statePath: String
    private let logger: Logger
    public private(set) var state = NetworkState()
    public private(set) var reloads: UInt64 = 0
    private let changes = Turns()

    public init(config: NginxConfig, nginx: Nginx, limits: Limits = Limits(), logger: Logger) {
        self.config = config
        self.nginx = nginx
        self.limits = limits
        self.statePath = config.settings.directory + "/network.json"
        self.logger = logger
    }

    public var settings: NginxConfig.Settings { config.settings }

    /// Loads the state, renders it and starts nginx (or adopts the running one and reloads it).
    public func start() async throws {
        try nginx.prepareDirectories()
        if let data = FileManager.default.contents(atPath: statePath) {
            do {
                state = try JSONDecoder().decode(NetworkState.self, from: data)
            } catch {
                throw Failure(kind: .internalError, description: "\(statePath) is not readable state (\(error)): restore it or remove it to start empty")
            }
        }
        let candidate = try await candidate(for: state) { "the saved state renders a configuration nginx refuses: \($0)" }
        try rename(candidate, to: nginx.configPath)
        if nginx.masterPID() != nil {
            _ = try await nginx.reload()
            logger.info("adopted the running nginx", metadata: ["routes": "\(state.routes.count)"])
        } else {
            try await nginx.start()
            logger.info("nginx started", metadata: ["http": "\(settings.httpListen)", "https": "\(settings.httpsListen)", "routes": "\(state.routes.count)"])
        }
        reloads += 1
    }

    /// Applies `change` to a copy of the state; if nginx accepts the result it becomes the state.
    /// Returns the workers of the previous configuration, which are finishing their requests.
    @discardableResult
    public func apply(_ change: (inout NetworkState) throws -> Void) async throws -> Nginx.Reload {
        // One change at a time: each starts from the state the previous one left.
        await changes.acquire()
        defer { changes.release() }
        return try await applyInTurn(change)
    }

    private func applyInTurn(_ change: (inout NetworkState) throws -> Void) async throws -> Nginx.Reload {
        var next = state
        try change(&next)
        guard next != state else { return Nginx.Reload(draining: []) }
        let candidate = try await candidate(for: next) { "nginx refused the change, nothing was changed: \($0)" }
        let data: Data
        do { data = try JSONEncoder().encode(next) } catch { throw Failure(kind: .internalError, description: "cannot encode state: \(error)") }
        try write(data, to: statePath, mode: 0o600)
        state = next
        try rename(candidate, to: nginx.configPath)
        do {
            let reload = try await nginx.reload()
            reloads += 1
            return reload
        } catch {
            throw Failure(kind: .internalError, description: "\(error)")
        }
    }

    /// The configuration of `state`, written next to the running one and accepted by `nginx -t`.
    private func candidate(for state: NetworkState, refused: (any Error) -> String) async throws -> String {
        let path = config.settings.directory + "/nginx.conf.next"
        try write(config.render(state), to: path, mode: 0o644)
        do {
            try await nginx.test(configuration: path)
        } catch {
            throw Failure(kind: .refused, description: refused(error))
        }
        return path
    }

    // MARK: Routes

    public func setRoute(_ route: NetworkState.Route) async throws -> NetworkState.Route {
        var route = route
        try RouteValidation.label(route.serviceName, field: "service_name")
        if let label = route.defaultLabel {
            try RouteValidation.label(label, field: "default_label")
        } else {
            try RouteValidation.label(route.environmentName, field: "environment_name")
        }
        route.pathPrefix = try RouteValidation.pathPrefix(route.pathPrefix)
        guard route.customDomains.count <= limits.maxCustomDomains else {
            throw Failure(kind: .invalid, description: "at most \(limits.maxCustomDomains) custom domains per route, got \(route.customDomains.count)")
        }
        for domain in route.customDomains { try RouteValidation.domain(domain, field: "custom domain") }
        for (domain, token) in route.ownershipTokens ?? [:] {
            guard route.customDomains.contains(domain) else {
                throw Failure(kind: .invalid, description: "ownership_tokens names \(domain.prefix(80)), which is not one of the route's custom domains")
            }
            guard !token.isEmpty, token.utf8.count <= 128, token.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "\"") }) else {
                throw Failure(kind: .invalid, description: "ownership_tokens[\(domain)] must be 1 to 128 printable characters without quotes")
            }
        }
        route.customDomains = Array(Set(route.customDomains)).sorted()
        let defaultDomain = route.defaultDomain(base: settings.baseDomain)
        try RouteValidation.domain(defaultDomain, field: "default domain")
        let key = route.key
        try await apply { state in
            if state.routes[key] == nil, state.routes.count >= limits.maxRoutes {
                throw Failure(kind: .conflict, description: "the load balancer holds its limit of \(limits.maxRoutes) routes")
            }
            // Two services on one domain need different path prefixes. A custom domain the route
            // claims with an ownership token is the caller's decision (the pipeline gives a domain to
            // one service, platform-wide): it is taken from a route that still lists it (a service
            // that dropped it and has not been deployed since) instead of refused.
            for other in state.routes.values where other.key != key && other.pathPrefix == route.pathPrefix {
                let claimed = Set(route.customDomains.filter { route.ownershipTokens?[$0] != nil })
                let stale = other.customDomains.filter(claimed.contains)
                if !stale.isEmpty {
                    state.routes[other.key]?.customDomains.removeAll(where: claimed.contains)
                    logger.notice("custom domains taken from a route that no longer holds them", metadata: [
                        "domains": "\(stale.joined(separator: ","))", "from": "\(other.key)", "to": "\(key)",
                    ])
                }
                let theirs = Set([other.defaultDomain(base: settings.baseDomain)] + other.customDomains.filter { !claimed.contains($0) })
                if let taken = ([defaultDomain] + route.customDomains).first(where: theirs.contains) {
                    throw Failure(kind: .conflict, description: "\(taken)\(route.pathPrefix) is already routed to service \(other.serviceName) (\(other.serviceID)); use another domain or path prefix")
                }
            }
            state.routes[key] = route
            // A new claim (another ownership token) starts unverified, whatever an earlier claim's
            // check found — except the same route's domain verified before ownership records
            // existed (an upgrade): it stays routed for a grace period while its owner adds one.
            let now = Date().timeIntervalSince1970
            for domain in route.customDomains where state.check(of: domain, in: route) == nil {
                let token = route.ownershipTokens?[domain]
                if let token, let previous = state.domainChecks[domain], previous.token == nil, previous.state == .verified,
                    previous.graceUntil == nil, state.routes[key]?.customDomains.contains(domain) == true
                {
                    let until = now + NetworkState.ownershipGraceSeconds
                    state.domainChecks[domain] = .init(
                        state: .verified,
                        reason: "verified before ownership records; add a TXT record \(DomainChecker.ownershipRecord(domain)) with the value \(token) before \(Date(timeIntervalSince1970: until)) or it stops being routed",
                        checkedAt: previous.checkedAt, token: token, graceUntil: until)
                } else {
                    state.domainChecks[domain] = .init(state: .pending, reason: "not checked yet", checkedAt: 0, token: token)
                }
            }
        }
        return state.routes[key]!
    }

    /// Points the route at `backends` (kept for a route set later, if it has none yet); returns the
    /// reload whose old workers still drain.
    public func setBackends(key: String, backends: [String]) async throws -> Nginx.Reload {
        guard backends.count <= limits.maxBackends else {
            throw Failure(kind: .invalid, description: "at most \(limits.maxBackends) addresses per route, got \(backends.count)")
        }
        for backend in backends { try RouteValidation.backend(backend) }
        return try await apply { state in
            // Backends kept for routes not set yet count against the same limit as routes.
            if !backends.isEmpty, state.backends[key] == nil, state.backends.count >= limits.maxRoutes {
                throw Failure(kind: .conflict, description: "the load balancer holds backends for its limit of \(limits.maxRoutes) routes")
            }
            state.backends[key] = backends.isEmpty ? nil : backends
        }
    }

    public func deleteRoute(key: String) async throws -> NetworkState.Route {
        guard let route = state.routes[key] else { throw Failure(kind: .notFound, description: "no route for \(key)") }
        try await apply { state in
            state.routes[key] = nil
            state.backends[key] = nil
            let stillUsed = Set(state.routes.values.flatMap(\.customDomains))
            state.domainChecks = state.domainChecks.filter { stillUsed.contains($0.key) }
        }
        return route
    }

    public func route(key: String) throws -> NetworkState.Route {
        guard let route = state.routes[key] else { throw Failure(kind: .notFound, description: "no route for \(key)") }
        return route
    }

    public func recordChecks(_ checks: [String: NetworkState.DomainCheck]) async throws {
        try await apply { state in
            let now = Date().timeIntervalSince1970
            for (domain, check) in checks {
                guard let current = state.domainChecks[domain] else { continue }
                // Still in its grace and the record not there yet: it stays routed, with the news.
                if let until = current.graceUntil, now < until, check.token == current.token, check.state != .verified {
                    state.domainChecks[domain]?.reason = "\(check.reason) (routed until \(Date(timeIntervalSince1970: until)): verified before ownership records)"
                    state.domainChecks[domain]?.checkedAt = check.checkedAt
                    continue
                }
                state.domainChecks[domain] = check
            }
        }
    }

    // MARK: Challenges

    public func presentChallenge(token: String, keyAuthorization: String) async throws {
        try RouteValidation.challenge(token: token, keyAuthorization: keyAuthorization)
        guard !keyAuthorization.isEmpty else { throw Failure(kind: .invalid, description: "key_authorization is required") }
        try await apply { state in
            if state.challenges[token] == nil, state.challenges.count >= limits.maxChallenges {
                throw Failure(kind: .conflict, description: "\(limits.maxChallenges) challenges are already presented; clean some up first")
            }
            state.challenges[token] = keyAuthorization
        }
    }

    public func cleanUpChallenge(token: String) async throws {
        try RouteValidation.challenge(token: token, keyAuthorization: "")
        try await apply { state in state.challenges[token] = nil }
    }

    // MARK: Certificates

    /// Stores the chain and key (0600) under a name derived from the chain, points every domain it
    /// covers at it, reloads (old workers keep the previous certificate until they exit: no moment
    /// without one), and removes files no certificate uses any more.
    public func installCertificate(chainPEM: String, keyPEM: String) async throws -> NetworkState.Certificate {
        guard chainPEM.utf8.count <= limits.maxCertificateBytes, keyPEM.utf8.count <= limits.maxCertificateBytes else {
            throw Failure(kind: .invalid, description: "certificate chain and key must be at most \(limits.maxCertificateBytes) bytes each")
        }
        let leaf: Certificate
        let end = "-----END CERTIFICATE-----"
        guard chainPEM.hasPrefix("-----BEGIN CERTIFICATE-----"), let leafEnd = chainPEM.range(of: end) else {
            throw Failure(kind: .invalid, description: "certificate_chain_pem must start with a PEM CERTIFICATE block (the leaf)")
        }
        do {
            leaf = try Certificate(pemEncoded: String(chainPEM[..<leafEnd.upperBound]))
        } catch {
            throw Failure(kind: .invalid, description: "certificate_chain_pem: the first certificate does not parse: \(error)")
        }
        guard keyPEM.hasPrefix("-----BEGIN "), keyPEM.contains("PRIVATE KEY-----") else {
            throw Failure(kind: .invalid, description: "private_key_pem must be a PEM PRIVATE KEY block")
        }
        guard !keyPEM.contains("ENCRYPTED") else { throw Failure(kind: .invalid, description: "private_key_pem must not be encrypted") }
        var domains: [String] = []
        if let names = try? leaf.extensions.subjectAlternativeNames {
            for name in names { if case .dnsName(let dns) = name { domains.append(dns.lowercased()) } }
        }
        guard !domains.isEmpty else { throw Failure(kind: .invalid, description: "the certificate names no DNS subject alternative names") }
        guard leaf.notValidAfter > Date() else {
            throw Failure(kind: .invalid, description: "the certificate expired on \(leaf.notValidAfter)")
        }
        // Named by chain and key together: the same chain sent with another key never overwrites the
        // files of the one in use.
        let id = SHA256.hash(data: Data((chainPEM + "\n" + keyPEM).utf8)).map { String(format: "%02x", $0) }.joined().prefix(32)
        let certificate = NetworkState.Certificate(
            id: String(id), domains: domains.sorted(), notAfter: leaf.notValidAfter.timeIntervalSince1970, installedAt: Date().timeIntervalSince1970)
        // Files and state change in one turn: another install's cleanup must not see these files
        // before the state that uses them.
        await changes.acquire()
        defer { changes.release() }
        try write(chainPEM, to: config.chainPath(certificate.id), mode: 0o600)
        try write(keyPEM, to: config.keyPath(certificate.id), mode: 0o600)
        do {
            _ = try await applyInTurn { state in
                // A certificate for the same names (or fewer) is replaced; expired ones serve nobody.
                let now = Date().timeIntervalSince1970
                state.certificates.removeAll { $0.id == certificate.id || Set($0.domains).isSubset(of: certificate.domains) || $0.notAfter < now }
                guard state.certificates.count < limits.maxCertificates else {
                    throw Failure(kind: .conflict, description: "the load balancer holds its limit of \(limits.maxCertificates) certificates")
                }
                state.certificates.append(certificate)
            }
        } catch {
            removeUnusedCertificateFiles()
            throw error
        }
        removeUnusedCertificateFiles()
        return certificate
    }

    private func removeUnusedCertificateFiles() {
        let used = Set(state.certificates.map(\.id))
        let directory = config.certificateDirectory
        for file in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            let id = file.split(separator: ".").first.map(String.init) ?? file
            if !used.contains(id) { unlink(directory + "/" + file) }
        }
    }

    // MARK: Files

    private func write(_ text: String, to path: String, mode: mode_t) throws {
        try write(Data(text.utf8), to: path, mode: mode)
    }

    private func write(_ data: Data, to path: String, mode: mode_t) throws {
        do { try AtomicFile.write(data, to: path, mode: mode) } catch { throw Failure(kind: .internalError, description: error.description) }
    }

    private func rename(_ from: String, to: String) throws {
        guard Glibc.rename(from, to) == 0 else {
            throw Failure(kind: .internalError, description: "cannot rename \(from) to \(to): \(String(cString: strerror(errno)))")
        }
    }
}
