import ArgumentParser
import Foundation
import SlipwayServiceKit
import X509

/// `slipway pki`: the platform CA and the services' identities (mutual TLS between services).
struct PKICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pki", abstract: "The platform CA and the service identities that authenticate internal calls (mutual TLS).",
        subcommands: [PKIInit.self, PKIIssue.self, PKIRevoke.self, PKIAccess.self, PKIKubernetesSecrets.self])
}

/// The data directory as every command resolves it.
struct DataDirectoryOption: ParsableArguments {
    @Option(help: "Data directory (env SLIPWAY_DATA_DIR, default ./.slipway).") var dataDir: String?

    var path: String {
        var data = dataDir ?? ProcessInfo.processInfo.environment["SLIPWAY_DATA_DIR"] ?? "./.slipway"
        if !data.hasPrefix("/") { data = URL(fileURLWithPath: data).standardizedFileURL.path }
        return data
    }
}

struct PKIInit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create the platform CA if needed and issue every identity whose certificate is missing or due (slipway up does this).")
    @OptionGroup var data: DataDirectoryOption
    @Option(help: "Lifetime of the certificates issued, in seconds (default 30 days).") var lifetimeSeconds: Int64?

    func run() async throws {
        let pki = PlatformPKI(dataDirectory: data.path)
        let issued = try pki.prepare(lifetime: try lifetime(lifetimeSeconds))
        print("platform CA  \(pki.caCertificatePath)")
        print(issued.isEmpty ? "every identity is current" : "issued: \(issued.map(\.name).joined(separator: ", "))")
    }
}

func lifetime(_ seconds: Int64?) throws -> Duration {
    guard let seconds else { return PlatformCA.defaultIdentityLifetime }
    guard seconds > 0 else { throw CLIError.usage("--lifetime-seconds must be greater than 0, got \(seconds)") }
    return .seconds(seconds)
}

struct PKIIssue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "issue",
        abstract: "Issue a certificate for an identity: a service's, or `operator` (every method, for operators' tools such as grpcurl).")
    @Argument(help: "The identity's name: gateway, pipeline, builder, network, cluster, certs, logs or operator.") var name: String
    @OptionGroup var data: DataDirectoryOption
    @Option(help: "Where to write tls.crt, tls.key and ca.crt (default <data-dir>/pki/identities/<name>).") var out: String?
    @Option(help: "Lifetime in seconds (default 30 days).") var lifetimeSeconds: Int64?

    func run() async throws {
        guard PlatformIdentity.isValidName(name) else { throw CLIError.usage("\"\(name)\" is not an identity name (lower-case letters, digits and dashes)") }
        let identity = PlatformIdentity(name: name)
        if !identity.isKnown {
            FileHandle.standardError.write(Data("warning: \(identity.uri) is not a platform identity; platform services will refuse it\n".utf8))
        }
        let pki = PlatformPKI(dataDirectory: data.path)
        let directory = out ?? pki.identityDirectory(identity)
        let certificate = try pki.issue(identity, lifetime: try lifetime(lifetimeSeconds), into: directory)
        print("\(identity.uri)  serial \(certificate.serialNumber.hex)  until \(ISO8601DateFormatter().string(from: certificate.notValidAfter))")
        print("certificate  \(directory)/tls.crt")
        print("key          \(directory)/tls.key")
        print("platform CA  \(directory)/ca.crt")
    }
}

struct PKIRevoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke",
        abstract: "Revoke a platform certificate, or every certificate of an identity issued until now (a stolen key); services refuse it within seconds.")
    @Argument(help: "The certificate (PEM file) to revoke.") var certificate: String?
    @Option(help: "Revoke every certificate of this identity issued until now, renewals included; `slipway pki init` then issues it a new one.")
    var identity: String?
    @OptionGroup var data: DataDirectoryOption
    @Option(help: "Why, for the revocation list.") var reason: String = ""

    func run() async throws {
        let pki = PlatformPKI(dataDirectory: data.path)
        if let identity {
            guard certificate == nil else { throw CLIError.usage("give a certificate or --identity, not both") }
            guard PlatformIdentity.isValidName(identity) else { throw CLIError.usage("\"\(identity)\" is not an identity name") }
            try pki.revokeAll(of: PlatformIdentity(name: identity), reason: reason)
            // Certificates count whole seconds: the next one issued must come after the cutoff second.
            try await Task.sleep(for: .seconds(2))
            print("revoked every certificate of spiffe://slipway/\(identity) issued until now, in \(pki.revocationListPath)")
            print("issue it a new one: slipway pki init --data-dir \(data.path) (then restart slipway-\(identity))")
            return
        }
        guard let certificate else { throw CLIError.usage("give the certificate to revoke, or --identity NAME") }
        guard let text = FileManager.default.contents(atPath: certificate) else { throw CLIError.usage("cannot read \(certificate)") }
        let parsed = try Certificate(pemEncoded: String(decoding: text, as: UTF8.self))
        let serial = try pki.revoke(parsed, reason: reason)
        print("revoked serial \(serial) (\(parsed.platformIdentityURIs.joined(separator: ", "))) in \(pki.revocationListPath)")
    }
}

struct PKIAccess: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "access", abstract: "Print the access table: which identity may call which internal method.")
    @Option(name: [.customShort("o"), .long], help: "Output: text (markdown) or json.") var output: OutputFormat = .text

    func run() async throws {
        guard output == .json else {
            print(AccessTable.markdown(), terminator: "")
            return
        }
        var services: [String: [String: [String]]] = [:]
        for (service, rows) in AccessTable.rows {
            services["slipway-\(service.rawValue)"] = Dictionary(uniqueKeysWithValues: rows.map { ($0.path, $0.callers.map(\.rawValue)) })
        }
        Output(.json).emit([
            "services": services, "any_platform_identity": AccessTable.anyPlatformIdentity, "every_method": [PlatformIdentity.operator.name],
            "identities": PlatformIdentity.known.map(\.name),
        ] as [String: Any])
    }
}

struct PKIKubernetesSecrets: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kubernetes-secrets",
        abstract: "Print the identity Secrets for deploy/kubernetes (kubectl apply -f -): one kubernetes.io/tls Secret per service, and the CA's for slipway-certs.")
    @OptionGroup var data: DataDirectoryOption
    @Option(help: "The platform's namespace.") var namespace = "slipway"

    func run() async throws {
        let pki = PlatformPKI(dataDirectory: data.path)
        try pki.prepare()
        func base64(_ path: String) throws -> String {
            guard let bytes = FileManager.default.contents(atPath: path) else { throw CLIError.failed("cannot read \(path)") }
            return bytes.base64EncodedString()
        }
        func secret(_ name: String, _ data: [(String, String)]) -> String {
            """
            apiVersion: v1
            kind: Secret
            metadata:
              name: \(name)
              namespace: \(namespace)
              labels:
                app.kubernetes.io/part-of: slipway
            type: kubernetes.io/tls
            data:
            \(data.map { "  \($0.0): \($0.1)" }.joined(separator: "\n"))

            """
        }
        var documents: [String] = []
        for service in ServiceName.allCases {
            let directory = pki.identityDirectory(PlatformIdentity(service))
            documents.append(secret("slipway-\(service.rawValue)-identity", [
                ("tls.crt", try base64(directory + "/tls.crt")), ("tls.key", try base64(directory + "/tls.key")), ("ca.crt", try base64(pki.caCertificatePath)),
            ]))
        }
        documents.append(secret("slipway-platform-ca", [("tls.crt", try base64(pki.caCertificatePath)), ("tls.key", try base64(pki.caKeyPath))]))
        print(documents.joined(separator: "---\n"), terminator: "")
    }
}
