import Crypto
import Foundation
import SlipwayServiceKit
import SwiftASN1
import X509

/// The apps' certificate authority, for names no public CA signs (`*.localhost`, `*.test`,
/// `*.internal`): created once (P-256, 10 years), kept in the certs state directory (key 0600), and
/// trusted by whoever runs `slipway` locally (``trustInstructions``). Because people add it to their
/// trust stores, it is limited to its suffixes twice: X.509 name constraints in its certificate (a
/// verifier refuses anything else it signed), and ``issue(domains:now:)`` refuses other names.
public struct LocalCA: Sendable {
    public let certificatePEM: String
    public let certificatePath: String
    private let keyPEM: String
    /// The DNS suffixes it may sign (each name is a suffix or ends with `.` + one).
    public let suffixes: [String]
    /// Whether an older CA without these constraints was replaced at load.
    public private(set) var replacedUnconstrained = false

    /// Whether this CA signed `certificatePEM`'s leaf (false for a chain of a replaced CA).
    public func signed(_ chainPEM: String) -> Bool {
        guard let end = chainPEM.range(of: "-----END CERTIFICATE-----"),
            let leaf = try? Certificate(pemEncoded: String(chainPEM[..<end.upperBound])),
            let ca = try? Certificate(pemEncoded: certificatePEM)
        else { return false }
        return leaf.issuer == ca.subject && ca.publicKey.isValidSignature(leaf.signature, for: leaf)
    }

    /// The suffixes unless the operator adds others (`--certs-local-ca-suffixes`).
    public static let defaultSuffixes = ["localhost", "test", "internal"]

    /// Lifetime of the certificates it issues: short, like a public CA's, so renewal is routine.
    public var leafLifetime: TimeInterval = 90 * 24 * 3600

    /// Whether the CA may sign `domain` (lower-case; a leading `*.` is a wildcard under it).
    public func permits(_ domain: String) -> Bool {
        let name = domain.hasPrefix("*.") ? String(domain.dropFirst(2)) : domain
        return suffixes.contains { name == $0 || name.hasSuffix("." + $0) }
    }

    public static func loadOrCreate(directory: String, suffixes: [String] = defaultSuffixes) throws -> LocalCA {
        let certificatePath = directory + "/local-ca.crt"
        let keyPath = directory + "/local-ca.key"
        let suffixes = Array(Set(suffixes.map { $0.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")) })).sorted()
        var replaced = false
        if let certificate = FileManager.default.contents(atPath: certificatePath), let key = FileManager.default.contents(atPath: keyPath) {
            let pem = String(decoding: certificate, as: UTF8.self)
            let constraints = (try? Certificate(pemEncoded: pem)).flatMap { try? $0.extensions.nameConstraints }
            if let constraints, Array(constraints.permittedDNSDomains).sorted() == suffixes, constraints.excludedIPRanges.count == 2 {
                return LocalCA(certificatePEM: pem, certificatePath: certificatePath, keyPEM: String(decoding: key, as: UTF8.self), suffixes: suffixes)
            }
            // A CA without these constraints (older, or other suffixes) is not reused: whoever trusts
            // it would trust any name it signs. Its key is destroyed; its certificate is kept beside,
            // to tell which one to remove from trust stores.
            let stamp = Int(Date().timeIntervalSince1970)
            try FileManager.default.moveItem(atPath: certificatePath, toPath: "\(certificatePath).replaced-\(stamp)")
            try FileManager.default.removeItem(atPath: keyPath)
            replaced = true
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
                // Names under its suffixes only, and no IP address at all (0.0.0.0/0 and ::/0 excluded).
                Critical(
                    NameConstraints(
                        permittedDNSDomains: suffixes,
                        excludedIPRanges: [ASN1OctetString(contentBytes: [UInt8](repeating: 0, count: 8)[...]), ASN1OctetString(contentBytes: [UInt8](repeating: 0, count: 32)[...])]))
                SubjectKeyIdentifier(hash: publicKey)
            },
            issuerPrivateKey: Certificate.PrivateKey(key))
        let pem = try certificate.serializeAsPEM().pemString + "\n"
        // The key first: a certificate on disk always has its key.
        try AtomicFile.write(key.pemRepresentation + "\n", to: keyPath, mode: 0o600)
        try AtomicFile.write(pem, to: certificatePath, mode: 0o644)
        var ca = LocalCA(certificatePEM: pem, certificatePath: certificatePath, keyPEM: key.pemRepresentation, suffixes: suffixes)
        ca.replacedUnconstrained = replaced
        return ca
    }

    init(certificatePEM: String, certificatePath: String, keyPEM: String, suffixes: [String]) {
        self.certificatePEM = certificatePEM
        self.certificatePath = certificatePath
        self.keyPEM = keyPEM
        self.suffixes = suffixes
    }

    /// Why the CA will not sign these names; nil when it will.
    public func refusal(for domains: [String]) -> String? {
        let outside = domains.filter { !permits($0) }
        guard !outside.isEmpty else { return nil }
        return "the local CA signs only names under \(suffixes.map { "." + $0 }.joined(separator: ", ")); "
            + "\(outside.joined(separator: ", ")) \(outside.count == 1 ? "is" : "are") not: use a public CA (--certs-acme-directory) or add the suffix (--certs-local-ca-suffixes)"
    }

    /// A server certificate for `domains` with a new key: (chain PEM — leaf then the CA —, key PEM).
    public func issue(domains: [String], now: Date = Date()) throws -> (chain: String, key: String) {
        if let refusal = refusal(for: domains) { throw LocalCAError(description: refusal) }
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

/// A name the local CA may not sign.
public struct LocalCAError: Error, CustomStringConvertible {
    public var description: String
}
