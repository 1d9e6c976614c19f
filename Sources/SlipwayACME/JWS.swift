import Crypto
import Foundation

/// Base64url without padding (RFC 7515 §2): how JWS parts, tokens, CSRs and certificates travel in ACME.
enum Base64URL {
    static func encode(_ bytes: some Sequence<UInt8>) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    /// Nil for anything that is not unpadded base64url.
    static func decode(_ string: String) -> [UInt8]? {
        guard string.utf8.allSatisfy(isAlphabet) else { return nil }
        var base64 = string.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        return Data(base64Encoded: base64).map { [UInt8]($0) }
    }

    /// True for the base64url alphabet (the only characters a challenge token may hold).
    static func isAlphabet(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }
}

/// A P-256 public key as a JSON Web Key (RFC 7517, RFC 7518 §6.2), the form ACME identifies account keys by.
struct JWK: Codable, Sendable, Hashable {
    var crv = "P-256"
    var kty = "EC"
    var x: String
    var y: String

    init(_ key: P256.Signing.PublicKey) {
        // rawRepresentation is the 32-byte X coordinate followed by the 32-byte Y coordinate.
        let raw = [UInt8](key.rawRepresentation)
        x = Base64URL.encode(raw[0..<32])
        y = Base64URL.encode(raw[32..<64])
    }

    /// RFC 7638 §3: the required members only, in lexicographic order, no whitespace. Written out by hand
    /// rather than left to an encoder's key ordering, because the thumbprint hashes these exact bytes.
    var canonicalJSON: String {
        #"{"crv":"\#(crv)","kty":"\#(kty)","x":"\#(x)","y":"\#(y)"}"#
    }

    /// The RFC 7638 thumbprint: base64url(SHA-256(canonical JSON)).
    var thumbprint: String {
        Base64URL.encode(SHA256.hash(data: Data(canonicalJSON.utf8)))
    }
}

/// A JWS in the flattened JSON serialization (RFC 7515 §7.2.2), signed with ES256: the body of every ACME POST.
struct JWS: Codable, Sendable {
    var protected: String
    var payload: String
    var signature: String

    /// How the signer names its key (RFC 8555 §6.2): a `jwk` for newAccount, revocation by certificate key and
    /// the inner key-change JWS; the account URL (`kid`) for everything else.
    enum KeyIdentifier: Sendable {
        case jwk(JWK)
        case kid(URL)
    }

    /// The protected header; optional members are left out when nil.
    struct Header: Codable, Sendable, Equatable {
        var alg: String
        var jwk: JWK?
        var kid: String?
        var nonce: String?
        var url: String
    }

    /// Signs `payload` (nil: POST-as-GET, an empty payload) for `url`. `nonce` is nil only for the inner key-change JWS.
    static func sign(payload: [UInt8]?, url: URL, nonce: String?, key: P256.Signing.PrivateKey, keyIdentifier: KeyIdentifier) throws -> JWS {
        var header = Header(alg: "ES256", nonce: nonce, url: url.absoluteString)
        switch keyIdentifier {
        case .jwk(let jwk): header.jwk = jwk
        case .kid(let account): header.kid = account.absoluteString
        }
        let protected = Base64URL.encode(try JSONCoding.encode(header))
        let encodedPayload = payload.map { Base64URL.encode($0) } ?? ""
        // ES256 (RFC 7518 §3.4): ECDSA P-256 over SHA-256 of "protected.payload", the signature as R || S (64 bytes), not DER.
        let signature = try key.signature(for: Data("\(protected).\(encodedPayload)".utf8))
        return JWS(protected: protected, payload: encodedPayload, signature: Base64URL.encode(signature.rawRepresentation))
    }

    /// The decoded protected header.
    func header() throws -> Header {
        guard let bytes = Base64URL.decode(protected) else { throw ACMEError(.unexpectedResponse, "the JWS protected header is not base64url") }
        return try JSONDecoder().decode(Header.self, from: Data(bytes))
    }

    /// True when the signature is a valid ES256 signature by `key`.
    func isValidSignature(for key: P256.Signing.PublicKey) -> Bool {
        guard let raw = Base64URL.decode(signature), let signature = try? P256.Signing.ECDSASignature(rawRepresentation: raw) else { return false }
        return key.isValidSignature(signature, for: Data("\(protected).\(payload)".utf8))
    }

    /// The JSON body sent to the server.
    func encoded() throws -> [UInt8] {
        try JSONCoding.encode(self)
    }
}

/// JSON as ACME clients send it: sorted keys (stable bodies for logs and tests), unescaped slashes in URLs.
enum JSONCoding {
    static func encode(_ value: some Encodable) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return [UInt8](try encoder.encode(value))
    }
}
