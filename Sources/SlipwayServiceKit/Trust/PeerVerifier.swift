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
        if let revocations,
            let revoked = revocations.refusal(serial: serial, identities: leaf.platformIdentityURIs, issued: leaf.notValidBefore + PlatformCA.backdating)
        {
            return .refused(reason: "the certificate of \(holder) \(revoked)")
        }
        if case .isCertificateAuthority? = (try? leaf.extensions.basicConstraints) ?? nil {
            return .refused(reason: "the certificate of \(holder) is a CA's, not a leaf's")
        }
        guard let usage = try? leaf.extensions.extendedKeyUsage, usage.contains(.clientAuth) else {
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

/// What is revoked, re-read when the file changes (a stat per check). Two kinds of lines, `#`
/// starting a comment:
///
///     3f9a…                                        one certificate, by serial (hex)
///     identity spiffe://slipway/gateway 1796000000  every certificate of the identity issued at or
///                                                   before that Unix time (a stolen key: its
///                                                   renewals too); issue a new one afterwards
final class RevocationList: Sendable {
    let path: String
    private let state = Mutex<(stamp: [Int], entries: Entries)>(([], Entries()))

    struct Entries: Sendable, Equatable {
        var serials: Set<String> = []
        /// Identity URI -> certificates issued at or before this time are revoked.
        var issuedBefore: [String: Date] = [:]
    }

    init(path: String) { self.path = path }

    /// Why the certificate is revoked; nil when it is not.
    func refusal(serial: String, identities: [String], issued: Date) -> String? {
        let entries = current()
        if entries.serials.contains(Self.normalized(serial)) { return "(serial \(serial)) is revoked" }
        for identity in identities {
            if let cutoff = entries.issuedBefore[identity], issued <= cutoff {
                return "was issued before \(identity)'s revocation at \(cutoff) (every certificate of it issued until then is revoked)"
            }
        }
        return nil
    }

    func contains(_ serial: String) -> Bool { current().serials.contains(Self.normalized(serial)) }

    private func current() -> Entries {
        var info = stat()
        let stamp = stat(path, &info) == 0 ? [Int(info.st_mtim.tv_sec), Int(info.st_mtim.tv_nsec), Int(info.st_size), Int(info.st_ino)] : []
        return state.withLock { state in
            guard state.stamp != stamp else { return state.entries }
            if stamp.isEmpty {
                state = (stamp, Entries())
            } else if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                state = (stamp, Self.parse(text))
            }
            // Unreadable for now (a file-descriptor limit, a permission): keep what was known and
            // read again at the next check.
            return state.entries
        }
    }

    static func parse(_ text: String) -> Entries {
        var entries = Entries()
        for line in text.split(whereSeparator: \.isNewline) {
            let content = line.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let words = content.split(whereSeparator: \.isWhitespace).map(String.init)
            if words.count == 3, words[0] == "identity", let seconds = Double(words[2]) {
                let cutoff = Date(timeIntervalSince1970: seconds)
                entries.issuedBefore[words[1]] = max(entries.issuedBefore[words[1]] ?? cutoff, cutoff)
            } else if words.count == 1 {
                let serial = words[0].lowercased().replacingOccurrences(of: ":", with: "")
                if !serial.isEmpty, serial.allSatisfy(\.isHexDigit) { entries.serials.insert(normalized(serial)) }
            }
        }
        return entries
    }

    /// Hex without leading zeros: DER's sign byte and other tools' padding do not matter.
    static func normalized(_ serial: String) -> String {
        let trimmed = serial.drop { $0 == "0" }
        return trimmed.isEmpty ? "0" : String(trimmed)
    }
}
