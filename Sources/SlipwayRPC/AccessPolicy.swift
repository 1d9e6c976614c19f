/// Which callers may call which methods of a server, by the identity their client certificate
/// names (``ServerContext/caller``). The server applies it before any handler runs: a method without
/// a rule is refused to everyone, so a method added without a rule cannot be called by accident.
///
/// ```swift
/// var policy = AccessPolicy()
/// policy.allow(["spiffe://slipway/gateway"], Slipway_Pipeline_V1_Pipeline.Deploy.path)
/// policy.allowAnyCaller(Grpc_Health_V1_Health.Check.path)
/// router.accessPolicy = policy
/// ```
public struct AccessPolicy: Sendable {
    public enum Rule: Sendable, Equatable {
        /// Any caller whose certificate the server accepted.
        case anyCaller
        /// Only these identities.
        case callers(Set<String>)
    }

    public private(set) var rules: [String: Rule] = [:]

    public init() {}

    /// Lets `callers` call the method at `path` (adding to callers already allowed).
    public mutating func allow(_ callers: some Sequence<String>, _ path: String) {
        switch rules[path] {
        case .anyCaller: return
        case .callers(let existing): rules[path] = .callers(existing.union(callers))
        case nil: rules[path] = .callers(Set(callers))
        }
    }

    /// Lets every authenticated caller call the method at `path`.
    public mutating func allowAnyCaller(_ path: String) {
        rules[path] = .anyCaller
    }

    /// Who may call `path`: nil when nobody may.
    public func rule(for path: String) -> Rule? { rules[path] }

    /// nil when `caller` may call `path`; otherwise the error the call ends with.
    public func decide(caller: String?, path: String) -> RPCError? {
        guard let caller else {
            return RPCError(.unauthenticated, "\(path) needs a platform client certificate, and this connection presented none")
        }
        switch rules[path] {
        case .anyCaller:
            return nil
        case .callers(let allowed) where allowed.contains(caller):
            return nil
        case .callers(let allowed):
            return RPCError(.permissionDenied, "\(caller) may not call \(path); it is for \(allowed.sorted().joined(separator: ", "))")
        case nil:
            return RPCError(.permissionDenied, "\(caller) may not call \(path): no caller may (the method has no row in the access table)")
        }
    }
}
