import SlipwayProtos
import SlipwayRPC

/// A validated stream: a deployment's logs or a service's application logs, within an environment.
struct StreamID: Hashable, Sendable, CustomStringConvertible {
    enum Kind: String, Sendable { case deployment = "d", application = "a" }

    let kind: Kind
    let environment: String
    /// The deployment id or the service id.
    let name: String

    /// Validates a request's key; the error names the field to fix.
    init(_ key: Slipway_Logs_V1_StreamKey?) throws(RPCError) {
        guard let key else { throw RPCError(.invalidArgument, "stream is required: set environment_id and deployment_id or service_id") }
        try Self.check(key.environmentId, field: "stream.environment_id")
        switch (key.deploymentId.isEmpty, key.serviceId.isEmpty) {
        case (false, true):
            try Self.check(key.deploymentId, field: "stream.deployment_id")
            self.init(uncheckedKind: .deployment, environment: key.environmentId, name: key.deploymentId)
        case (true, false):
            try Self.check(key.serviceId, field: "stream.service_id")
            self.init(uncheckedKind: .application, environment: key.environmentId, name: key.serviceId)
        case (false, false):
            throw RPCError(.invalidArgument, "stream sets both deployment_id and service_id: a stream is a deployment's logs or a service's, not both")
        case (true, true):
            throw RPCError(.invalidArgument, "stream sets neither deployment_id nor service_id")
        }
    }

    /// A key validated field by field (for selectors that are not a single stream).
    init(kind: Kind, environment: String, name: String) throws(RPCError) {
        try Self.check(environment, field: "stream.environment_id")
        try Self.check(name, field: kind == .deployment ? "stream.deployment_id" : "stream.service_id")
        self.init(uncheckedKind: kind, environment: environment, name: name)
    }

    init(uncheckedKind kind: Kind, environment: String, name: String) {
        self.kind = kind
        self.environment = environment
        self.name = name
    }

    /// Parses a directory name written by ``directoryName``.
    init?(directoryName: String) {
        let parts = directoryName.split(separator: "_", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let kind = Kind(rawValue: String(parts[0])) else { return nil }
        self.init(uncheckedKind: kind, environment: String(parts[1]).replacingOccurrences(of: "%5F", with: "_"), name: String(parts[2]))
    }

    /// `d_<environment>_<deployment>` or `a_<environment>_<service>`. Ids may contain `_` (never `%`),
    /// so the environment part is escaped (`_` → `%5F`); the name is the remainder.
    var directoryName: String {
        "\(kind.rawValue)_\(environment.replacingOccurrences(of: "_", with: "%5F"))_\(name)"
    }

    var key: Slipway_Logs_V1_StreamKey {
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = environment
        switch kind {
        case .deployment: key.deploymentId = name
        case .application: key.serviceId = name
        }
        return key
    }

    var description: String { "\(kind == .deployment ? "deployment" : "service") \(name) of environment \(environment)" }

    private static func check(_ value: String, field: String) throws(RPCError) {
        guard !value.isEmpty else { throw RPCError(.invalidArgument, "\(field) is empty") }
        guard value.utf8.count <= 128 else { throw RPCError(.invalidArgument, "\(field) is longer than 128 characters") }
        let allowed = value.utf8.allSatisfy { c in
            (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "-") || c == UInt8(ascii: "_") || c == UInt8(ascii: ".")
        }
        guard allowed, value != ".", value != ".." else {
            throw RPCError(.invalidArgument, "\(field) \"\(value)\" may contain only letters, digits, '.', '_' and '-'")
        }
    }
}
