import Crypto
import Foundation
import SlipwayServiceKit
import SwiftASN1
import X509

/// The platform's own certificate authority, for names no public CA signs (`*.localhost`, `*.test`,
/// `*.internal`): created once (P-256, 10 years), kept in the certs state directory (key 0600), and
/// trusted by whoever runs `slipway` locally (``trustInstructions``).
public struct LocalCA: Sendable {
    public let certificatePEM: String
    public let certificatePath: String
    private let keyPEM: String

    /// Lifetime of the certificates it issues: short, like a public CA's, so renewal is routine.
    public var leafLifetime: TimeInterval = 90 * 24 * 3600

    public static func loadOrCreate(directory: String) throws -> LocalCA {
        let certificatePath = directory + "/local-ca.crt"
        let keyPath = directory + "/local-ca.key"
        if let certificate = FileManager.default.contents(atPath: certificatePath), let key = FileManager.default.contents(atPath: keyPath) {
            return LocalCA(certificatePEM: String(decoding: certificate, as: UTF8.self), certificatePath: certificatePath, keyPEM: String(decoding: key, as: UTF8.self))
        }
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Slipway")
            CommonName("Slipway local CA (\(ProcessInfo.processInfo.hostName))")
        }
        let now = Date()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now - 3600,
            notValidAfter: now + 10 * 365 * 24 * 3600,
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: publicKey)
            },
            issuerPrivateKey: Certificate.PrivateKey(key))
        let pem = try certificate.serializeAsPEM().pemString + "\n"
        // The key first: a certificate on disk always has its key.
        try AtomicFile.write(key.pemRepresentation + "\n", to: keyPath, mode: 0o600)
        try AtomicFile.write(pem, to: certificatePath, mode: 0o644)
        return LocalCA(certificatePEM: pem, certificatePath: certificatePath, keyPEM: key.pemRepresentation)
    }

    /// A server certificate for `domains` with a new key: (chain PEM — leaf then the CA —, key PEM).
    public func issue(domains: [String], now: Date = Date()) throws -> (chain: String, key: String) {
        let caKey = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
        let ca = try Certificate(pemEncoded: certificatePEM)
        let key = P256.Signing.PrivateKey()
        let publicKey = Certificate.PublicKey(key.publicKey)
        let subject = try DistinguishedName { CommonName(domains[0]) }
        let leaf = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: publicKey,
            notValidBefore: now - 300,
            notValidAfter: now + leafLifetime,
            issuer: ca.subject,
            subject: subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(domains.map { .dnsName($0) })
                SubjectKeyIdentifier(hash: publicKey)
                AuthorityKeyIdentifier(keyIdentifier: SubjectKeyIdentifier(hash: ca.publicKey).keyIdentifier)
            },
            issuerPrivateKey: Certificate.PrivateKey(caKey))
        return (try leaf.serializeAsPEM().pemString + "\n" + certificatePEM, key.pemRepresentation + "\n")
    }

    /// How to make this machine's tools trust the CA.
    public var trustInstructions: String {
        """
        The local CA certificate is \(certificatePath).
        Trust it system-wide (Debian/Ubuntu): cp \(certificatePath) /usr/local/share/ca-certificates/slipway-local-ca.crt && update-ca-certificates
        Or per command: curl --cacert \(certificatePath) https://<service>-<environment>.localhost/
        Browsers: import it as an authority (Firefox: Settings → Certificates → Authorities → Import).
        """
    }
}
