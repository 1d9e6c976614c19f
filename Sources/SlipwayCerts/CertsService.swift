import Foundation
import SlipwayProtos
import SlipwayRPC

/// `slipway.certs.v1.Certs` over the certificate manager.
struct CertsService: RPCService {
    typealias API = Slipway_Certs_V1_Certs

    let manager: CertificateManager

    func register(with router: inout RPCRouter) {
        router.addFiles([Slipway_Certs_V1_Certs_proto.descriptor])
        let manager = self.manager
        router.unary(API.Issue.self) { request, _ in
            let issuer: CertificateManager.Issuer? = switch request.issuer {
            case .auto: nil
            case .localCa: .localCA
            case .acme: .acme
            case .unrecognized(let value): throw RPCError(.invalidArgument, "issuer \(value) is not a known Issuer")
            }
            let record = try await Self.mapped { try await manager.issue(domains: request.domains, issuer: issuer, force: request.force) }
            return await Self.message(record, manager)
        }
        router.unary(API.GetCertificate.self) { request, _ in
            await Self.message(try await Self.mapped { try await manager.record(request.id) }, manager)
        }
        router.unary(API.ListCertificates.self) { _, _ in
            var response = Slipway_Certs_V1_ListCertificatesResponse()
            for record in await manager.all { response.certificates.append(await Self.message(record, manager)) }
            return response
        }
        router.unary(API.Renew.self) { request, _ in
            let existing = try await Self.mapped { try await manager.record(request.id) }
            let record = try await Self.mapped { try await manager.issue(domains: existing.domains, issuer: existing.issuer, force: true) }
            return await Self.message(record, manager)
        }
        router.unary(API.Revoke.self) { request, _ in
            guard [0, 1, 3, 4, 5].contains(request.reason) else {
                throw RPCError(.invalidArgument, "reason must be an RFC 5280 code ACME accepts: 0, 1, 3, 4 or 5")
            }
            return await Self.message(try await Self.mapped { try await manager.revoke(id: request.id, reason: Int(request.reason)) }, manager)
        }
        router.unary(API.GetKeyPair.self) { request, _ in
            let record = try await Self.mapped { try await manager.record(request.id) }
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
        router.unary(API.GetLocalCA.self) { _, _ in
            var response = Slipway_Certs_V1_LocalCA()
            response.certificatePem = manager.localCA.certificatePEM
            response.path = manager.localCA.certificatePath
            response.trustInstructions = manager.localCA.trustInstructions
            return response
        }
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

    static func mapped<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let failure as CertificateManager.Failure {
            switch failure.kind {
            case .invalid: throw RPCError(.invalidArgument, failure.description)
            case .notFound: throw RPCError(.notFound, failure.description)
            case .unavailable: throw RPCError(.failedPrecondition, failure.description)
            }
        }
    }
}
