import Crypto
import Foundation
import Logging
import ServiceLifecycle
import SlipwayProtos
import SlipwayRPC

/// Signs a renewal: the certificate (PEM) for a CSR, valid for the lifetime asked.
public typealias IdentitySigner = @Sendable (_ csrDER: [UInt8], _ lifetime: Duration) async throws -> String

/// Renews the service's identity certificate once two thirds of its life have passed, without a
/// restart: the new certificate is written next to the service's state, then served from the next
/// connection on (server and clients). A failed renewal is retried while the old one still lives.
struct IdentityRenewal: Service {
    let identity: ServiceIdentity
    let sign: IdentitySigner
    let renewed: @Sendable () -> Void
    let logger: Logger

    func run() async throws {
        do {
            try await renewForever()
        } catch is CancellationError {
            // Graceful shutdown: nothing to finish.
        }
    }

    private func renewForever() async throws {
        try await cancelWhenGracefulShutdown {
            var failures = 0
            while !Task.isCancelled {
                let certificate = identity.certificate
                let life = max(1, certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore) - PlatformCA.backdating)
                let due = certificate.notValidAfter.addingTimeInterval(-life / 3)
                var wait = due.timeIntervalSinceNow
                if failures > 0 {
                    // Retry soon, but not in a loop: a tenth of what is left, between 1 s and 5 min;
                    // every 5 min once expired (certs refuses an expired certificate: a person must
                    // run `slipway pki init`, as the error log says).
                    let left = certificate.notValidAfter.timeIntervalSinceNow
                    wait = left <= 0 ? 300 : min(300, max(1, left / 10))
                }
                if wait > 0 { try await Task.sleep(for: .milliseconds(Int64(min(wait, 3600) * 1000))) }
                guard identity.certificate.renewalDue() else { continue }
                do {
                    let request = try identity.renewalRequest()
                    let pem = try await sign(request.csr, identity.lifetime)
                    try identity.install(certificatePEM: pem, key: request.key)
                    renewed()
                    // A certificate due at once (the signer's clock far behind) counts as a failure: no busy loop.
                    failures = identity.certificate.renewalDue() ? failures + 1 : 0
                    let next = identity.certificate
                    logger.info(
                        "renewed the platform identity certificate",
                        metadata: ["identity": "\(identity.identity.uri)", "serial": "\(next.serialNumber.hex)", "not-after": "\(next.notValidAfter)"])
                } catch is CancellationError {
                    return
                } catch {
                    failures += 1
                    let expired = identity.certificate.notValidAfter < Date()
                    logger.error(
                        expired
                            ? "the platform identity certificate expired and cannot be renewed: run `slipway pki init` (or re-apply the Secret) and restart"
                            : "cannot renew the platform identity certificate; retrying",
                        metadata: ["identity": "\(identity.identity.uri)", "expires": "\(identity.certificate.notValidAfter)", "error": "\(error)"])
                }
            }
        }
    }

    /// Renewal through slipway-certs, which holds the platform CA's key; the caller is authenticated
    /// by its current certificate. Each renewal opens its own connection (`connect()`), closed
    /// after: a connection kept from before the last renewal would present a certificate that has
    /// since expired, and slipway-certs refuses every call on it.
    static func throughCerts(_ connect: @escaping @Sendable () -> RPCClient) -> IdentitySigner {
        { csr, lifetime in
            let client = connect()
            do {
                let certs = Slipway_Certs_V1_Certs.Client(wrapping: client)
                var request = Slipway_Certs_V1_RenewIdentityRequest()
                request.csrDer = csr
                request.lifetimeSeconds = lifetime.components.seconds
                let pem = try await certs.renewIdentity(request, options: CallOptions(timeout: .seconds(30))).certificatePem
                await client.close()
                return pem
            } catch {
                await client.close()
                throw error
            }
        }
    }
}
