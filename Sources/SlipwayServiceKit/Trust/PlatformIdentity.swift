/// Who a platform certificate says its holder is: one of the seven services, or the operator, named
/// in the certificate as the URI `spiffe://slipway/<name>`.
public struct PlatformIdentity: Hashable, Sendable, CustomStringConvertible, Comparable {
    /// The SPIFFE trust domain of every platform identity.
    public static let trustDomain = "slipway"
    /// Whoever runs `slipway` on the platform's machine with its data directory: every method, like
    /// a cluster administrator's credentials (`slipway pki issue operator`).
    public static let `operator` = PlatformIdentity(name: "operator")

    public let name: String

    public init(name: String) { self.name = name }
    public init(_ service: ServiceName) { self.name = service.rawValue }

    /// `spiffe://slipway/<name>`.
    public var uri: String { "spiffe://\(Self.trustDomain)/\(name)" }
    public var description: String { uri }

    /// The identity a `spiffe://slipway/<name>` URI names; nil for any other URI.
    public init?(uri: String) {
        let prefix = "spiffe://\(Self.trustDomain)/"
        guard uri.hasPrefix(prefix) else { return nil }
        let name = String(uri.dropFirst(prefix.count))
        guard Self.isValidName(name) else { return nil }
        self.name = name
    }

    /// The service this identity belongs to, if it is a service's.
    public var service: ServiceName? { ServiceName(rawValue: name) }

    /// The seven services and the operator: the only identities a platform server accepts.
    public static let known: [PlatformIdentity] = ServiceName.allCases.map(PlatformIdentity.init) + [.operator]
    public var isKnown: Bool { Self.known.contains(self) }

    /// The name a client verifies the server's certificate against (and sends as SNI), whatever
    /// address it connects to: `slipway-<name>`.
    public var serverName: String { "slipway-\(name)" }

    /// DNS names in the identity's certificate: the server name and its Kubernetes Service names in
    /// the `slipway` namespace.
    public var dnsNames: [String] {
        [serverName, "\(serverName).slipway.svc", "\(serverName).slipway.svc.cluster.local"]
    }

    /// Lower-case letters, digits and dashes, 1 to 63 characters (a DNS label).
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 63 && name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
            && name.first != "-" && name.last != "-"
    }

    public static func < (lhs: PlatformIdentity, rhs: PlatformIdentity) -> Bool { lhs.name < rhs.name }
}
