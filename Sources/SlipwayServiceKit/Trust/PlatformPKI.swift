import Crypto
import Foundation
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// The platform CA and the identities it issued, on disk under `<data>/pki`:
///
///     ca.crt  ca.key (0600)        the platform CA
///     revoked                      revoked serial numbers, one hex serial per line (`#` comments)
///     identities/<name>/tls.crt    an identity's certificate, tls.key (0600) its key, ca.crt the CA
///
/// The file names are a Kubernetes `kubernetes.io/tls` Secret's keys, so a mounted Secret is an
/// identity directory too. `slipway up` (and `slipway pki init`) prepare it; only slipway-certs
/// reads the CA key afterwards, to renew the services' certificates.
public struct PlatformPKI: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }
    public init(dataDirectory: String) { self.directory = (dataDirectory as NSString).appendingPathComponent("pki") }

    public var caCertificatePath: String { directory + "/ca.crt" }
    public var caKeyPath: String { directory + "/ca.key" }
    public var revocationListPath: String { directory + "/revoked" }
    public func identityDirectory(_ identity: PlatformIdentity) -> String { directory + "/identities/" + identity.name }

    /// The CA with its key.
    public func loadCA() throws -> PlatformCA {
        try Self.loadCA(certificatePath: caCertificatePath, keyPath: caKeyPath)
    }

    public static func loadCA(certificatePath: String, keyPath: String) throws -> PlatformCA {
        guard let certificate = FileManager.default.contents(atPath: certificatePath) else {
            throw TrustError("no platform CA at \(certificatePath): run `slipway pki init` (slipway up does)")
        }
        guard let key = FileManager.default.contents(atPath: keyPath) else {
            throw TrustError("the platform CA's key \(keyPath) is missing or unreadable")
        }
        return try PlatformCA(certificatePEM: String(decoding: certificate, as: UTF8.self), keyPEM: String(decoding: key, as: UTF8.self))
    }

    /// The CA, created when there is none yet (under a lock: two set-ups never make two CAs).
    public func loadOrCreateCA() throws -> PlatformCA {
        try withLock { try loadOrCreateCALocked() }
    }

    private func loadOrCreateCALocked() throws -> PlatformCA {
            if FileManager.default.fileExists(atPath: caCertificatePath) { return try loadCA() }
            guard !FileManager.default.fileExists(atPath: caKeyPath) else {
                // Never replace a CA silently: every identity and Secret made from it would stop working.
                throw TrustError("\(caKeyPath) exists without \(caCertificatePath): restore the certificate, or remove the key to start a new platform CA (every identity is then reissued)")
            }
            let ca = try PlatformCA.create()
            // The key first: a certificate on disk always has its key.
            try AtomicFile.write(try ca.keyPEM, to: caKeyPath, mode: 0o600)
            try AtomicFile.write(ca.certificatePEM, to: caCertificatePath, mode: 0o644)
            return ca
    }

    /// Issues `identity` a new certificate and key into `directory` (its identity directory by default).
    @discardableResult
    public func issue(_ identity: PlatformIdentity, lifetime: Duration = PlatformCA.defaultIdentityLifetime, into directory: String? = nil) throws -> Certificate {
        try withLock { try issueLocked(identity, lifetime: lifetime, into: directory) }
    }

    private func issueLocked(_ identity: PlatformIdentity, lifetime: Duration, into directory: String?) throws -> Certificate {
        let ca = try loadOrCreateCALocked()
        let target = directory ?? identityDirectory(identity)
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let issued = try ca.issue(identity, lifetime: lifetime)
        try AtomicFile.write(issued.key, to: target + "/tls.key", mode: 0o600)
        try AtomicFile.write(issued.certificate, to: target + "/tls.crt", mode: 0o644)
        try AtomicFile.write(ca.certificatePEM, to: target + "/ca.crt", mode: 0o644)
        return try Certificate(pemEncoded: issued.certificate)
    }

    /// The CA, and a certificate for every known identity whose own is missing, unreadable, from
    /// another CA or past two thirds of its life. Returns the identities issued.
    @discardableResult
    public func prepare(lifetime: Duration = PlatformCA.defaultIdentityLifetime, now: Date = Date()) throws -> [PlatformIdentity] {
        try withLock {
            let ca = try loadOrCreateCALocked()
            let verifier = PeerVerifier(ca: ca.certificate, revocationListPath: revocationListPath)
            var issued: [PlatformIdentity] = []
            for identity in PlatformIdentity.known {
                let directory = identityDirectory(identity)
                if let text = FileManager.default.contents(atPath: directory + "/tls.crt"),
                    let keyText = FileManager.default.contents(atPath: directory + "/tls.key"),
                    let certificate = try? Certificate(pemEncoded: String(decoding: text, as: UTF8.self)),
                    let key = try? P256.Signing.PrivateKey(pemRepresentation: String(decoding: keyText, as: UTF8.self)),
                    Certificate.PublicKey(key.publicKey) == certificate.publicKey,
                    !certificate.renewalDue(now: now),
                    let der = try? certificate.derBytes(), verifier.verify(leafDER: der, now: now) == .accepted(identity: identity.uri)
                {
                    continue
                }
                try issueLocked(identity, lifetime: lifetime, into: nil)
                issued.append(identity)
            }
            return issued
        }
    }

    /// Adds a certificate's serial number to the revocation list: every platform server refuses it
    /// from its next handshake on.
    @discardableResult
    public func revoke(_ certificate: Certificate, reason: String = "") throws -> String {
        let serial = certificate.serialNumber.hex
        let identities = certificate.platformIdentityURIs.joined(separator: " ")
        try appendRevocation("\(serial)  # \(identities.isEmpty ? certificate.subject.description : identities) revoked \(ISO8601DateFormatter().string(from: Date()))\(reason.isEmpty ? "" : ": \(reason)")")
        return serial
    }

    /// Revokes every certificate of `identity` issued until now, renewals included (its key was
    /// stolen: the thief may have renewed). Issue it a new one afterwards.
    public func revokeAll(of identity: PlatformIdentity, reason: String = "", now: Date = Date()) throws {
        // Certificates count whole seconds (rounded): the cutoff is the next second, so one issued in
        // this same second is revoked too; new ones must be issued after it.
        try appendRevocation("identity \(identity.uri) \(Int(now.timeIntervalSince1970) + 1)  # revoked \(ISO8601DateFormatter().string(from: now))\(reason.isEmpty ? "" : ": \(reason)")")
    }

    private func appendRevocation(_ line: String) throws {
        try withLock {
            let existing = (try? String(contentsOfFile: revocationListPath, encoding: .utf8)) ?? ""
            try AtomicFile.write(existing + line + "\n", to: revocationListPath, mode: 0o644)
        }
    }

    private func withLock<T>(_ body: () throws -> T) throws -> T {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let fd = open(directory + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw TrustError("cannot open \(directory)/.lock: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw TrustError("cannot lock \(directory)/.lock: \(String(cString: strerror(errno)))") }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }
}

extension Certificate {
    /// The certificate in DER.
    public func derBytes() throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(self)
        return serializer.serializedBytes
    }

    /// Whether two thirds of the certificate's life have passed, or it has expired (its life counted
    /// from issuance, without the backdating for clock skew).
    public func renewalDue(now: Date = Date()) -> Bool {
        let life = max(1, notValidAfter.timeIntervalSince(notValidBefore) - PlatformCA.backdating)
        return notValidAfter.timeIntervalSince(now) <= life / 3
    }
}
