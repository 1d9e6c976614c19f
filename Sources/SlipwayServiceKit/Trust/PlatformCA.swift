import Crypto
import Foundation
import SwiftASN1
import X509

/// The platform's own CA: it signs the services' identity certificates and nothing else. It is not
/// the apps' local CA (slipway-certs' `LocalCA`), and no browser or system store should trust it.
public struct PlatformCA: Sendable {
    public let certificate: Certificate
    public let certificatePEM: String
    /// The key's raw scalar (P256.Signing.PrivateKey is not Sendable).
    private let keyBytes: [UInt8]
    private var key: P256.Signing.PrivateKey {
        get throws { try P256.Signing.PrivateKey(rawRepresentation: keyBytes) }
    }

    /// Lifetime of an identity certificate unless told otherwise: renewed after two thirds of it.
    public static let defaultIdentityLifetime: Duration = .seconds(30 * 24 * 3600)
    /// Clock skew tolerated between the machines of a cluster: certificates start this much earlier.
    public static let backdating: TimeInterval = 60

    public init(certificatePEM: String, keyPEM: String) throws {
        self.certificate = try Certificate(pemEncoded: certificatePEM)
        self.certificatePEM = certificatePEM
        let key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
        self.keyBytes = Array(key.rawRepresentation)
        guard Certificate.PublicKey(key.publicKey) == certificate.publicKey else {
            throw TrustError("the platform CA's key does not match its certificate")
        }
    }

    public var keyPEM: String {
        get throws { try key.pemRepresentation + "\n" }
    }

    /// A new CA (P-256, ten years).
    public static func create(now: Date = Date()) throws -> PlatformCA {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Slipway")
            CommonName("Slipway platform CA (\(ProcessInfo.processInfo.hostName))")
        }
        let publicKey = Certificate.PublicKey(key.publicKey)
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: now - backdating, notValidAfter: now + 10 * 365 * 24 * 3600,
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: publicKey)
            },
            issuerPrivateKey: Certificate.PrivateKey(key))
        return try PlatformCA(certificatePEM: certificate.serializeAsPEM().pemString + "\n", keyPEM: key.pemRepresentation)
    }

    /// An identity certificate for `identity` over `publicKey`, valid from now for `lifetime`: the
    /// identity as URI SAN, its DNS names, for TLS servers and clients alike.
    public func issue(_ identity: PlatformIdentity, publicKey: Certificate.PublicKey, lifetime: Duration, now: Date = Date()) throws -> Certificate {
        guard lifetime >= .seconds(1) else { throw TrustError("an identity certificate must live at least a second, not \(lifetime)") }
        let seconds = TimeInterval(lifetime.components.seconds)
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
            notValidBefore: now - Self.backdating, notValidAfter: now + seconds,
            issuer: certificate.subject,
            subject: try DistinguishedName {
                OrganizationName("Slipway")
                CommonName(identity.serverName)
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                SubjectAlternativeNames([.uniformResourceIdentifier(identity.uri)] + identity.dnsNames.map { .dnsName($0) })
                SubjectKeyIdentifier(hash: publicKey)
                AuthorityKeyIdentifier(keyIdentifier: SubjectKeyIdentifier(hash: certificate.publicKey).keyIdentifier)
            },
            issuerPrivateKey: Certificate.PrivateKey(try key))
    }

    /// An identity certificate with a new key: (certificate PEM, key PEM).
    public func issue(_ identity: PlatformIdentity, lifetime: Duration, now: Date = Date()) throws -> (certificate: String, key: String) {
        let key = P256.Signing.PrivateKey()
        let certificate = try issue(identity, publicKey: Certificate.PublicKey(key.publicKey), lifetime: lifetime, now: now)
        return (try certificate.serializeAsPEM().pemString + "\n", key.pemRepresentation + "\n")
    }

    /// A renewal: a new certificate for `identity` over the key of a certificate signing request
    /// whose signature proves the requester holds that key.
    public func issue(_ identity: PlatformIdentity, csrDER: [UInt8], lifetime: Duration, now: Date = Date()) throws -> Certificate {
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(derEncoded: csrDER)
        } catch {
            throw TrustError("the certificate signing request is not DER a CSR: \(error)")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw TrustError("the certificate signing request's signature does not match its key")
        }
        return try issue(identity, publicKey: csr.publicKey, lifetime: lifetime, now: now)
    }
}

/// A trust set-up a person must fix; the message says what and how.
public struct TrustError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension Certificate.SerialNumber {
    /// Lower-case hex without separators, as the revocation list keeps it.
    public var hex: String { bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}

extension Certificate {
    /// The platform identity in the certificate's URI SANs, if exactly one `spiffe://slipway/` URI is there.
    public var platformIdentityURIs: [String] {
        guard let names = try? extensions.subjectAlternativeNames else { return [] }
        return names.compactMap { name in
            if case .uniformResourceIdentifier(let uri) = name, uri.hasPrefix("spiffe://") { return uri }
            return nil
        }
    }
}
