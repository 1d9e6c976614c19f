import Foundation

// The JSON objects of RFC 8555 §7.1 this client reads and writes. URLs stay strings here and become `URL`s
// where they are used, so one odd URL fails the step that needs it with a clear message rather than the decode.

/// The directory (RFC 8555 §7.1.1): where each operation lives.
struct ACMEDirectory: Decodable, Sendable {
    var newNonce: String
    var newAccount: String
    var newOrder: String
    var revokeCert: String?
    var keyChange: String?
    var meta: Meta?

    struct Meta: Decodable, Sendable {
        var termsOfService: String?
        var externalAccountRequired: Bool?
    }
}

/// A resource with a status that is polled until it settles (authorizations and orders).
protocol ACMEStatusResource: Decodable, Sendable {
    var status: String { get }
}

/// An order (RFC 8555 §7.1.3).
struct ACMEOrder: ACMEStatusResource {
    var status: String
    var identifiers: [ACMEIdentifier]
    var authorizations: [String]
    var finalize: String
    var certificate: String?
    var error: ACMEProblem?
}

/// An authorization (RFC 8555 §7.1.4).
struct ACMEAuthorization: ACMEStatusResource {
    var status: String
    var identifier: ACMEIdentifier
    var challenges: [ACMEChallenge]
    var wildcard: Bool?
}

/// A challenge (RFC 8555 §7.1.5, §8).
struct ACMEChallenge: Decodable, Sendable {
    var type: String
    var url: String
    var status: String
    var token: String?
    var error: ACMEProblem?
}

/// newAccount's payload (RFC 8555 §7.3).
struct NewAccountRequest: Encodable {
    var contact: [String]
    var termsOfServiceAgreed: Bool
}

/// newOrder's payload (RFC 8555 §7.4).
struct NewOrderRequest: Encodable {
    var identifiers: [ACMEIdentifier]
}

/// finalize's payload (RFC 8555 §7.4): the CSR in DER, base64url.
struct FinalizeRequest: Encodable {
    var csr: String
}

/// The inner key-change payload (RFC 8555 §7.3.5).
struct KeyChangeRequest: Encodable {
    var account: String
    var oldKey: JWK
}

/// revokeCert's payload (RFC 8555 §7.6).
struct RevocationRequest: Encodable {
    var certificate: String
    var reason: Int?
}
