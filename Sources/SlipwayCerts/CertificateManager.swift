import Crypto
import Foundation
import Logging
import NIOCore
import NIOSSL
import SlipwayHTTP
import SlipwayACME
import SlipwayServiceKit
import SwiftASN1
import X509

/// Where certificates go and where HTTP-01 challenges are served: the load balancer (the network
/// service over RPC, ``NetworkInstaller``).
public protocol CertificateInstaller: Sendable {
    func install(chain: String, key: String) async throws
    func presentChallenge(token: String, keyAuthorization: String) async throws
    func cleanUpChallenge(token: String) async throws
}

/// Every certificate of the platform: issued by the local CA or an ACME CA, installed on the load
/// balancer, renewed two thirds into its lifetime, retried with backoff when an attempt fails.
///
/// `<directory>/certificates.json` holds the records; `<id>.crt`/`<id>.key` (0600) the newest chain and
/// key of each. A record is written PENDING before an attempt starts, so a service killed mid-attempt
/// finds it at restart and tries again.
public actor CertificateManager {
    public enum Issuer: String, Codable, Sendable { case localCA, acme }
    public enum State: String, Codable, Sendable { case pending, issued, failed, revoked }

    public struct Record: Codable, Sendable, Equatable {
        public var id: String
        public var domains: [String]
        public var issuer: Issuer
        public var state: State
        public var reason = ""
        public var notBefore: Double = 0
        public var notAfter: Double = 0
        public var serial = ""
        public var failedAttempts = 0
        public var nextAttempt: Double = 0

        public var renewAt: Double { notBefore + (notAfter - notBefore) * 2 / 3 }
    }

    public struct Failure: Error, CustomStringConvertible {
        public enum Kind: Sendable { case invalid, notFound, unavailable }
        public var kind: Kind
        public var description: String
    }

    public struct ACMESettings: Sendable {
        public var directory: URL
        public var contact: [String] = []
        public var trustRoots: [String] = []
        public init(directory: URL) { self.directory = directory }
    }

    public let localCA: LocalCA
    let directory: String
    let installer: any CertificateInstaller
    let acme: ACMESettings?
    let logger: Logger
    private var records: [String: Record] = [:]
    private var acmeClient: ACMEClient?
    /// One attempt per certificate at a time; a second caller waits for it and gets its outcome.
    private let turns = Turns()
    public var maxDomains = 100
    /// Backoff after failed attempts: 1 min, 2, 4, … up to 6 h.
    public var maxBackoff: TimeInterval = 6 * 3600

    /// Local-CA certificates signed by a CA that was since replaced: reissued at the next renewal pass.
    private var signedByReplacedCA: Set<String> = []

    public init(
        directory: String, installer: any CertificateInstaller, acme: ACMESettings?, localLifetime: TimeInterval? = nil,
        localSuffixes: [String] = LocalCA.defaultSuffixes, logger: Logger
    ) throws {
        self.directory = directory
        self.installer = installer
        self.acme = acme
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        chmod(directory, 0o700)
        var localCA = try LocalCA.loadOrCreate(directory: directory, suffixes: localSuffixes)
        if let localLifetime { localCA.leafLifetime = localLifetime }
        self.localCA = localCA
        if let data = FileManager.default.contents(atPath: directory + "/certificates.json") {
            records = try JSONDecoder().decode([String: Record].self, from: data)
        }
        // Certificates of a CA that was since replaced are reissued at the next renewal pass (found
        // again at every start: a restart in the middle of the pass loses nothing).
        let stale = Set(records.values.filter { $0.issuer == .localCA && $0.state == .issued && !localCA.signed(chainPEMFile(directory, $0.id)) }.map(\.id))
        signedByReplacedCA = stale
        if localCA.replacedUnconstrained || !stale.isEmpty {
            logger.warning(
                "replaced the local CA by one limited to its suffixes (X.509 name constraints); trust the new one",
                metadata: ["local_ca": "\(localCA.certificatePath)", "suffixes": "\(localCA.suffixes.joined(separator: ","))", "reissuing": "\(stale.count)"])
        }
    }

    public static func id(for domains: [String]) -> String {
        let digest = SHA256.hash(data: Data(domains.sorted().joined(separator: ",").utf8))
        return "c-" + digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// Names no public CA signs: the local CA issues them when the caller leaves the choice to us.
    public static func isLocalOnly(_ domain: String) -> Bool {
        let last = domain.split(separator: ".").last.map(String.init) ?? domain
        return ["localhost", "test", "internal", "local", "invalid", "example", "lan", "home"].contains(last)
    }

    public var all: [Record] { records.values.sorted { $0.id < $1.id } }

    public func record(_ id: String) throws -> Record {
        guard let record = records[id] else { throw Failure(kind: .notFound, description: "no certificate \(id)") }
        return record
    }

    /// The private key of a certificate (0600 on disk), empty if there is none.
    public func keyPEM(_ id: String) -> String {
        FileManager.default.contents(atPath: "\(directory)/\(id).key").map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    public func chainPEM(_ id: String) -> String {
        FileManager.default.contents(atPath: "\(directory)/\(id).crt").map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Issues (or returns the valid one for the same names unless `force`), installs it, and returns
    /// the record — FAILED with the reason when the attempt failed.
    public func issue(domains: [String], issuer requested: Issuer?, force: Bool = false) async throws -> Record {
        let domains = Array(Set(domains.map { $0.lowercased() })).sorted()
        guard !domains.isEmpty, domains.count <= maxDomains else {
            throw Failure(kind: .invalid, description: "domains: between 1 and \(maxDomains) names, got \(domains.count)")
        }
        for domain in domains { try Self.validate(domain) }
        let issuer = requested ?? (domains.allSatisfy(localCA.permits) ? .localCA : .acme)
        if issuer == .localCA, let refusal = localCA.refusal(for: domains) {
            throw Failure(kind: .invalid, description: refusal)
        }
        if issuer == .acme {
            if acme == nil, requested == nil, let local = domains.first(where: { Self.isLocalOnly($0) && !localCA.permits($0) }) {
                throw Failure(kind: .invalid, description: localCA.refusal(for: [local])!)
            }
            guard acme != nil else {
                throw Failure(kind: .unavailable, description: "no ACME directory is configured (--certs-acme-directory); \(domains.joined(separator: ", ")) needs a public CA")
            }
            // A private ACME CA (pebble, step-ca) may sign *.test or *.internal when asked explicitly;
            // nothing ACME validates reaches *.localhost.
            if let local = domains.first(where: { $0 == "localhost" || $0.hasSuffix(".localhost") }) {
                throw Failure(kind: .invalid, description: "\(local) cannot be validated by an ACME CA; use the local CA issuer")
            }
        }
        let id = Self.id(for: domains)
        await turns.acquire(id)
        defer { turns.release(id) }
        if !force, let existing = records[id], existing.state == .issued, existing.issuer == issuer, Date().timeIntervalSince1970 < existing.renewAt {
            return existing
        }
        return await attempt(id: id, domains: domains, issuer: issuer)
    }

    /// Renews what is due (two thirds into its lifetime) and retries failures whose backoff passed;
    /// returns how many attempts were made.
    @discardableResult
    public func renewDue(now: Date = Date()) async -> Int {
        let due = records.values.filter { record in
            switch record.state {
            case .issued: return now.timeIntervalSince1970 >= record.renewAt || signedByReplacedCA.contains(record.id)
            case .failed: return now.timeIntervalSince1970 >= record.nextAttempt
            case .pending: return true  // interrupted by a restart
            case .revoked: return false
            }
        }
        for record in due.sorted(by: { $0.id < $1.id }) {
            await turns.acquire(record.id)
            if let current = records[record.id], current == record {
                logger.info("renewing", metadata: ["certificate": "\(record.id)", "domains": "\(record.domains.joined(separator: ","))", "state": "\(record.state)"])
                _ = await attempt(id: record.id, domains: record.domains, issuer: record.issuer)
                signedByReplacedCA.remove(record.id)
            }
            turns.release(record.id)
        }
        return due.count
    }

    public func revoke(id: String, reason: Int) async throws -> Record {
        await turns.acquire(id)
        defer { turns.release(id) }
        guard var record = records[id] else { throw Failure(kind: .notFound, description: "no certificate \(id)") }
        guard record.state == .issued else { throw Failure(kind: .invalid, description: "certificate \(id) is \(record.state), not issued") }
        let pem = chainPEM(id)
        if record.issuer == .acme {
            let leaf = try Certificate(pemEncoded: String(pem[..<pem.range(of: "-----END CERTIFICATE-----")!.upperBound]))
            var serializer = DER.Serializer()
            try serializer.serialize(leaf)
            do {
                try await client().revoke(certificateDER: serializer.serializedBytes, reason: ACMERevocationReason(rawValue: reason))
            } catch {
                throw Failure(kind: .unavailable, description: "the CA did not revoke \(id): \(error)")
            }
        }
        // The local CA publishes no revocation list: revoking marks it, and a reissue replaces it.
        record.state = .revoked
        record.reason = "revoked (reason \(reason))"
        try save(record)
        return record
    }

    // MARK: One attempt

    private func attempt(id: String, domains: [String], issuer: Issuer) async -> Record {
        var record = records[id] ?? Record(id: id, domains: domains, issuer: issuer, state: .pending)
        record.issuer = issuer
        record.domains = domains
        record.state = .pending
        try? save(record)
        do {
            let (chain, key) = try await obtain(domains: domains, issuer: issuer)
            let leaf = try Certificate(pemEncoded: String(chain[..<chain.range(of: "-----END CERTIFICATE-----")!.upperBound]))
            try AtomicFile.write(key, to: "\(directory)/\(id).key", mode: 0o600)
            try AtomicFile.write(chain, to: "\(directory)/\(id).crt", mode: 0o600)
            try await installer.install(chain: chain, key: key)
            record.state = .issued
            record.reason = ""
            record.notBefore = leaf.notValidBefore.timeIntervalSince1970
            record.notAfter = leaf.notValidAfter.timeIntervalSince1970
            record.serial = leaf.serialNumber.bytes.map { String(format: "%02x", $0) }.joined()
            record.failedAttempts = 0
            record.nextAttempt = 0
            logger.info("certificate issued", metadata: [
                "certificate": "\(id)", "domains": "\(domains.joined(separator: ","))", "issuer": "\(issuer.rawValue)", "not_after": "\(leaf.notValidAfter)",
            ])
        } catch {
            record.state = .failed
            record.reason = "\(error)"
            record.failedAttempts += 1
            record.nextAttempt = Date().timeIntervalSince1970 + min(maxBackoff, 60 * pow(2, Double(record.failedAttempts - 1)))
            logger.warning("certificate attempt failed", metadata: ["certificate": "\(id)", "reason": "\(error)", "attempts": "\(record.failedAttempts)"])
        }
        try? save(record)
        return record
    }

    private func obtain(domains: [String], issuer: Issuer) async throws -> (String, String) {
        switch issuer {
        case .localCA:
            return try localCA.issue(domains: domains)
        case .acme:
            let key = P256.Signing.PrivateKey()
            let issued = try await client().issue(domains: domains, certificateKey: key, challengeResponder: LoadBalancerResponder(installer: installer))
            return (issued.pemChain, key.pemRepresentation + "\n")
        }
    }

    /// The ACME account: its key is made once and kept (0600); registering again with it returns
    /// the same account.
    private func client() async throws -> ACMEClient {
        if let acmeClient { return acmeClient }
        guard let acme else { throw Failure(kind: .unavailable, description: "no ACME directory is configured (--certs-acme-directory)") }
        let keyPath = directory + "/acme-account.key"
        let key: P256.Signing.PrivateKey
        if let pem = FileManager.default.contents(atPath: keyPath) {
            key = try P256.Signing.PrivateKey(pemRepresentation: String(decoding: pem, as: UTF8.self))
        } else {
            key = P256.Signing.PrivateKey()
            try AtomicFile.write(key.pemRepresentation + "\n", to: keyPath, mode: 0o600)
        }
        let roots = try acme.trustRoots.flatMap { try NIOSSLCertificate.fromPEMFile($0) }
        let http = HTTPClient(timeout: .seconds(30), trustRoots: roots.isEmpty ? nil : roots)
        let client = ACMEClient(directoryURL: acme.directory, accountKey: key, httpClient: http, logger: logger)
        try await client.register(contact: acme.contact, termsOfServiceAgreed: true)
        acmeClient = client
        return client
    }

    private func save(_ record: Record) throws {
        records[record.id] = record
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try AtomicFile.write(try encoder.encode(records), to: directory + "/certificates.json", mode: 0o600)
    }

    static func validate(_ domain: String) throws {
        var name = Substring(domain)
        if name.hasPrefix("*.") { name = name.dropFirst(2) }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        let valid = domain.utf8.count <= 253 && labels.count >= 1 && labels.allSatisfy { label in
            let bytes = label.utf8
            guard let first = bytes.first, let last = bytes.last, bytes.count <= 63 else { return false }
            return first != 45 && last != 45 && bytes.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
        }
        guard valid else {
            throw Failure(kind: .invalid, description: "\"\(domain)\" is not a lowercase DNS name (labels of a-z, 0-9 and '-')")
        }
    }
}

/// HTTP-01 through the load balancer: the network service serves each key authorization at
/// `/.well-known/acme-challenge/<token>` on every host.
struct LoadBalancerResponder: ACMEChallengeResponder {
    let installer: any CertificateInstaller

    func present(token: String, keyAuthorization: String) async throws {
        try await installer.presentChallenge(token: token, keyAuthorization: keyAuthorization)
    }

    func cleanUp(token: String) async throws {
        try await installer.cleanUpChallenge(token: token)
    }
}

/// The chain file of certificate `id` in `directory` (empty when there is none).
func chainPEMFile(_ directory: String, _ id: String) -> String {
    FileManager.default.contents(atPath: "\(directory)/\(id).crt").map { String(decoding: $0, as: UTF8.self) } ?? ""
}
