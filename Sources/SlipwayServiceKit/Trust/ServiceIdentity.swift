import Crypto
import Foundation
import SwiftASN1
import NIOSSL
import SlipwayRPC
import Synchronization
import X509

/// A running service's platform identity: its certificate and key (replaced on renewal), the
/// platform CA, and the TLS its server and its clients use with them.
public final class ServiceIdentity: Sendable {
    public let identity: PlatformIdentity
    public let verifier: PeerVerifier
    /// Where renewals are written (the service's state directory: a mounted Secret is read-only).
    private let renewedDirectory: String
    private let caCertificate: NIOSSLCertificate
    private let material: Mutex<Material>

    struct Material: Sendable {
        var certificate: Certificate
        var chain: [NIOSSLCertificate]
        var key: NIOSSLPrivateKey
    }

    /// Where a service finds its identity.
    public struct Paths: Sendable {
        /// `tls.crt` and `tls.key` as issued (`<data>/pki/identities/<name>`, or a mounted Secret).
        public var identityDirectory: String
        /// The platform CA certificate.
        public var caCertificate: String
        /// Revoked serial numbers; nil or a missing file: none.
        public var revocationList: String?
        /// Where this service writes its renewed certificate and key.
        public var renewedDirectory: String

        public init(identityDirectory: String, caCertificate: String, revocationList: String?, renewedDirectory: String) {
            self.identityDirectory = identityDirectory
            self.caCertificate = caCertificate
            self.revocationList = revocationList
            self.renewedDirectory = renewedDirectory
        }
    }

    init(identity: PlatformIdentity, verifier: PeerVerifier, renewedDirectory: String, caCertificate: NIOSSLCertificate, material: Material) {
        self.identity = identity
        self.verifier = verifier
        self.renewedDirectory = renewedDirectory
        self.caCertificate = caCertificate
        self.material = Mutex(material)
    }

    /// Loads the newest valid certificate of `identity`: the one issued, or a renewal of it.
    public static func load(_ identity: PlatformIdentity, paths: Paths, now: Date = Date()) throws -> ServiceIdentity {
        guard let caText = FileManager.default.contents(atPath: paths.caCertificate) else {
            throw TrustError("no platform CA certificate at \(paths.caCertificate): run `slipway pki init --data-dir <data>` (slipway up does), or pass --platform-ca")
        }
        let caPEM = String(decoding: caText, as: UTF8.self)
        let ca = try Certificate(pemEncoded: caPEM)
        let verifier = PeerVerifier(ca: ca, revocationListPath: paths.revocationList)
        var best: Material?
        var problems: [String] = []
        for directory in [paths.identityDirectory, paths.renewedDirectory] {
            guard let certificateText = FileManager.default.contents(atPath: directory + "/tls.crt") else {
                problems.append("\(directory)/tls.crt is missing")
                continue
            }
            do {
                let candidate = try material(certificatePEM: String(decoding: certificateText, as: UTF8.self), keyPath: directory + "/tls.key")
                try check(candidate.certificate, is: identity, issuedBy: ca, now: now)
                if best == nil || candidate.certificate.notValidAfter > best!.certificate.notValidAfter { best = candidate }
            } catch {
                problems.append("\(directory): \(error)")
            }
        }
        guard let best else {
            throw TrustError(
                "no valid certificate for \(identity.uri) (\(problems.joined(separator: "; "))): run `slipway pki init --data-dir <data>` (slipway up does) or pass --identity-dir")
        }
        return ServiceIdentity(
            identity: identity, verifier: verifier, renewedDirectory: paths.renewedDirectory,
            caCertificate: try NIOSSLCertificate(bytes: Array(caText), format: .pem), material: best)
    }

    private static func material(certificatePEM: String, keyPath: String) throws -> Material {
        guard let keyText = FileManager.default.contents(atPath: keyPath) else { throw TrustError("\(keyPath) is missing or unreadable") }
        let certificate = try Certificate(pemEncoded: certificatePEM)
        let key = try NIOSSLPrivateKey(bytes: Array(keyText), format: .pem)
        let swiftKey = try P256.Signing.PrivateKey(pemRepresentation: String(decoding: keyText, as: UTF8.self))
        guard Certificate.PublicKey(swiftKey.publicKey) == certificate.publicKey else {
            throw TrustError("\(keyPath) is not the key of its certificate")
        }
        return Material(certificate: certificate, chain: try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)), key: key)
    }

    private static func check(_ certificate: Certificate, is identity: PlatformIdentity, issuedBy ca: Certificate, now: Date) throws {
        guard certificate.issuer == ca.subject, ca.publicKey.isValidSignature(certificate.signature, for: certificate) else {
            throw TrustError("the certificate was not issued by this platform CA")
        }
        guard certificate.platformIdentityURIs == [identity.uri] else {
            throw TrustError("the certificate names \(certificate.platformIdentityURIs), not \(identity.uri)")
        }
        guard now <= certificate.notValidAfter else { throw TrustError("the certificate expired at \(certificate.notValidAfter)") }
    }

    /// The current certificate.
    public var certificate: Certificate { material.withLock { $0.certificate } }

    /// The server side: this identity's certificate; every client must present a platform certificate.
    public func serverTLS() -> RPCServer.TLS {
        let current = material.withLock { $0 }
        let verifier = self.verifier
        return RPCServer.TLS(
            certificateChain: current.chain, privateKey: current.key, trustRoots: .certificates([caCertificate]),
            verifyClient: { der in verifier.verify(leafDER: der) })
    }

    /// The client side toward `server`: present this identity, trust only the platform CA, and
    /// check that the server's certificate is `server`'s (its DNS name `slipway-<name>`).
    public func clientTLS(to server: PlatformIdentity) -> RPCClient.TLS {
        let current = material.withLock { $0 }
        return RPCClient.TLS(
            trustRoots: .certificates([caCertificate]), certificateChain: current.chain, privateKey: current.key, serverHostname: server.serverName)
    }

    /// A client of a platform service over mutual TLS; a renewed certificate is used from its next connection.
    public func client(for service: ServiceName, at address: ServiceAddress, limits: RPCLimits = RPCLimits()) -> RPCClient {
        RPCClient(host: address.host, port: address.port, tls: { [self] in clientTLS(to: PlatformIdentity(service)) }, limits: limits)
    }

    /// A certificate signing request for a new key: (DER, the key).
    public func renewalRequest() throws -> (csr: [UInt8], key: P256.Signing.PrivateKey) {
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(identity.serverName) },
            privateKey: Certificate.PrivateKey(key), attributes: CertificateSigningRequest.Attributes(), signatureAlgorithm: .ecdsaWithSHA256)
        var serializer = DER.Serializer()
        try serializer.serialize(csr)
        return (serializer.serializedBytes, key)
    }

    /// How long the current certificate lives, without the backdating (a renewal asks for as long).
    public var lifetime: Duration {
        let certificate = self.certificate
        return .seconds(max(1, Int64(certificate.notValidAfter.timeIntervalSince(certificate.notValidBefore) - PlatformCA.backdating)))
    }

    /// Takes a renewed certificate for `key`: checked, written to the renewal directory (key first),
    /// then used by new connections.
    public func install(certificatePEM: String, key: P256.Signing.PrivateKey) throws {
        let certificate = try Certificate(pemEncoded: certificatePEM)
        try Self.check(certificate, is: identity, issuedBy: verifier.ca, now: Date())
        guard certificate.notValidBefore <= Date() + 60 else {
            throw TrustError("the renewed certificate is not valid before \(certificate.notValidBefore): the signer's clock is ahead of ours")
        }
        guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else { throw TrustError("the renewed certificate is not for the requested key") }
        try FileManager.default.createDirectory(atPath: renewedDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try AtomicFile.write(key.pemRepresentation + "\n", to: renewedDirectory + "/tls.key", mode: 0o600)
        try AtomicFile.write(certificatePEM, to: renewedDirectory + "/tls.crt", mode: 0o644)
        let next = Material(
            certificate: certificate, chain: try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)),
            key: try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem))
        material.withLock { $0 = next }
    }
}
