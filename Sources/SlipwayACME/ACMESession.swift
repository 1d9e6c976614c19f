import Crypto
import Foundation
import Logging
import NIOHTTP1
import SlipwayHTTP

/// The state and protocol machinery behind an ``ACMEClient``: the directory, the nonce, the account URL and
/// key, signed requests with their retries. An actor, so concurrent calls share one nonce supply and account.
actor ACMESession {
    /// The account URL (`kid`), once registered or given.
    private(set) var accountURL: URL?

    let directoryURL: URL
    // The key's raw scalar: swift-crypto 3's keys are not `Sendable` (see ACMEClient).
    private var accountKeyScalar: Data
    let http: HTTPClient
    var logger: Logger
    let configuration: ACMEClient.Configuration
    private var cachedDirectory: ACMEDirectory?
    private var nonce: String?

    init(directoryURL: URL, accountKeyScalar: Data, accountURL: URL?, httpClient: HTTPClient, logger: Logger, configuration: ACMEClient.Configuration) {
        self.directoryURL = directoryURL
        self.accountKeyScalar = accountKeyScalar
        self.accountURL = accountURL
        self.http = httpClient
        self.logger = logger
        self.configuration = configuration
        self.logger[metadataKey: "acme.directory"] = "\(directoryURL.absoluteString)"
    }

    // MARK: Account

    /// newAccount (RFC 8555 §7.3): creates the account or finds the key's existing one.
    func register(contact: [String], termsOfServiceAgreed: Bool) async throws -> URL {
        let directory = try await directory()
        let endpoint = try url(directory.newAccount, "the directory's newAccount")
        let payload = try JSONCoding.encode(NewAccountRequest(contact: contact, termsOfServiceAgreed: termsOfServiceAgreed))
        // newAccount is the one request signed with the key itself (`jwk`): there is no account URL yet.
        let response = try await post(endpoint, payload: payload, signer: .jwk)
        let account = try location(of: response, from: "newAccount")
        accountURL = account
        logger[metadataKey: "acme.account"] = "\(account.absoluteString)"
        logger.info(response.status == 201 ? "created ACME account" : "found existing ACME account")
        return account
    }

    /// keyChange (RFC 8555 §7.3.5): the inner JWS, signed by the new key and naming it by `jwk`, says which
    /// account and old key it replaces; the outer JWS is an ordinary account request signed by the old key.
    func rolloverKey(toScalar scalar: Data) async throws {
        let newKey = try P256.Signing.PrivateKey(rawRepresentation: scalar)
        let account = try requireAccount("roll over the account key")
        let directory = try await directory()
        guard let keyChange = directory.keyChange else {
            throw ACMEError(.invalidRequest, "the ACME server at \(directoryURL.absoluteString) does not offer key rollover (no keyChange in its directory)")
        }
        let endpoint = try url(keyChange, "the directory's keyChange")
        let inner = try JWS.sign(
            payload: try JSONCoding.encode(KeyChangeRequest(account: account.absoluteString, oldKey: JWK(accountKey.publicKey))),
            url: endpoint,
            nonce: nil,
            key: newKey,
            keyIdentifier: .jwk(JWK(newKey.publicKey))
        )
        _ = try await post(endpoint, payload: try inner.encoded())
        accountKeyScalar = scalar
        logger.info("rolled over the ACME account key", metadata: ["acme.key": "\(JWK(newKey.publicKey).thumbprint)"])
    }

    // MARK: Revocation

    /// revokeCert (RFC 8555 §7.6), signed by the account.
    func revoke(certificateDER: [UInt8], reason: ACMERevocationReason? = nil) async throws {
        _ = try requireAccount("revoke a certificate")
        let directory = try await directory()
        guard let revokeCert = directory.revokeCert else {
            throw ACMEError(.invalidRequest, "the ACME server at \(directoryURL.absoluteString) does not offer revocation (no revokeCert in its directory)")
        }
        let endpoint = try url(revokeCert, "the directory's revokeCert")
        let payload = try JSONCoding.encode(RevocationRequest(certificate: Base64URL.encode(certificateDER), reason: reason?.rawValue))
        _ = try await post(endpoint, payload: payload)
        logger.info("revoked a certificate", metadata: ["acme.reason": "\(reason.map { "\($0)" } ?? "unspecified")"])
    }

    // MARK: Requests

    /// How a request is signed: by the account (`kid`, the usual case) or by the key itself (`jwk`).
    enum Signer {
        case account
        case jwk
    }

    /// The directory, fetched once.
    func directory() async throws -> ACMEDirectory {
        if let cachedDirectory { return cachedDirectory }
        let response = try await exchange(.GET, directoryURL) { [http, directoryURL] in
            try await http.send(.GET, directoryURL)
        }
        let directory = try decode(ACMEDirectory.self, from: response, what: "the ACME directory at \(directoryURL.absoluteString)")
        cachedDirectory = directory
        return directory
    }

    /// A signed POST (RFC 8555 §6.2); `payload` nil is a POST-as-GET (§6.3).
    func post(_ endpoint: URL, payload: [UInt8]?, signer: Signer = .account, accept: String? = nil) async throws -> HTTPClient.Response {
        try await exchange(.POST, endpoint) {
            let nonce = try await self.takeNonce()
            let keyIdentifier: JWS.KeyIdentifier
            switch signer {
            case .jwk: keyIdentifier = .jwk(JWK(self.accountKey.publicKey))
            case .account: keyIdentifier = .kid(try self.requireAccount("send \(endpoint.absoluteString)"))
            }
            let body = try JWS.sign(payload: payload, url: endpoint, nonce: nonce, key: self.accountKey, keyIdentifier: keyIdentifier).encoded()
            var headers: HTTPHeaders = ["Content-Type": "application/jose+json"]
            if let accept { headers.add(name: "Accept", value: accept) }
            return try await self.http.send(.POST, endpoint, headers: headers, body: body)
        }
    }

    /// A fresh nonce: the one the last response carried, else one from newNonce (RFC 8555 §7.2).
    private func takeNonce() async throws -> String {
        if let nonce {
            self.nonce = nil
            return nonce
        }
        let endpoint = try url(try await directory().newNonce, "the directory's newNonce")
        let response = try await exchange(.HEAD, endpoint) { [http] in
            try await http.send(.HEAD, endpoint)
        }
        guard let fresh = response.headers.first(name: "Replay-Nonce"), !fresh.isEmpty else {
            throw ACMEError(.unexpectedResponse, "HEAD \(endpoint.absoluteString) answered without a Replay-Nonce header")
        }
        // exchange kept it as the next nonce too; a nonce is good for one request only.
        if self.nonce == fresh { self.nonce = nil }
        return fresh
    }

    /// Sends one request with retries: `send` runs once per attempt (a signed request is signed again with a
    /// fresh nonce). Keeps every `Replay-Nonce`; retries once on `badNonce`; retries 5xx and `rateLimited`
    /// after `Retry-After` or an exponential backoff, within `maxAttempts` and `requestDeadline`.
    private func exchange(_ method: HTTPMethod, _ endpoint: URL, _ send: () async throws -> HTTPClient.Response) async throws -> HTTPClient.Response {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.requestDeadline)
        let what = "\(method) \(endpoint.absoluteString)"
        var attempt = 0
        var retriedBadNonce = false
        while true {
            attempt += 1
            let response: HTTPClient.Response
            do {
                response = try await send()
            } catch let error as ACMEError {
                throw error
            } catch {
                let failure = ACMEError(.transport, "\(what) failed: \(error)", cause: error)
                // Unsigned requests (directory, newNonce) are safe to repeat after a connection failure; a signed
                // POST may have taken effect (a finalize repeated fails with orderNotReady), so it is not repeated.
                let delay = backoff(afterAttempt: attempt)
                guard method != .POST, attempt < configuration.maxAttempts, delay <= clock.now.duration(to: deadline) else { throw failure }
                logger.notice("ACME request failed; retrying", metadata: ["acme.url": "\(endpoint.absoluteString)", "acme.attempt": "\(attempt)", "error": "\(error)"])
                try await Task.sleep(for: delay)
                continue
            }
            if let replayNonce = response.headers.first(name: "Replay-Nonce"), !replayNonce.isEmpty {
                nonce = replayNonce
            }
            if response.status < 400 { return response }

            let problem = Self.problem(in: response)
            let failure = ACMEError(
                .server,
                "\(what) failed: \(response.status) " + (problem.map { "\($0)" } ?? Self.snippet(of: response.body)),
                problem: problem
            )
            // The error response carries a fresh nonce (RFC 8555 §6.5), so the retry needs no newNonce.
            if problem?.type == ACMEProblem.badNonce, !retriedBadNonce {
                retriedBadNonce = true
                logger.debug("the ACME server refused the nonce; retrying with a fresh one", metadata: ["acme.url": "\(endpoint.absoluteString)"])
                continue
            }
            guard response.status >= 500 || problem?.type == ACMEProblem.rateLimited else { throw failure }
            let retryAfter = response.headers.first(name: "Retry-After").flatMap { RetryAfter.parse($0) }
            let delay = retryAfter ?? backoff(afterAttempt: attempt)
            guard attempt < configuration.maxAttempts else {
                throw ACMEError(failure.code, failure.message + " (gave up after \(attempt) attempts)", problem: problem)
            }
            guard delay <= clock.now.duration(to: deadline) else {
                var message = failure.message
                if let retryAfter {
                    message += " (the server asks to retry after \(Self.seconds(retryAfter)) s, past this request's \(Self.seconds(configuration.requestDeadline)) s deadline)"
                } else {
                    message += " (gave up after \(attempt) attempts: the next would start past this request's \(Self.seconds(configuration.requestDeadline)) s deadline)"
                }
                throw ACMEError(failure.code, message, problem: problem)
            }
            logger.notice(
                "ACME request failed; retrying",
                metadata: ["acme.url": "\(endpoint.absoluteString)", "acme.status": "\(response.status)", "acme.attempt": "\(attempt)", "acme.delay": "\(delay)"]
            )
            try await Task.sleep(for: delay)
        }
    }

    private func backoff(afterAttempt attempt: Int) -> Duration {
        let doubled = configuration.initialBackoff * (1 << min(attempt - 1, 20))
        return min(doubled, configuration.maxBackoff)
    }

    // MARK: Helpers

    /// The account key, rebuilt from its scalar (microseconds, next to a network round trip).
    var accountKey: P256.Signing.PrivateKey {
        // The scalar came from a valid key, so this cannot fail.
        try! P256.Signing.PrivateKey(rawRepresentation: accountKeyScalar)
    }

    func requireAccount(_ purpose: String) throws -> URL {
        guard let accountURL else {
            throw ACMEError(.invalidRequest, "cannot \(purpose) before the account is known: call register(contact:termsOfServiceAgreed:) first or pass accountURL")
        }
        return accountURL
    }

    /// The problem document in an error response, if the body is one.
    static func problem(in response: HTTPClient.Response) -> ACMEProblem? {
        try? JSONDecoder().decode(ACMEProblem.self, from: Data(response.body))
    }

    /// The start of a body that is not a problem document, for an error message.
    static func snippet(of body: [UInt8]) -> String {
        let text = String(decoding: body.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "(empty body)" : text
    }

    static func seconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return attoseconds == 0 ? "\(seconds)" : String(format: "%.1f", Double(seconds) + Double(attoseconds) / 1e18)
    }

    func decode<T: Decodable>(_ type: T.Type, from response: HTTPClient.Response, what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(response.body))
        } catch {
            throw ACMEError(.unexpectedResponse, "\(what) is not what RFC 8555 describes: \(error) in \(Self.snippet(of: response.body))", cause: error)
        }
    }

    func url(_ string: String, _ what: String) throws -> URL {
        guard let url = URL(string: string), url.scheme == "https" || url.scheme == "http" else {
            throw ACMEError(.unexpectedResponse, "\(what) is not an HTTP URL: \(string)")
        }
        return url
    }

    func location(of response: HTTPClient.Response, from request: String) throws -> URL {
        guard let location = response.headers.first(name: "Location") else {
            throw ACMEError(.unexpectedResponse, "\(request) answered \(response.status) without a Location header")
        }
        return try url(location, "\(request)'s Location")
    }
}
