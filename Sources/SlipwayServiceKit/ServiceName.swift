import SlipwayRPC

/// The seven platform services, in port order (gateway on 7000 through logs on 7006).
public enum ServiceName: String, Sendable, CaseIterable {
    case gateway, pipeline, builder, network, cluster, certs, logs

    /// The executable's name, e.g. `slipway-gateway`.
    public var executable: String { "slipway-\(rawValue)" }

    /// The default loopback port: 7000 + position.
    public var defaultPort: Int { 7000 + ServiceName.allCases.firstIndex(of: self)! }

    /// The environment variable overriding where it listens (and where the others reach it).
    public var listenVariable: String { "SLIPWAY_\(rawValue.uppercased())_LISTEN" }
}

/// Where each service listens: defaults, then `SLIPWAY_<NAME>_LISTEN`, then flags.
public struct ServiceDirectory: Sendable {
    public private(set) var addresses: [ServiceName: ServiceAddress]

    /// Defaults overridden by the environment.
    public init(environment: [String: String]) throws(ConfigurationError) {
        var addresses: [ServiceName: ServiceAddress] = [:]
        for name in ServiceName.allCases {
            if let value = environment[name.listenVariable] {
                guard let address = ServiceAddress(parsing: value) else {
                    throw ConfigurationError("\(name.listenVariable)=\(value) is not HOST:PORT (for example 127.0.0.1:\(name.defaultPort))")
                }
                addresses[name] = address
            } else {
                addresses[name] = ServiceAddress(host: "127.0.0.1", port: name.defaultPort)
            }
        }
        self.addresses = addresses
    }

    public subscript(_ name: ServiceName) -> ServiceAddress {
        get { addresses[name]! }
        set { addresses[name] = newValue }
    }
}

/// Configuration a person must fix: the message says what and how.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
