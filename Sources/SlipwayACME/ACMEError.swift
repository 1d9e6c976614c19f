import Foundation

/// An identifier in an order, authorization or problem (RFC 8555 §9.7.7): `dns` and a name, for us.
public struct ACMEIdentifier: Codable, Sendable, Hashable {
    /// `dns` (the only type this client orders).
    public var type: String
    /// The domain name.
    public var value: String

    /// An identifier of `type` for `value`.
    public init(type: String = "dns", value: String) {
        self.type = type
        self.value = value
    }
}

/// A problem document (RFC 7807, RFC 8555 §6.7): what the ACME server says went wrong.
public struct ACMEProblem: Codable, Sendable, Hashable, CustomStringConvertible {
    /// The error type URN, e.g. `urn:ietf:params:acme:error:badNonce`.
    public var type: String
    /// The server's explanation for a person.
    public var detail: String?
    /// The HTTP status the server gave with the problem.
    public var status: Int?
    /// The identifier a subproblem is about.
    public var identifier: ACMEIdentifier?
    /// Per-identifier problems of a compound failure (RFC 8555 §6.7.1).
    public var subproblems: [ACMEProblem]?

    /// A problem of `type` with `detail`.
    public init(type: String, detail: String? = nil, status: Int? = nil, identifier: ACMEIdentifier? = nil, subproblems: [ACMEProblem]? = nil) {
        self.type = type
        self.detail = detail
        self.status = status
        self.identifier = identifier
        self.subproblems = subproblems
    }

    static let acmePrefix = "urn:ietf:params:acme:error:"
    static let badNonce = acmePrefix + "badNonce"
    static let rateLimited = acmePrefix + "rateLimited"

    /// The type without the ACME URN prefix (`badNonce`), or the whole type for other namespaces.
    public var shortType: String {
        type.hasPrefix(Self.acmePrefix) ? String(type.dropFirst(Self.acmePrefix.count)) : type
    }

    /// "unauthorized: detail; app.example.test: rejectedIdentifier: detail".
    public var description: String {
        var text = shortType
        if let detail, !detail.isEmpty { text += ": " + detail }
        for subproblem in subproblems ?? [] {
            text += "; " + (subproblem.identifier.map { $0.value + ": " } ?? "") + subproblem.description
        }
        return text
    }
}

/// An ACME operation that failed: what failed in words a person can act on, the server's problem document
/// when there is one, and the underlying error.
public struct ACMEError: Error, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Sendable { case server, challengeFailed, orderFailed, timedOut, unexpectedResponse, transport, invalidRequest }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The server answered with an error (see `problem`).
        public static let server = Code(.server)
        /// The CA could not validate a challenge: `problem` holds what its validation saw.
        public static let challengeFailed = Code(.challengeFailed)
        /// The order became invalid (at finalization or issuance).
        public static let orderFailed = Code(.orderFailed)
        /// An authorization or order did not settle before the deadline.
        public static let timedOut = Code(.timedOut)
        /// The server answered in a way this client does not understand (missing header, bad JSON, bad certificate).
        public static let unexpectedResponse = Code(.unexpectedResponse)
        /// The server could not be reached or the connection failed (see `cause`).
        public static let transport = Code(.transport)
        /// The call cannot be made as asked (no account yet, no domains, a feature the server lacks).
        public static let invalidRequest = Code(.invalidRequest)

        /// The code's name, e.g. `challengeFailed`.
        public var description: String { value.rawValue }
    }

    /// What kind of failure this is.
    public var code: Code
    /// What failed, for a person: names the request, the domain and what the server said.
    public var message: String
    /// The server's problem document, when it sent one.
    public var problem: ACMEProblem?
    /// The error underneath (a connection failure, a decoding error).
    public var cause: (any Error)?

    /// An error of `code` with `message`.
    public init(_ code: Code, _ message: String, problem: ACMEProblem? = nil, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.problem = problem
        self.cause = cause
    }

    /// The message.
    public var description: String { message }
}
