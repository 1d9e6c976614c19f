import Crypto
import Foundation
import SwiftASN1
import Testing
import X509

@testable import SlipwayACME

@Suite struct JWSTests {
    /// A fixed P-256 key: the scalar 0x0102…20.
    static var fixedKey: P256.Signing.PrivateKey { try! P256.Signing.PrivateKey(rawRepresentation: Array(1...32) as [UInt8]) }

    @Test func base64urlRoundTripsWithoutPadding() {
        #expect(Base64URL.encode([0xfb, 0xff]) == "-_8")  // base64 "+/8=": the URL-safe alphabet, no padding
        #expect(Base64URL.encode([]) == "")
        #expect(Base64URL.decode("-_8") == [0xfb, 0xff])
        #expect(Base64URL.decode("+/8=") == nil)
        for length in 0..<8 {
            let bytes = (0..<length).map { UInt8($0 * 37 & 0xff) }
            #expect(Base64URL.decode(Base64URL.encode(bytes)) == bytes)
        }
    }

    /// The expected values were computed once outside Swift, from the same scalar:
    ///
    ///     python3 -c 'from cryptography.hazmat.primitives.asymmetric import ec; import base64
    ///     n = ec.derive_private_key(int.from_bytes(bytes(range(1, 33)), "big"), ec.SECP256R1()).public_key().public_numbers()
    ///     print(*(base64.urlsafe_b64encode(v.to_bytes(32, "big")).rstrip(b"=").decode() for v in (n.x, n.y)))'
    ///     printf %s '{"crv":"P-256","kty":"EC","x":"…","y":"…"}' | openssl dgst -sha256 -binary | basenc --base64url | tr -d =
    @Test func jwkAndThumbprintMatchAnIndependentComputation() {
        let jwk = JWK(Self.fixedKey.publicKey)
        #expect(jwk.x == "UVw9brnjlrkE0_7Kf1T9zQzB6Ze_N13KUVrQpsO0A18")
        #expect(jwk.y == "RTa-OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1Q")
        #expect(jwk.canonicalJSON == #"{"crv":"P-256","kty":"EC","x":"UVw9brnjlrkE0_7Kf1T9zQzB6Ze_N13KUVrQpsO0A18","y":"RTa-OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1Q"}"#)
        #expect(jwk.thumbprint == "6UoWwDCkLjV0J-pQG8c0THxbVhBcpR0AZDift1Yl5DM")
    }

    @Test func keyAuthorizationIsTokenDotThumbprint() async {
        let client = ACMEClient(
            directoryURL: URL(string: "https://acme.invalid/dir")!, accountKey: Self.fixedKey,
            httpClient: .init(), logger: .init(label: "test")
        )
        #expect(await client.session.keyAuthorization(for: "tok3n") == "tok3n.6UoWwDCkLjV0J-pQG8c0THxbVhBcpR0AZDift1Yl5DM")
    }

    @Test func jwsWithJWKHasTheACMEHeaderAndVerifies() throws {
        let url = URL(string: "https://acme.example/new-account")!
        let payload = Array(#"{"termsOfServiceAgreed":true}"#.utf8)
        let jws = try JWS.sign(payload: payload, url: url, nonce: "n0nce", key: Self.fixedKey, keyIdentifier: .jwk(JWK(Self.fixedKey.publicKey)))

        // The protected header decoded by hand: exactly alg, jwk, nonce, url (RFC 8555 §6.2).
        let header = try #require(Base64URL.decode(jws.protected))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(header)) as? [String: Any])
        #expect(Set(object.keys) == ["alg", "jwk", "nonce", "url"])
        #expect(object["alg"] as? String == "ES256")
        #expect(object["nonce"] as? String == "n0nce")
        #expect(object["url"] as? String == "https://acme.example/new-account")
        let jwk = try #require(object["jwk"] as? [String: String])
        #expect(jwk == ["crv": "P-256", "kty": "EC", "x": "UVw9brnjlrkE0_7Kf1T9zQzB6Ze_N13KUVrQpsO0A18", "y": "RTa-OlDzGPv5pUdZAqIhUCvvDVfgjFOyzApW8X2fk1Q"])
        #expect(Base64URL.decode(jws.payload) == payload)

        // ES256 is R || S, 64 bytes, over "protected.payload".
        let signature = try #require(Base64URL.decode(jws.signature))
        #expect(signature.count == 64)
        let ecdsa = try P256.Signing.ECDSASignature(rawRepresentation: signature)
        #expect(Self.fixedKey.publicKey.isValidSignature(ecdsa, for: Data("\(jws.protected).\(jws.payload)".utf8)))
        #expect(jws.isValidSignature(for: Self.fixedKey.publicKey))
        #expect(!jws.isValidSignature(for: P256.Signing.PrivateKey().publicKey))

        // Tampering with the payload breaks the signature.
        var tampered = jws
        tampered.payload = Base64URL.encode(Array(#"{"termsOfServiceAgreed":false}"#.utf8))
        #expect(!tampered.isValidSignature(for: Self.fixedKey.publicKey))

        // The body is the flattened JSON serialization.
        let body = try #require(try JSONSerialization.jsonObject(with: Data(jws.encoded())) as? [String: String])
        #expect(Set(body.keys) == ["protected", "payload", "signature"])
    }

    @Test func jwsWithKidAndPostAsGet() throws {
        let account = URL(string: "https://acme.example/acct/17")!
        let jws = try JWS.sign(payload: nil, url: URL(string: "https://acme.example/authz/1")!, nonce: "n", key: Self.fixedKey, keyIdentifier: .kid(account))
        let header = try jws.header()
        #expect(header == JWS.Header(alg: "ES256", jwk: nil, kid: "https://acme.example/acct/17", nonce: "n", url: "https://acme.example/authz/1"))
        // POST-as-GET: the payload is the empty string, not "{}" or "null" (RFC 8555 §6.3).
        #expect(jws.payload == "")
        #expect(jws.isValidSignature(for: Self.fixedKey.publicKey))
    }

    @Test func csrCarriesTheNamesAndIsSignedByTheCertificateKey() throws {
        let key = P256.Signing.PrivateKey()
        let der = try ACMEClient.certificateSigningRequest(domains: ["app.example.test", "www.example.test"], key: key)
        let csr = try CertificateSigningRequest(derEncoded: der)
        #expect(csr.publicKey == Certificate.PublicKey(key.publicKey))
        #expect(csr.publicKey.isValidSignature(csr.signature, for: csr))
        let extensions = try #require(try csr.attributes.extensionRequest).extensions
        let names = try #require(try extensions.subjectAlternativeNames)
        #expect(Array(names) == [.dnsName("app.example.test"), .dnsName("www.example.test")])
        #expect(csr.subject.description.contains("app.example.test"))
    }
}
