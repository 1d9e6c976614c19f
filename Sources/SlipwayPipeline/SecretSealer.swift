import Crypto
import Foundation
import SlipwayServiceKit

/// Seals a service's secrets for the store: AES-GCM over their JSON (nonce + ciphertext + tag), under
/// a 256-bit key kept in one file of the data directory (0600) that never leaves it.
struct SecretSealer: Sendable {
    /// The key's bytes (`SymmetricKey` is not Sendable).
    private let keyBytes: Data
    private var key: SymmetricKey { SymmetricKey(data: keyBytes) }

    /// Reads the key at `path`, or creates it there: 0600 under a temporary name, flushed, then
    /// renamed and the directory flushed, so a crash never leaves half a key and no other user can
    /// read it even for a moment.
    init(keyFile path: String) throws(PipelineStore.Failure) {
        if let data = FileManager.default.contents(atPath: path) {
            guard data.count == 32 else {
                throw .invalidTransition("\(path) is not a 256-bit key: restore it from a backup or remove the data directory")
            }
            keyBytes = data
            return
        }
        let data = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }
        do {
            try AtomicFile.write(data, to: path)
        } catch {
            throw .invalidTransition(error.description)
        }
        keyBytes = data
    }

    /// The value an organization's TXT record `_slipway-challenge.<domain>` must hold to prove the
    /// domain is its own: an HMAC (under a key derived from this one) of the organization and the
    /// domain. The same for every service of the organization and across restarts; another
    /// organization's differs, so a record one tenant added verifies nothing for another.
    func ownershipToken(organizationID: String, domain: String) -> String {
        let derived = HKDF<SHA256>.deriveKey(inputKeyMaterial: key, info: Data("slipway domain ownership v1".utf8), outputByteCount: 32)
        let mac = HMAC<SHA256>.authenticationCode(for: Data("\(organizationID)\u{0}\(domain.lowercased())".utf8), using: derived)
        return "slipway-verify=" + mac.prefix(16).map { String(format: "%02x", $0) }.joined()
    }

    func seal(_ secrets: [String: String]) throws -> Data {
        try AES.GCM.seal(try JSONEncoder().encode(secrets), using: key).combined!
    }

    /// The secrets; throws for data sealed under another key or changed since.
    func open(_ sealed: Data) throws -> [String: String] {
        try JSONDecoder().decode([String: String].self, from: try AES.GCM.open(AES.GCM.SealedBox(combined: sealed), using: key))
    }
}
