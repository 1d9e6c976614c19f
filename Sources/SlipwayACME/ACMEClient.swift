import Crypto
import Foundation
import Logging
import SlipwayHTTP
import X509

/// An ACME (RFC 8555) client for one account: registration, key rollover, HTTP-01 issuance and revocation.
///
/// Every request is a JWS signed with the account key (ES256). The client fetches the directory on first
/// use, keeps the latest `Replay-Nonce`, retries once when the server refuses a nonce (`badNonce`), and
/// retries 5xx and `rateLimited` answers with backoff that honours `Retry-After`, within
/// ``Configuration/maxAttempts`` and ``Configuration/requestDeadline``. Connection failures of unsigned
/// requests (directory, newNonce) are retried the same way; a signed POST that fails to connect is not.
///
/// ```swift
/// let client = ACMEClient(directoryURL: URL(string: "https://acme-v02.api.letsencrypt.org/directory")!,
///                         accountKey: accountKey, httpClient: HTTPClient(), logger: logger)
/// try await client.register(contact: ["mailto:ops@example.com"], termsOfServiceAgreed: true)
/// let certificateKey = P256.Signing.PrivateKey()
/// let issued = try await client.issue(domains: ["app.example.com"], certificateKey: certificateKey,
///                                     challengeResponder: responder)
/// // install issued.pemChain with certificateKey; renew after issued.renewalDate
/// ```
public final class ACMEClient: Sendable {
    // A class in front of an actor, not an actor: swift-crypto 3's keys are immutable but not `Sendable`, so an
    // actor's initializer or method could only take them as `sending` and the caller could not use them again
    // (to install the certificate key, to store the new account key). Here the init keeps the key's scalar and
    // the key-taking methods are `nonisolated(nonsending)`: they run in the caller's isolation and hand only
    // Sendable values (the scalar, the CSR, the public key) to the session actor.

    /// Retry, backoff and polling bounds.
    public struct Configuration: Sendable {
        /// Attempts per request on 5xx and `rateLimited` answers, the first one included.
        public var maxAttempts = 4
        /// The wait before the first retry when the server sends no `Retry-After`; doubles on each retry.
        public var initialBackoff: Duration = .seconds(1)
        /// The longest wait between two retries when the server sends no `Retry-After`.
        public var maxBackoff: Duration = .seconds(30)
        /// The longest one request may take with its retries; a `Retry-After` that reaches past it fails at once.
        public var requestDeadline: Duration = .seconds(120)
        /// The first wait between polls of an authorization or order that sends no `Retry-After`; it grows to 8×.
        public var pollInterval: Duration = .seconds(1)
        /// How long an authorization or order may take to become valid or invalid.
        public var pollTimeout: Duration = .seconds(300)

        /// The defaults: 4 attempts, 1 s backoff doubling to 30 s, 2 min per request, polls from 1 s, 5 min per poll.
        public init() {}
    }

    let session: ACMESession

    /// A client for the CA at `directoryURL` acting for the account of `accountKey`.
    ///
    /// - Parameter accountURL: the account URL from an earlier ``register(contact:termsOfServiceAgreed:)``
    ///   (stored by the caller), so a restarted service need not register again.
    public init(
        directoryURL: URL,
        accountKey: P256.Signing.PrivateKey,
        accountURL: URL? = nil,
        httpClient: HTTPClient,
        logger: Logger,
        configuration: Configuration = Configuration()
    ) {
        session = ACMESession(
            directoryURL: directoryURL, accountKeyScalar: accountKey.rawRepresentation, accountURL: accountURL,
            httpClient: httpClient, logger: logger, configuration: configuration
        )
    }

    /// The account URL (`kid`), known after ``register(contact:termsOfServiceAgreed:)`` or given at creation.
    public var accountURL: URL? {
        get async { await session.accountURL }
    }

    /// Creates the account for the account key, or finds the one it already has; returns the account URL.
    ///
    /// - Parameters:
    ///   - contact: URLs the CA may write to, e.g. `mailto:ops@example.com`.
    ///   - termsOfServiceAgreed: whether the operator agreed to the CA's terms (most CAs require `true`).
    @discardableResult
    public func register(contact: [String], termsOfServiceAgreed: Bool) async throws -> URL {
        try await session.register(contact: contact, termsOfServiceAgreed: termsOfServiceAgreed)
    }

    /// Replaces the account key with `newKey` (RFC 8555 §7.3.5); afterwards this client signs with `newKey`
    /// and the old key no longer speaks for the account.
    nonisolated(nonsending) public func rolloverKey(to newKey: P256.Signing.PrivateKey) async throws {
        try await session.rolloverKey(toScalar: newKey.rawRepresentation)
    }

    /// Orders a certificate for `domains`, proves control of each with HTTP-01, and downloads the chain.
    ///
    /// For each authorization the CA still needs, `challengeResponder` serves the key authorization at
    /// `http://<domain>/.well-known/acme-challenge/<token>`; every token presented is cleaned up afterwards,
    /// whatever the outcome. The CSR carries the names as subjectAltNames and is signed by `certificateKey`,
    /// whose public key the certificate certifies.
    ///
    /// - Throws: ``ACMEError`` with code `challengeFailed` naming the domain and what the CA saw when a
    ///   validation fails, `orderFailed` when the CA refuses to issue, `timedOut` past ``Configuration/pollTimeout``.
    nonisolated(nonsending) public func issue(
        domains: [String],
        certificateKey: P256.Signing.PrivateKey,
        challengeResponder: some ACMEChallengeResponder
    ) async throws -> IssuedCertificate {
        guard !domains.isEmpty else { throw ACMEError(.invalidRequest, "a certificate needs at least one domain") }
        let csr = try Self.certificateSigningRequest(domains: domains, key: certificateKey)
        return try await session.issue(domains: domains, csr: csr, publicKey: Certificate.PublicKey(certificateKey.publicKey), challengeResponder: challengeResponder)
    }

    /// Revokes a certificate this account holds (RFC 8555 §7.6); `certificateDER` is the leaf in DER.
    public func revoke(certificateDER: [UInt8], reason: ACMERevocationReason? = nil) async throws {
        try await session.revoke(certificateDER: certificateDER, reason: reason)
    }

    /// When to renew a certificate valid from `notBefore` to `notAfter`: two thirds into its lifetime
    /// (day 60 of a 90-day certificate), which leaves a third of it to retry a failing renewal.
    public static func renewalDate(notBefore: Date, notAfter: Date) -> Date {
        notBefore.addingTimeInterval(notAfter.timeIntervalSince(notBefore) * 2 / 3)
    }
}
