import Crypto
import Foundation
import Logging
import SlipwayHTTP
// SwiftASN1 is X509's own dependency (always built before X509): PEM parsing of the chain.
import SwiftASN1
import X509

extension ACMESession {
    /// The order, its authorizations, finalization with `csr`, and the download (RFC 8555 §7.4, §7.5).
    func issue(domains: [String], csr: [UInt8], publicKey: Certificate.PublicKey, challengeResponder: some ACMEChallengeResponder) async throws -> IssuedCertificate {
        _ = try requireAccount("order a certificate")
        let directory = try await directory()
        let newOrder = try url(directory.newOrder, "the directory's newOrder")
        let payload = try JSONCoding.encode(NewOrderRequest(identifiers: domains.map { ACMEIdentifier(value: $0) }))
        let created = try await post(newOrder, payload: payload)
        let orderURL = try location(of: created, from: "newOrder")
        var order = try decode(ACMEOrder.self, from: created, what: "the new order")
        var logger = self.logger
        logger[metadataKey: "acme.order"] = "\(orderURL.absoluteString)"
        logger.info("ordered a certificate", metadata: ["acme.domains": "\(domains.joined(separator: ","))"])

        // Authorizations pebble and Boulder already hold as valid (authorization reuse) need no challenge.
        try await authorize(order.authorizations, responder: challengeResponder, logger: logger)

        order = try await poll(orderURL, as: ACMEOrder.self, what: "order \(orderURL.absoluteString)") { $0.status != "pending" }
        guard order.status == "ready" || order.status == "processing" || order.status == "valid" else {
            throw orderFailure(order, orderURL, "is \(order.status) after its authorizations were completed")
        }
        if order.status == "ready" {
            let finalize = try url(order.finalize, "the order's finalize")
            let finalized = try await post(finalize, payload: try JSONCoding.encode(FinalizeRequest(csr: Base64URL.encode(csr))))
            order = try decode(ACMEOrder.self, from: finalized, what: "the finalized order")
            logger.debug("finalized the order", metadata: ["acme.status": "\(order.status)"])
        }
        if order.status != "valid" {
            order = try await poll(orderURL, as: ACMEOrder.self, what: "order \(orderURL.absoluteString)") { $0.status == "valid" || $0.status == "invalid" }
        }
        guard order.status == "valid", let certificate = order.certificate else {
            throw orderFailure(order, orderURL, order.status == "valid" ? "is valid but names no certificate" : "is \(order.status)")
        }

        let certificateURL = try url(certificate, "the order's certificate")
        let download = try await post(certificateURL, payload: nil, accept: "application/pem-certificate-chain")
        let pemChain = String(decoding: download.body, as: UTF8.self)
        let chain = try Self.parseChain(pemChain, from: certificateURL)
        guard chain[0].publicKey == publicKey else {
            throw ACMEError(.unexpectedResponse, "the certificate at \(certificateURL.absoluteString) certifies another public key than the one in the CSR")
        }
        let issued = IssuedCertificate(pemChain: pemChain, chain: chain, certificateURL: certificateURL)
        logger.info("certificate issued", metadata: ["acme.certificate": "\(certificateURL.absoluteString)", "acme.notAfter": "\(issued.notAfter)"])
        return issued
    }

    /// The key authorization for `token` (RFC 8555 §8.1): the token, a dot, the account key's RFC 7638 thumbprint.
    func keyAuthorization(for token: String) -> String {
        token + "." + JWK(accountKey.publicKey).thumbprint
    }

    // MARK: Authorizations

    private struct PendingChallenge {
        var authorization: URL
        var domain: String
        var challenge: ACMEChallenge
        var token: String
    }

    /// Completes every authorization of an order: present all http-01 responses, tell the CA to validate
    /// each, wait for each (the CA validates them concurrently), and clean up every token presented.
    private func authorize(_ authorizations: [String], responder: some ACMEChallengeResponder, logger: Logger) async throws {
        var pending: [PendingChallenge] = []
        for string in authorizations {
            let authorizationURL = try url(string, "an order's authorization")
            let response = try await post(authorizationURL, payload: nil)
            let authorization = try decode(ACMEAuthorization.self, from: response, what: "authorization \(string)")
            let domain = authorization.identifier.value
            switch authorization.status {
            case "valid":
                logger.debug("authorization already valid", metadata: ["acme.domain": "\(domain)"])
                continue
            case "pending":
                break
            default:
                throw ACMEError(.challengeFailed, "the authorization for \(domain) is \(authorization.status), not pending: the CA will not validate it again; order anew")
            }
            guard let challenge = authorization.challenges.first(where: { $0.type == "http-01" }) else {
                let offered = authorization.challenges.map(\.type).joined(separator: ", ")
                throw ACMEError(.invalidRequest, "the CA offers no http-01 challenge for \(domain) (only \(offered)); this client answers http-01 only")
            }
            // The responder uses the token as a path segment or file name: only base64url may pass.
            guard let token = challenge.token, !token.isEmpty, token.utf8.allSatisfy(Base64URL.isAlphabet) else {
                throw ACMEError(.unexpectedResponse, "the http-01 challenge for \(domain) has a missing or malformed token: \(challenge.token ?? "none")")
            }
            pending.append(PendingChallenge(authorization: authorizationURL, domain: domain, challenge: challenge, token: token))
        }

        var presented: [String] = []
        do {
            for item in pending {
                // Recorded first: a responder that fails half-way may still have left something to clean up.
                presented.append(item.token)
                try await responder.present(token: item.token, keyAuthorization: keyAuthorization(for: item.token))
            }
            for item in pending where item.challenge.status == "pending" {
                // An empty object says "ready, validate now" (RFC 8555 §7.5.1).
                _ = try await post(try url(item.challenge.url, "the http-01 challenge URL"), payload: Array("{}".utf8))
                logger.debug("asked the CA to validate", metadata: ["acme.domain": "\(item.domain)", "acme.token": "\(item.token)"])
            }
            for item in pending {
                try await waitForValidation(item)
            }
        } catch {
            await cleanUp(presented, responder: responder, logger: logger)
            throw error
        }
        await cleanUp(presented, responder: responder, logger: logger)
    }

    private func waitForValidation(_ item: PendingChallenge) async throws {
        let authorization = try await poll(item.authorization, as: ACMEAuthorization.self, what: "the authorization for \(item.domain)") {
            $0.status != "pending" && $0.status != "processing"
        }
        if authorization.status == "valid" {
            logger.info("domain validated", metadata: ["acme.domain": "\(item.domain)"])
            return
        }
        // What the CA saw sits on the challenge (RFC 8555 §7.1.5); older servers put it on the authorization.
        let challenge = authorization.challenges.first { $0.type == "http-01" }
        let problem = challenge?.error
        var message = "http-01 challenge for \(item.domain) failed"
        if let problem {
            message += ": " + (problem.detail ?? problem.shortType) + " (\(problem.shortType))"
            for subproblem in problem.subproblems ?? [] { message += "; " + subproblem.description }
        } else {
            message += ": the authorization is \(authorization.status) and the CA gave no reason"
        }
        message += "; http://\(item.domain)/.well-known/acme-challenge/\(item.token) (port 80) must answer 200 with the key authorization as its body"
        throw ACMEError(.challengeFailed, message, problem: problem)
    }

    private func cleanUp(_ tokens: [String], responder: some ACMEChallengeResponder, logger: Logger) async {
        for token in tokens {
            do {
                try await responder.cleanUp(token: token)
            } catch {
                // A token left behind is harmless (it authorizes nothing); the issuance result matters more.
                logger.warning("could not clean up an http-01 response", metadata: ["acme.token": "\(token)", "error": "\(error)"])
            }
        }
    }

    // MARK: Polling

    /// POST-as-GETs `resource` until `done` holds, waiting `Retry-After` or a growing interval between polls.
    private func poll<Resource: ACMEStatusResource>(_ resource: URL, as type: Resource.Type, what: String, until done: (Resource) -> Bool) async throws -> Resource {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: configuration.pollTimeout)
        var polls = 0
        while true {
            let response = try await post(resource, payload: nil)
            let value = try decode(type, from: response, what: what)
            if done(value) { return value }
            polls += 1
            let retryAfter = response.headers.first(name: "Retry-After").flatMap { RetryAfter.parse($0) }
            let delay = retryAfter ?? configuration.pollInterval * (1 << min(polls - 1, 3))
            guard delay <= clock.now.duration(to: deadline) else {
                throw ACMEError(.timedOut, "\(what) is still \(value.status) after \(Self.seconds(configuration.pollTimeout)) s")
            }
            try await Task.sleep(for: delay)
        }
    }

    private func orderFailure(_ order: ACMEOrder, _ orderURL: URL, _ state: String) -> ACMEError {
        var message = "order \(orderURL.absoluteString) for \(order.identifiers.map(\.value).joined(separator: ", ")) \(state)"
        if let problem = order.error { message += ": \(problem)" }
        return ACMEError(.orderFailed, message, problem: order.error)
    }

    // MARK: Certificates

    /// The certificates of a PEM chain, in order; fails unless there is at least one.
    static func parseChain(_ pem: String, from source: URL) throws -> [Certificate] {
        do {
            let chain = try PEMDocument.parseMultiple(pemString: pem)
                .filter { $0.discriminator == "CERTIFICATE" }
                .map { try Certificate(derEncoded: $0.derBytes) }
            guard !chain.isEmpty else {
                throw ACMEError(.unexpectedResponse, "\(source.absoluteString) holds no PEM certificate: \(snippet(of: Array(pem.utf8)))")
            }
            return chain
        } catch let error as ACMEError {
            throw error
        } catch {
            throw ACMEError(.unexpectedResponse, "the chain at \(source.absoluteString) does not parse: \(error)", cause: error)
        }
    }
}
