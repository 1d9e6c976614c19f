import Foundation
import SlipwayRPC
import Synchronization
import X509

#if canImport(Glibc)
import Glibc
#endif

/// Decides on a caller's certificate: issued by the platform CA, within its validity, not revoked,
/// and naming a platform identity. Each refusal says which of these failed, for the server's log.
public final class PeerVerifier: Sendable {
    public let ca: Certificate
    private let revocations: RevocationList?

    public init(ca: Certificate, revocationListPath: String?) {
        self.ca = ca
        self.revocations = revocationListPath.map(RevocationList.init)
    }

    /// The verdict on a leaf certificate in DER.
    public func verify(leafDER: [UInt8], now: Date = Date()) -> PeerVerdict {
        let leaf: Certificate
        do {
            leaf = try Certificate(derEncoded: leafDER)
        } catch {
            return .refused(reason: "the client certificate cannot be parsed: \(error)")
        }
        let names = leaf.platformIdentityURIs.joined(separator: ", ")
        let holder = names.isEmpty ? leaf.subject.description : names
        guard leaf.issuer == ca.subject, ca.publicKey.isValidSignature(leaf.signature, for: leaf) else {
            return .refused(reason: "the certificate of \(holder) was not issued by the platform CA (issuer: \(leaf.issuer))")
        }
        guard now >= leaf.notValidBefore else {
            return .refused(reason: "the certificate of \(holder) is not valid before \(leaf.notValidBefore) (check the clocks)")
        }
        guard now <= leaf.notValidAfter else {
            return .refused(reason: "the certificate of \(holder) expired at \(leaf.notValidAfter); renew it (slipway pki init)")
        }
        let serial = leaf.serialNumber.hex
        if let revocations, revocations.contains(serial) {
            return .refused(reason: "the certificate of \(holder) (serial \(serial)) is revoked")
        }
        if let usage = try? leaf.extensions.extendedKeyUsage, !usage.contains(.clientAuth) {
            return .refused(reason: "the certificate of \(holder) is not for TLS clients (no clientAuth extended key usage)")
        }
        let uris = leaf.platformIdentityURIs
        guard uris.count == 1, let identity = PlatformIdentity(uri: uris[0]) else {
            return .refused(reason: "the certificate names \(uris.isEmpty ? "no spiffe://slipway/ identity" : "\(uris.count) SPIFFE identities (\(names)); one is needed")")
        }
        guard identity.isKnown else {
            return .refused(reason: "\(identity.uri) is not a platform identity (known: \(PlatformIdentity.known.map(\.name).joined(separator: ", ")))")
        }
        return .accepted(identity: identity.uri)
    }
}

/// The revoked serial numbers, re-read when the file changes (a stat per handshake).
final class RevocationList: Sendable {
    let path: String
    private let state = Mutex<(stamp: [Int], serials: Set<String>)>(([], []))

    init(path: String) { self.path = path }

    func contains(_ serial: String) -> Bool {
        var info = stat()
        let stamp = stat(path, &info) == 0 ? [Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_size), Int(info.st_ino)] : []
        return state.withLock { state in
            if state.stamp != stamp {
                state.stamp = stamp
                state.serials = Self.parse((try? String(contentsOfFile: path, encoding: .utf8)) ?? "")
            }
            return state.serials.contains(Self.normalized(serial))
        }
    }

    static func parse(_ text: String) -> Set<String> {
        Set(text.split(separator: "\n").compactMap { line in
            let serial = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first?
                .trimmingCharacters(in: .whitespaces).lowercased().replacingOccurrences(of: ":", with: "") ?? ""
            return serial.isEmpty ? nil : normalized(serial)
        })
    }

    /// Hex without leading zeros: DER's sign byte and other tools' padding do not matter.
    static func normalized(_ serial: String) -> String {
        let trimmed = serial.drop { $0 == "0" }
        return trimmed.isEmpty ? "0" : String(trimmed)
    }
}
