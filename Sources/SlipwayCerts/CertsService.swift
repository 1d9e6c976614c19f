import Foundation
import Logging
import X509
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit

/// `slipway.certs.v1.Certs` over the certificate manager.
struct CertsService: Slipway_Certs_V1_Certs.ServiceProtocol {

    let manager: CertificateManager
    /// The platform CA with its key, when this service holds it.
    var platformCA: PlatformCA?
    /// Where issued identity certificates are recorded (serials, for revocation).
    var logger: Logger?

    func renewIdentity(request: Slipway_Certs_V1_RenewIdentityRequest, context: ServerContext) async throws -> Slipway_Certs_V1_IdentityCertificate {
        guard let platformCA else {
            throw RPCError(.failedPrecondition, "this slipway-certs does not hold the platform CA key (--platform-ca-key); identities cannot be renewed here")
        }
        guard let caller = context.caller, let identity = PlatformIdentity(uri: caller), identity.isKnown else {
            throw RPCError(.unauthenticated, "identity renewal needs the caller's platform client certificate")
        }
        // Only when the caller's own certificate is due (two thirds of its life): a stolen key cannot
        // mint itself fresh certificates at will (and `slipway pki revoke --identity` cuts them all).
        if let der = context.callerCertificate, let current = try? X509.Certificate(derEncoded: der), !current.renewalDue() {
            let life = current.notValidAfter.timeIntervalSince(current.notValidBefore) - PlatformCA.backdating
            let due = current.notValidAfter.addingTimeInterval(-life / 3)
            throw RPCError(.failedPrecondition, "\(caller)'s certificate is not due for renewal before \(due) (two thirds of its life)")
        }
        guard request.lifetimeSeconds >= 0 else { throw RPCError(.invalidArgument, "lifetime_seconds must not be negative, got \(request.lifetimeSeconds)") }
        let longest = PlatformCA.defaultIdentityLifetime
        let lifetime = request.lifetimeSeconds == 0 ? longest : min(longest, .seconds(request.lifetimeSeconds))
        let certificate: X509.Certificate
        do {
            certificate = try platformCA.issue(identity, csrDER: request.csrDer, lifetime: lifetime)
        } catch let error as TrustError {
            throw RPCError(.invalidArgument, error.description)
        }
        logger?.info(
            "issued a platform identity certificate",
            metadata: ["identity": "\(identity.uri)", "serial": "\(certificate.serialNumber.hex)", "not-after": "\(certificate.notValidAfter)"])
        var response = Slipway_Certs_V1_IdentityCertificate()
        response.certificatePem = try certificate.serializeAsPEM().pemString + "\n"
        response.caPem = platformCA.certificatePEM
        response.notAfterUnixMillis = Int64(certificate.notValidAfter.timeIntervalSince1970 * 1000)
        return response
    }

    func issue(request: Slipway_Certs_V1_IssueRequest, context: ServerContext) async throws -> Slipway_Certs_V1_Certificate {
        let issuer: CertificateManager.Issuer? = switch request.issuer {
        case .auto: nil
        case .localCa: .localCA
        case .acme: .acme
        case .unrecognized(let value): throw RPCError(.invalidArgument, "issuer \(value) is not a known Issuer")
        }
        return await Self.message(try await manager.issue(domains: request.domains, issuer: issuer, force: request.force), manager)
    }

    func getCertificate(request: Slipway_Certs_V1_CertificateKey, context: ServerContext) async throws -> Slipway_Certs_V1_Certificate {
        await Self.message(try await manager.record(request.id), manager)
    }

    func listCertificates(request: Slipway_Certs_V1_ListCertificatesRequest, context: ServerContext) async throws -> Slipway_Certs_V1_ListCertificatesResponse {
        var response = Slipway_Certs_V1_ListCertificatesResponse()
        for record in await manager.all { response.certificates.append(await Self.message(record, manager)) }
        return response
    }

    func renew(request: Slipway_Certs_V1_CertificateKey, context: ServerContext) async throws -> Slipway_Certs_V1_Certificate {
        let existing = try await manager.record(request.id)
        return await Self.message(try await manager.issue(domains: existing.domains, issuer: existing.issuer, force: true), manager)
    }

    func revoke(request: Slipway_Certs_V1_RevokeRequest, context: ServerContext) async throws -> Slipway_Certs_V1_Certificate {
        guard [0, 1, 3, 4, 5].contains(request.reason) else {
            throw RPCError(.invalidArgument, "reason must be an RFC 5280 code ACME accepts: 0, 1, 3, 4 or 5")
        }
        return await Self.message(try await manager.revoke(id: request.id, reason: Int(request.reason)), manager)
    }

    func getKeyPair(request: Slipway_Certs_V1_CertificateKey, context: ServerContext) async throws -> Slipway_Certs_V1_KeyPair {
        let record = try await manager.record(request.id)
        guard record.state == .issued else {
            throw RPCError(.failedPrecondition, "certificate \(request.id) is not issued (\(record.state)): \(record.reason)")
        }
        var pair = Slipway_Certs_V1_KeyPair()
        pair.id = record.id
        pair.certificateChainPem = await manager.chainPEM(record.id)
        pair.privateKeyPem = await manager.keyPEM(record.id)
        pair.notAfterUnixMillis = Int64(record.notAfter * 1000)
        return pair
    }

    func getLocalCA(request: Slipway_Certs_V1_LocalCARequest, context: ServerContext) async throws -> Slipway_Certs_V1_LocalCA {
        var response = Slipway_Certs_V1_LocalCA()
        response.certificatePem = manager.localCA.certificatePEM
        response.path = manager.localCA.certificatePath
        response.trustInstructions = manager.localCA.trustInstructions
        return response
    }

    static func message(_ record: CertificateManager.Record, _ manager: CertificateManager) async -> Slipway_Certs_V1_Certificate {
        var message = Slipway_Certs_V1_Certificate()
        message.id = record.id
        message.domains = record.domains
        message.issuer = record.issuer == .acme ? .acme : .localCa
        message.state = switch record.state {
        case .pending: .certificatePending
        case .issued: .certificateIssued
        case .failed: .certificateFailed
        case .revoked: .certificateRevoked
        }
        message.reason = record.reason
        message.notBeforeUnixMillis = Int64(record.notBefore * 1000)
        message.notAfterUnixMillis = Int64(record.notAfter * 1000)
        message.renewAtUnixMillis = record.notAfter > 0 ? Int64(record.renewAt * 1000) : 0
        message.serial = record.serial
        message.failedAttempts = UInt32(record.failedAttempts)
        message.nextAttemptUnixMillis = Int64(record.nextAttempt * 1000)
        if record.state == .issued || record.state == .revoked { message.certificateChainPem = await manager.chainPEM(record.id) }
        return message
    }
}

extension CertificateManager.Failure: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch kind {
        case .invalid: RPCError(.invalidArgument, description)
        case .notFound: RPCError(.notFound, description)
        case .unavailable: RPCError(.failedPrecondition, description)
        }
    }
}
