import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The certs service's own flags. Defaults are in docs/limits.md and docs/operations.md.
public struct CertsOptions: ParsableArguments, Sendable {
    @Option(help: """
        ACME directory for public names: letsencrypt, letsencrypt-staging, or a URL (pebble: https://127.0.0.1:14000/dir). \
        Default: none (only the local CA issues).
        """)
    var certsAcmeDirectory: String?
    @Option(help: "Contact e-mail of the ACME account.") var certsAcmeEmail: String?
    @Option(help: "PEM file of roots to trust for the ACME server's TLS (pebble's own certificate); default: the system's.")
    var certsAcmeCaFile: String?
    @Option(help: "Seconds between renewal checks (default 3600).") var certsRenewCheckInterval: Int?
    @Option(help: "Lifetime of the local CA's certificates in seconds (default 7776000, 90 days); renewed after two thirds.")
    var certsLocalLifetimeSeconds: Int?
    @Option(help: "More DNS suffixes the local CA may sign, comma-separated (always: localhost, test, internal). Its certificate carries them as X.509 name constraints.")
    var certsLocalCaSuffixes: String?
    @Option(help: "The platform CA's key, to renew the services' identity certificates (env SLIPWAY_PLATFORM_CA_KEY, default <data-dir>/pki/ca.key).")
    var platformCaKey: String?

    public init() {}
}

/// `slipway-certs`: ACME accounts, orders, challenges, certificates, renewal, local CA.
public struct CertsComponent: PlatformComponent {
    let options: CertsOptions

    public init(options: CertsOptions = CertsOptions()) {
        self.options = options
    }

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        var acme: CertificateManager.ACMESettings?
        if let value = options.certsAcmeDirectory {
            let url: URL? = switch value {
            case "letsencrypt": URL(string: "https://acme-v02.api.letsencrypt.org/directory")
            case "letsencrypt-staging": URL(string: "https://acme-staging-v02.api.letsencrypt.org/directory")
            default: URL(string: value)
            }
            guard let url, url.scheme == "https", url.host != nil else {
                throw ValidationError("--certs-acme-directory must be letsencrypt, letsencrypt-staging or an https URL, got \"\(value)\"")
            }
            var settings = CertificateManager.ACMESettings(directory: url)
            if let email = options.certsAcmeEmail { settings.contact = ["mailto:" + email] }
            if let file = options.certsAcmeCaFile {
                guard FileManager.default.isReadableFile(atPath: file) else { throw ValidationError("--certs-acme-ca-file: cannot read \(file)") }
                settings.trustRoots = [file]
            }
            acme = settings
        }
        let interval = try positiveOption(options.certsRenewCheckInterval, "certs-renew-check-interval") ?? 3600
        let network = configuration.directory[.network]
        let installer = NetworkInstaller(client: configuration.client(for: .network))
        let lifetime = try positiveOption(options.certsLocalLifetimeSeconds, "certs-local-lifetime-seconds").map(TimeInterval.init)
        var suffixes = LocalCA.defaultSuffixes
        for suffix in (options.certsLocalCaSuffixes ?? "").split(separator: ",") {
            let name = suffix.trimmingCharacters(in: CharacterSet(charactersIn: " .")).lowercased()
            guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }) else {
                throw ValidationError("--certs-local-ca-suffixes: \"\(suffix)\" is not a DNS suffix")
            }
            suffixes.append(name)
        }
        let manager = try CertificateManager(
            directory: try configuration.stateDirectory(), installer: installer, acme: acme, localLifetime: lifetime, localSuffixes: suffixes, logger: logger)
        let platformCA = try loadPlatformCA(configuration: configuration, logger: logger)
        router.register(CertsService(manager: manager, platformCA: platformCA, logger: logger))
        logger.info("certs ready", metadata: [
            "local_ca": "\(manager.localCA.certificatePath)", "acme": "\(acme?.directory.absoluteString ?? "none")", "network": "\(network)",
        ])
        return [Renewals(manager: manager, interval: .seconds(interval))]
    }
}

extension CertsComponent {
    /// The platform CA with its key, if this slipway-certs holds it (it renews everyone's identity).
    func loadPlatformCA(configuration: ServiceConfiguration, logger: Logger) throws -> PlatformCA? {
        guard let trust = configuration.trust else { return nil }
        let keyPath = options.platformCaKey ?? ProcessInfo.processInfo.environment["SLIPWAY_PLATFORM_CA_KEY"]
            ?? PlatformPKI(dataDirectory: configuration.dataDirectory).caKeyPath
        guard FileManager.default.fileExists(atPath: keyPath) else {
            logger.warning("no platform CA key: the services' identity certificates cannot be renewed here", metadata: ["expected": "\(keyPath)"])
            return nil
        }
        return try PlatformPKI.loadCA(certificatePath: trust.caCertificate, keyPath: keyPath)
    }

    /// slipway-certs renews its own identity with the key it holds.
    public func identitySigner(configuration: ServiceConfiguration, logger: Logger) throws -> IdentitySigner? {
        guard let ca = try loadPlatformCA(configuration: configuration, logger: logger) else { return nil }
        let identity = PlatformIdentity(configuration.service)
        return { csr, lifetime in try ca.issue(identity, csrDER: csr, lifetime: lifetime).serializeAsPEM().pemString + "\n" }
    }
}

/// Renews certificates when they are due and retries failed ones, for the life of the service.
struct Renewals: Service {
    let manager: CertificateManager
    let interval: Duration

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await manager.renewDue()
                try? await Task.sleep(for: interval)
            }
        }
    }
}
