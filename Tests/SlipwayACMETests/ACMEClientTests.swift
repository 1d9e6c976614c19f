import Crypto
import Foundation
import Logging
import SlipwayACME
import SlipwayHTTP
import SwiftASN1
import Testing
import X509

/// The client against a real pebble, validating HTTP-01 over real HTTP through challtestsrv's DNS.
@Suite struct ACMEClientTests {
    static let contact = ["mailto:ops@example.test"]

    @Test func issuesACertificateThroughRealHTTP01() async throws {
        try await TestPebble.run { pebble in
            let client = pebble.client(P256.Signing.PrivateKey())
            let account = try await client.register(contact: Self.contact, termsOfServiceAgreed: true)
            #expect(try await client.register(contact: Self.contact, termsOfServiceAgreed: true) == account, "the same key finds the same account")

            let certificateKey = P256.Signing.PrivateKey()
            let domains = ["app.example.test", "www.example.test"]
            let issued = try await client.issue(domains: domains, certificateKey: certificateKey, challengeResponder: StoreResponder(store: pebble.challenges))

            // The PEM chain parses on its own: leaf, then pebble's intermediate.
            let chain = try PEMDocument.parseMultiple(pemString: issued.pemChain).map { try Certificate(derEncoded: $0.derBytes) }
            #expect(chain.count == 2)
            #expect(chain == issued.chain)
            let leaf = try #require(chain.first)
            let names = try #require(try leaf.extensions.subjectAlternativeNames)
            #expect(Set(names) == Set(domains.map { GeneralName.dnsName($0) }))
            #expect(leaf.publicKey == Certificate.PublicKey(certificateKey.publicKey))
            #expect(issued.notBefore == leaf.notValidBefore && issued.notAfter == leaf.notValidAfter && issued.notBefore < issued.notAfter)
            #expect(issued.renewalDate == ACMEClient.renewalDate(notBefore: issued.notBefore, notAfter: issued.notAfter))
            #expect(issued.certificateURL.host == "127.0.0.1")

            // It chains to pebble's own CA, as its management interface publishes it.
            let intermediate = try await pebble.intermediate()
            let root = try await pebble.root()
            #expect(chain[1] == intermediate)
            #expect(leaf.issuer == intermediate.subject)
            #expect(intermediate.publicKey.isValidSignature(leaf.signature, for: leaf))
            var verifier = Verifier(rootCertificates: CertificateStore([root])) {
                RFC5280Policy()
                ServerIdentityPolicy(serverHostname: "www.example.test", serverIP: nil)
            }
            let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore([intermediate]))
            guard case .validCertificate(let validated) = result else {
                Issue.record("the leaf does not verify up to pebble's root: \(result)")
                return
            }
            #expect(Array(validated) == [leaf, intermediate, root])
            // Negative controls: without pebble's root, or for a name the certificate lacks, verification fails.
            var noRoot = Verifier(rootCertificates: CertificateStore()) { RFC5280Policy() }
            guard case .couldNotValidate = await noRoot.validate(leaf: leaf, intermediates: CertificateStore([intermediate])) else {
                Issue.record("the leaf verified without pebble's root")
                return
            }
            var wrongName = Verifier(rootCertificates: CertificateStore([root])) {
                RFC5280Policy()
                ServerIdentityPolicy(serverHostname: "other.example.test", serverIP: nil)
            }
            guard case .couldNotValidate = await wrongName.validate(leaf: leaf, intermediates: CertificateStore([intermediate])) else {
                Issue.record("a certificate for app/www.example.test verified for other.example.test")
                return
            }

            // pebble really fetched each token, by name, from the challenge server; every token was cleaned up.
            let presented = pebble.challenges.presented
            #expect(presented.count == 2)
            for token in presented {
                let fetches = pebble.challengeServer.requests.filter { $0.path == "/.well-known/acme-challenge/\(token)" }
                #expect(!fetches.isEmpty, "pebble never fetched token \(token)")
            }
            let hosts = Set(pebble.challengeServer.requests.compactMap { $0.headers["host"]?.split(separator: ":").first.map(String.init) })
            #expect(hosts == Set(domains))
            #expect(Set(pebble.challenges.cleanedUp) == Set(presented))
            #expect(pebble.challenges.served.isEmpty)
        }
    }

    @Test func failedChallengesSayWhichDomainAndWhatTheCASaw() async throws {
        try await TestPebble.run { pebble in
            let client = pebble.client(P256.Signing.PrivateKey())
            try await client.register(contact: Self.contact, termsOfServiceAgreed: true)

            // Nothing served: the challenge server answers 404.
            let missing = try await #require(throws: ACMEError.self) {
                try await client.issue(domains: ["missing.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: pebble.challenges, mode: .nothing))
            }
            #expect(missing.code == .challengeFailed)
            #expect(missing.problem?.shortType == "unauthorized")
            #expect(missing.message.hasPrefix("http-01 challenge for missing.example.test failed: "), "\(missing.message)")
            // pebble: "Non-200 status code from HTTP: http://missing.example.test:PORT/.well-known/acme-challenge/TOKEN returned 404".
            #expect(missing.message.contains("returned 404") && missing.message.contains("/.well-known/acme-challenge/"), "\(missing.message)")

            // The wrong body: pebble quotes what it got.
            let wrong = try await #require(throws: ACMEError.self) {
                try await client.issue(domains: ["wrong.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: pebble.challenges, mode: .wrongContent))
            }
            #expect(wrong.code == .challengeFailed)
            #expect(wrong.message.hasPrefix("http-01 challenge for wrong.example.test failed: "), "\(wrong.message)")
            #expect(wrong.message.contains("not-the-key-authorization"), "\(wrong.message)")

            // Nobody listening: the name resolves to 127.0.0.2, where nothing serves the challenge port.
            try await pebble.setAddress("127.0.0.2", for: "down.example.test")
            let down = try await #require(throws: ACMEError.self) {
                try await client.issue(domains: ["down.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: pebble.challenges))
            }
            #expect(down.code == .challengeFailed)
            #expect(down.message.hasPrefix("http-01 challenge for down.example.test failed: "), "\(down.message)")
            // pebble: `Get "http://down.example.test:PORT/…": dial tcp 127.0.0.2:PORT: connect: connection refused`.
            #expect(down.message.contains("127.0.0.2") && down.message.contains("connection refused"), "\(down.message)")
            #expect(down.problem?.shortType == "connection")

            // Every token presented was cleaned up, failures included.
            #expect(pebble.challenges.presented.count == 3)
            #expect(Set(pebble.challenges.cleanedUp) == Set(pebble.challenges.presented))
            #expect(pebble.challenges.served.isEmpty)
        }
    }

    @Test func keyRolloverMovesTheAccountToTheNewKey() async throws {
        try await TestPebble.run { pebble in
            let oldKey = P256.Signing.PrivateKey()
            let newKey = P256.Signing.PrivateKey()
            let client = pebble.client(oldKey)
            let account = try await client.register(contact: Self.contact, termsOfServiceAgreed: true)

            try await client.rolloverKey(to: newKey)

            // The client now signs with the new key, and issuance works: pebble checks the key authorization
            // against the account's current key, so the validation passing means it used the new key's thumbprint.
            let issued = try await client.issue(domains: ["rolled.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: pebble.challenges))
            #expect(try issued.leaf.extensions.subjectAlternativeNames.map(Array.init) == [.dnsName("rolled.example.test")])

            // The new key finds the account.
            #expect(try await pebble.client(newKey).register(contact: Self.contact, termsOfServiceAgreed: true) == account)

            // The old key is refused for the account...
            let stale = pebble.client(oldKey, accountURL: account)
            let refused = try await #require(throws: ACMEError.self) {
                try await stale.issue(domains: ["stale.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: pebble.challenges))
            }
            // pebble: "400 malformed: JWS verification error: square/go-jose: error in cryptographic primitive".
            #expect(refused.code == .server)
            #expect(refused.problem?.shortType == "malformed" && refused.message.contains("JWS verification error"), "\(refused.message)")
            // ...and registering it makes a different account.
            let other = try await pebble.client(oldKey).register(contact: Self.contact, termsOfServiceAgreed: true)
            #expect(other != account)
        }
    }

    @Test func revocationIsRecordedByTheCA() async throws {
        try await TestPebble.run { pebble in
            let client = pebble.client(P256.Signing.PrivateKey())
            try await client.register(contact: Self.contact, termsOfServiceAgreed: true)
            let issued = try await client.issue(domains: ["revoked.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: pebble.challenges))
            #expect(try await pebble.certificateStatus(serial: issued.leaf.serialNumber) == "Valid")

            var serializer = DER.Serializer()
            try serializer.serialize(issued.leaf)
            try await client.revoke(certificateDER: serializer.serializedBytes, reason: .keyCompromise)
            #expect(try await pebble.certificateStatus(serial: issued.leaf.serialNumber) == "Revoked")

            let again = try await #require(throws: ACMEError.self) {
                try await client.revoke(certificateDER: serializer.serializedBytes, reason: .keyCompromise)
            }
            #expect(again.problem?.shortType == "alreadyRevoked", "\(again.message)")
        }
    }

    @Test func badNonceIsRetriedOnceThenReported() async throws {
        // PEBBLE_WFE_NONCEREJECT=100: pebble refuses every nonce, so the one retry fails too.
        try await TestPebble.run(environment: ["PEBBLE_WFE_NONCEREJECT": "100"]) { pebble in
            let recorder = LogRecorder()
            let client = pebble.client(P256.Signing.PrivateKey(), logger: recorder.logger())
            let error = try await #require(throws: ACMEError.self) {
                try await client.register(contact: Self.contact, termsOfServiceAgreed: true)
            }
            #expect(error.problem?.shortType == "badNonce")
            #expect(recorder.messages.filter { $0.contains("refused the nonce") }.count == 1)
        }
    }

    @Test func issuingBeforeRegisteringSaysWhatToDo() async throws {
        let client = ACMEClient(directoryURL: URL(string: "https://127.0.0.1:1/dir")!, accountKey: P256.Signing.PrivateKey(), httpClient: HTTPClient(), logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        let error = try await #require(throws: ACMEError.self) {
            try await client.issue(domains: ["app.example.test"], certificateKey: P256.Signing.PrivateKey(), challengeResponder: StoreResponder(store: ChallengeStore()))
        }
        #expect(error.code == .invalidRequest)
        #expect(error.message.contains("register(contact:termsOfServiceAgreed:)"))
    }
}
