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
        let installer = NetworkInstaller(client: RPCClient(host: network.host, port: network.port))
        let lifetime = try positiveOption(options.certsLocalLifetimeSeconds, "certs-local-lifetime-seconds").map(TimeInterval.init)
        let manager = try CertificateManager(directory: try configuration.stateDirectory(), installer: installer, acme: acme, localLifetime: lifetime, logger: logger)
        router.register(CertsService(manager: manager))
        logger.info("certs ready", metadata: [
            "local_ca": "\(manager.localCA.certificatePath)", "acme": "\(acme?.directory.absoluteString ?? "none")", "network": "\(network)",
        ])
        return [Renewals(manager: manager, interval: .seconds(interval))]
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
