import Crypto
import Foundation
import SlipwayProtos
import SlipwayRPC
import Synchronization

typealias Role = Slipway_Api_V1_Role

/// Who makes a call: a valid, unrevoked token, with its scope and role.
struct Principal: Sendable, Equatable {
    var tokenID: String
    var name: String
    /// Empty: the platform (the bootstrap token).
    var organizationID: String
    /// Set: one project of the organization.
    var projectID: String
    var role: Role
    var rateLimit: UInt32

    var isPlatform: Bool { organizationID.isEmpty }

    /// Whether the principal may see something of this organization (a project token: its project).
    func sees(organizationID org: String) -> Bool { isPlatform || org == organizationID }

    /// Whether the principal may see or act on objects of this organization / project.
    func covers(organizationID org: String, projectID project: String? = nil) -> Bool {
        if isPlatform { return true }
        guard org == organizationID else { return false }
        if projectID.isEmpty { return true }
        return project == projectID
    }

    func require(_ needed: Role, _ what: @autoclosure () -> String) throws(RPCError) {
        guard role.rawValue >= needed.rawValue else {
            throw RPCError(.permissionDenied, "token \"\(name)\" has role \(role.protoName) but \(what()) needs \(needed.protoName) or above")
        }
    }
}

/// API tokens: `slw_<id>_<secret>`. Only SHA-256 of the secret is stored; the secret is compared in
/// constant time. Each token has a request rate (token bucket, bursts up to twice the rate) and a
/// number of open streams.
final class Authenticator: Sendable {
    let store: GatewayStore
    let defaultRateLimit: UInt32
    let maxStreamsPerToken: Int
    /// Open streams of all of an organization's tokens together (the platform's own token has none).
    let maxStreamsPerOrganization: Int
    private let state = Mutex(State())

    private struct State {
        var buckets: [String: Bucket] = [:]
        var streams: [String: Int] = [:]
        var organizationStreams: [String: Int] = [:]
    }

    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    init(store: GatewayStore, defaultRateLimit: UInt32, maxStreamsPerToken: Int, maxStreamsPerOrganization: Int = 256) {
        self.store = store
        self.defaultRateLimit = defaultRateLimit
        self.maxStreamsPerToken = maxStreamsPerToken
        self.maxStreamsPerOrganization = maxStreamsPerOrganization
    }

    static let prefix = "slw_"

    /// A new token's id, its full secret text, and the hash to store.
    static func newSecret() -> (id: String, text: String, hash: String) {
        let id = randomHex(6)
        var generator = SystemRandomNumberGenerator()
        let secret = Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return (id, "\(prefix)\(id)_\(secret)", hash(secret))
    }

    static func hash(_ secret: String) -> String {
        SHA256.hash(data: Data(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The principal of a bearer token, or UNAUTHENTICATED saying what is wrong.
    func authenticate(bearer header: String?) throws(RPCError) -> Principal {
        guard let header, !header.isEmpty else {
            throw RPCError(.unauthenticated, "no API token: send `authorization: Bearer slw_...` (slipway up writes the admin token to <data-dir>/gateway/admin-token)")
        }
        var text = header
        if text.lowercased().hasPrefix("bearer ") { text = String(text.dropFirst(7)).trimmingCharacters(in: .whitespaces) }
        return try authenticate(token: text)
    }

    func authenticate(token text: String) throws(RPCError) -> Principal {
        let parts = text.split(separator: "_", maxSplits: 2, omittingEmptySubsequences: false)
        guard text.hasPrefix(Self.prefix), parts.count == 3, parts[1].count == 12, !parts[2].isEmpty, text.utf8.count <= 200 else {
            throw RPCError(.unauthenticated, "the API token is malformed (expected slw_<id>_<secret>)")
        }
        let id = String(parts[1])
        // Read on every call (an indexed SQLite read): a revoked token stops at once, with no cache to race.
        let record: GatewayStore.TokenRecord?
        do { record = try store.token(id: id) } catch { throw RPCError(.unavailable, "cannot read tokens: \(error)") }
        guard let record, Self.constantTimeEqual(Self.hash(String(parts[2])), record.secretHash) else {
            throw RPCError(.unauthenticated, "the API token is not valid (unknown id or wrong secret)")
        }
        guard record.revokedAt == 0 else {
            throw RPCError(.unauthenticated, "the API token \"\(record.name)\" was revoked; create a new one (slipway token create)")
        }
        return Principal(
            tokenID: record.id, name: record.name, organizationID: record.organizationID, projectID: record.projectID,
            role: Role(rawValue: record.role), rateLimit: record.rateLimit == 0 ? defaultRateLimit : record.rateLimit)
    }

    /// Takes one request from the token's bucket, or RESOURCE_EXHAUSTED with when to retry.
    func admit(_ principal: Principal, now: ContinuousClock.Instant = .now) throws(RPCError) {
        let rate = Double(principal.rateLimit)
        let wait: Double? = state.withLock { state in
            var bucket = state.buckets[principal.tokenID] ?? Bucket(tokens: rate * 2, updated: now)
            let elapsed = Double((now - bucket.updated).components.attoseconds) / 1e18 + Double((now - bucket.updated).components.seconds)
            bucket.tokens = min(rate * 2, bucket.tokens + max(0, elapsed) * rate)
            bucket.updated = now
            defer { state.buckets[principal.tokenID] = bucket }
            if bucket.tokens >= 1 {
                bucket.tokens -= 1
                return nil
            }
            return (1 - bucket.tokens) / rate
        }
        if let wait {
            throw RPCError(
                .resourceExhausted,
                "rate limit of \(principal.rateLimit) requests/s for token \"\(principal.name)\" reached; retry in \(Int((wait * 1000).rounded(.up))) ms",
                metadata: ["retry-after-ms": String(Int((wait * 1000).rounded(.up)))])
        }
    }

    /// Counts an open stream of the token and of its organization; the returned closure gives it back.
    func openStream(_ principal: Principal) throws(RPCError) -> @Sendable () -> Void {
        let limit = maxStreamsPerToken
        let organizationLimit = maxStreamsPerOrganization
        let organization = principal.organizationID
        let refusal = state.withLock { state -> String? in
            let open = state.streams[principal.tokenID, default: 0]
            guard open < limit else { return "token \"\(principal.name)\" already has \(limit) open streams (the limit); close one first" }
            if !organization.isEmpty {
                let together = state.organizationStreams[organization, default: 0]
                guard together < organizationLimit else {
                    return "organization \(organization) already has \(organizationLimit) open streams over all its tokens (its quota, --gateway-max-streams-per-organization); close one first"
                }
                state.organizationStreams[organization] = together + 1
            }
            state.streams[principal.tokenID] = open + 1
            return nil
        }
        if let refusal { throw RPCError(.resourceExhausted, refusal) }
        let id = principal.tokenID
        let done = Mutex(false)
        return { [self] in
            guard done.withLock({ let was = $0; $0 = true; return !was }) else { return }
            state.withLock { state in
                let open = state.streams[id, default: 1] - 1
                state.streams[id] = open > 0 ? open : nil
                if !organization.isEmpty {
                    let together = state.organizationStreams[organization, default: 1] - 1
                    state.organizationStreams[organization] = together > 0 ? together : nil
                }
            }
        }
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}

func randomHex(_ bytes: Int) -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
}

func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
