import Foundation
import SlipwayRPC
import SlipwayServiceKit

/// Everything the load balancer's configuration is made from. Written to disk before nginx is told
/// (``LoadBalancer``), so a restarted network service renders the same configuration again.
public struct NetworkState: Codable, Sendable, Equatable {
    public var routes: [String: Route] = [:]
    /// HOST:PORT of each route's ready instances, by route key. Kept apart from the routes: the
    /// cluster may set them before the pipeline sets the route (a first deploy), and they outlive a
    /// change of the route's domains.
    public var backends: [String: [String]] = [:]
    public var certificates: [Certificate] = []
    /// ACME HTTP-01 tokens and their key authorizations.
    public var challenges: [String: String] = [:]
    public var domainChecks: [String: DomainCheck] = [:]

    public init() {}

    public enum UpstreamProtocol: String, Codable, Sendable {
        case http, grpc, http2
    }

    public struct Route: Codable, Sendable, Equatable {
        public var environmentID: String
        public var serviceID: String
        public var serviceName: String
        public var environmentName: String
        public var customDomains: [String] = []
        /// "/" or "/a/b" (no trailing slash).
        public var pathPrefix = "/"
        public var upstream: UpstreamProtocol = .http
        /// The default domain's first label when the pipeline assigned one (unique across the
        /// platform); nil: `<service>-<environment>`. Optional: state written before it decodes.
        public var defaultLabel: String?
        /// Per custom domain, the value its ownership record (TXT `_slipway-challenge.<domain>`)
        /// must hold before it is verified; set by the pipeline, one per organization and domain.
        /// nil or missing for a domain: only where it points is checked.
        public var ownershipTokens: [String: String]?

        public var key: String { Self.key(environmentID: environmentID, serviceID: serviceID) }

        public static func key(environmentID: String, serviceID: String) -> String { environmentID + "/" + serviceID }

        public init(environmentID: String, serviceID: String, serviceName: String, environmentName: String) {
            self.environmentID = environmentID
            self.serviceID = serviceID
            self.serviceName = serviceName
            self.environmentName = environmentName
        }

        public func defaultDomain(base: String) -> String {
            if let defaultLabel, !defaultLabel.isEmpty { return "\(defaultLabel).\(base)" }
            return "\(serviceName)-\(environmentName).\(base)"
        }
    }

    public struct Certificate: Codable, Sendable, Equatable {
        /// SHA-256 of the chain, hex: names its files.
        public var id: String
        public var domains: [String]
        public var notAfter: Double
        public var installedAt: Double

        public func covers(_ domain: String) -> Bool {
            domains.contains { name in
                if name == domain { return true }
                // A wildcard covers exactly one more label.
                guard name.hasPrefix("*.") else { return false }
                let suffix = name.dropFirst(1)
                guard domain.hasSuffix(suffix) else { return false }
                return !domain.dropLast(suffix.count).contains(".") && domain.count > suffix.count
            }
        }
    }

    public struct DomainCheck: Codable, Sendable, Equatable {
        public enum State: String, Codable, Sendable { case pending, verified, error }
        public var state: State
        public var reason: String
        public var checkedAt: Double
        /// The ownership token the check looked for (nil: none): a verdict counts only for the
        /// claim it was made for, so a domain claimed again by another organization is checked again.
        public var token: String?
        /// A domain verified before ownership records existed stays verified until then (Unix
        /// seconds) while its owner adds the record; nil: no grace.
        public var graceUntil: Double?

        public init(state: State, reason: String, checkedAt: Double, token: String? = nil, graceUntil: Double? = nil) {
            self.state = state
            self.reason = reason
            self.checkedAt = checkedAt
            self.token = token
            self.graceUntil = graceUntil
        }

        /// Verified, and not past its grace.
        public func holds(at now: Double = Date().timeIntervalSince1970) -> Bool {
            state == .verified && (graceUntil.map { now < $0 } ?? true)
        }
    }

    /// How long a domain verified before ownership records keeps being routed without one.
    public static let ownershipGraceSeconds: Double = 7 * 24 * 3600

    /// The domain's check, when it was made for the route's current claim of it.
    public func check(of domain: String, in route: Route) -> DomainCheck? {
        guard let check = domainChecks[domain], check.token == route.ownershipTokens?[domain] else { return nil }
        return check
    }

    /// The route's custom domain is verified for its current claim.
    public func isVerified(_ domain: String, in route: Route) -> Bool { check(of: domain, in: route)?.holds() ?? false }

    /// Verified for now only by the upgrade's grace: checked again until its record is there.
    public func isInGrace(_ domain: String, in route: Route) -> Bool { check(of: domain, in: route)?.graceUntil != nil }

    public func backends(of route: Route) -> [String] { backends[route.key] ?? [] }

    /// The certificate served for `domain`: the one covering it that expires last.
    public func certificate(for domain: String) -> Certificate? {
        certificates.filter { $0.covers(domain) }.max { $0.notAfter < $1.notAfter }
    }

    /// Every routed domain with the routes that serve it (a domain may carry several services under
    /// different path prefixes): default domains, and custom domains once verified (all of them
    /// with `unverified`).
    /// The route's custom domains that are routed: those whose DNS check verified them (all of them
    /// with `unverified`, an operator's choice for closed networks). Local mode's nginx and
    /// Kubernetes mode's Ingress both route exactly these.
    public func routedCustomDomains(of route: Route, unverified: Bool = false) -> [String] {
        unverified ? route.customDomains : route.customDomains.filter { isVerified($0, in: route) }
    }

    public func routesByDomain(baseDomain: String, unverified: Bool = false) -> [(domain: String, routes: [Route])] {
        var byDomain: [String: [Route]] = [:]
        for route in routes.values {
            for domain in [route.defaultDomain(base: baseDomain)] + routedCustomDomains(of: route, unverified: unverified) {
                byDomain[domain, default: []].append(route)
            }
        }
        return byDomain.keys.sorted().map { domain in
            (domain, byDomain[domain]!.sorted { ($0.pathPrefix.count, $0.key) > ($1.pathPrefix.count, $1.key) })
        }
    }
}

/// What the network service accepts from callers. Names and prefixes end up in nginx's configuration,
/// so each is held to a strict grammar: nothing that could close a directive or a block gets through.
public enum RouteValidation {
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    /// A lowercase DNS name: labels of a-z, 0-9 and '-', not starting or ending with '-', at most 63
    /// bytes each and 253 in all, at least two labels. `*.` may start it when wildcards are allowed.
    public static func domain(_ value: String, field: String, wildcard: Bool = false) throws(Invalid) {
        guard InputGrammar.isDomainName(value, wildcard: wildcard) else {
            throw Invalid(description: "\(field) \"\(value)\" is not a lowercase DNS name (labels of a-z, 0-9 and '-', dot-separated, e.g. app.example.com)")
        }
    }

    public static func label(_ value: String, field: String) throws(Invalid) {
        guard InputGrammar.isDNSLabel(value) else {
            throw Invalid(description: "\(field) \"\(value)\" must be a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'")
        }
    }

    /// "/" or segments of A-Z a-z 0-9 - . _ ~ separated by '/'; returned without a trailing slash.
    public static func pathPrefix(_ value: String) throws(Invalid) -> String {
        if value.isEmpty || value == "/" { return "/" }
        let trimmed = value.hasSuffix("/") ? String(value.dropLast()) : value
        let allowed = trimmed.utf8.allSatisfy {
            ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || "-._~/".utf8.contains($0)
        }
        guard trimmed.hasPrefix("/"), allowed, !trimmed.contains("//"), trimmed.utf8.count <= 200 else {
            throw Invalid(description: "path_prefix \"\(value)\" must start with '/' and hold only letters, digits, '-', '.', '_', '~' and single '/' (at most 200 bytes)")
        }
        return trimmed
    }

    /// HOST:PORT with an IPv4 address, a bracketed IPv6 address or a DNS name.
    public static func backend(_ value: String) throws(Invalid) {
        let invalid = Invalid(description: "address \"\(value)\" must be HOST:PORT (IPv4, [IPv6] or a DNS name, port 1-65535)")
        guard !value.hasPrefix(":"), let address = ServiceAddress(parsing: value), address.port >= 1 else { throw invalid }
        let host = address.host
        if value.hasPrefix("[") {
            guard host.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) || ($0 >= 65 && $0 <= 70) || $0 == 58 || $0 == 46 }),
                  !host.isEmpty else { throw invalid }
            return
        }
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        guard !labels.isEmpty, labels.allSatisfy(InputGrammar.isDNSLabel) else { throw invalid }
    }

    /// RFC 8555 tokens and key authorizations are base64url (plus '.' between the two halves).
    public static func challenge(token: String, keyAuthorization: String) throws(Invalid) {
        func base64url(_ s: String, dot: Bool) -> Bool {
            !s.isEmpty && s.utf8.count <= 512 && s.utf8.allSatisfy {
                ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 95 || (dot && $0 == 46)
            }
        }
        guard base64url(token, dot: false) else { throw Invalid(description: "token must be 1 to 512 base64url characters (RFC 8555 §8.3)") }
        guard keyAuthorization.isEmpty || base64url(keyAuthorization, dot: true) else {
            throw Invalid(description: "key_authorization must be base64url characters and '.' (token.thumbprint)")
        }
    }
}
