import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The gateway's own flags. Defaults are in the README.
public struct GatewayOptions: ParsableArguments, Sendable {
    @Option(help: "PEM certificate chain for TLS on the gateway's port (ALPN h2 and http/1.1); without it the port is plaintext.")
    var gatewayTlsCert: String?
    @Option(help: "PEM private key of --gateway-tls-cert.") var gatewayTlsKey: String?
    @Option(help: "The gateway's address as git hosts reach it, for webhook URLs (default http[s]://<listen>).")
    var gatewayPublicUrl: String?
    @Option(help: "Requests per second per API token unless the token sets its own (default 50; bursts up to twice that).")
    var gatewayRateLimit: UInt32?
    @Option(help: "Open streams (Watch, TailLogs, event streams) per API token (default 64).") var gatewayMaxStreamsPerToken: Int?
    @Option(help: "Largest webhook payload accepted, in bytes (default 5242880, 5 MiB).") var gatewayMaxWebhookBytes: Int?

    public init() {}
}

/// `slipway-gateway`: the public API (`slipway.api.v1.Slipway`), API tokens, git webhooks and event
/// streams, forwarding to the internal services.
public struct GatewayComponent: PlatformComponent {
    let options: GatewayOptions

    public init(options: GatewayOptions = GatewayOptions()) {
        self.options = options
    }

    public func serverTLS() throws -> RPCServer.TLS? {
        switch (options.gatewayTlsCert, options.gatewayTlsKey) {
        case (nil, nil): return nil
        case (let cert?, let key?):
            do {
                return try RPCServer.TLS(certificatePath: cert, keyPath: key)
            } catch {
                throw ConfigurationError("cannot load the gateway's TLS certificate \(cert) and key \(key): \(error)")
            }
        default: throw ConfigurationError("--gateway-tls-cert and --gateway-tls-key go together")
        }
    }

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let directory = try configuration.stateDirectory()
        let store = try GatewayStore(directory: directory)
        let rate = try positiveOption(options.gatewayRateLimit, "gateway-rate-limit") ?? 50
        let streams = try positiveOption(options.gatewayMaxStreamsPerToken, "gateway-max-streams-per-token") ?? 64
        let maxBody = try positiveOption(options.gatewayMaxWebhookBytes, "gateway-max-webhook-bytes") ?? 5 * 1024 * 1024
        let auth = Authenticator(store: store, defaultRateLimit: rate, maxStreamsPerToken: streams)
        try Bootstrap.ensureAdminToken(store: store, file: directory + "/admin-token", logger: logger)

        let pipelineAddress = configuration.directory[.pipeline]
        let logsAddress = configuration.directory[.logs]
        let pipeline = RPCClient(host: pipelineAddress.host, port: pipelineAddress.port)
        let logs = RPCClient(host: logsAddress.host, port: logsAddress.port)
        let networkAddress = configuration.directory[.network]
        let network = RPCClient(host: networkAddress.host, port: networkAddress.port)
        let scheme = options.gatewayTlsCert == nil ? "http" : "https"
        let publicURL = options.gatewayPublicUrl ?? "\(scheme)://\(configuration.listen.host):\(configuration.listen.port)"
        let webhooks = WebhookReceiver(store: store, pipeline: pipeline, publicURL: publicURL, maxBodyBytes: maxBody, logger: logger)
        let service = GatewayService(auth: auth, ownership: Ownership(pipeline: pipeline), pipeline: pipeline, logs: logs, network: network, webhooks: webhooks, logger: logger)
        router.register(service)
        let frontend = HTTPFrontend(service: service, webhooks: webhooks, logger: logger)
        router.http1 = frontend.initializer
        router.plainHTTP = frontend.plainHandler
        router.plainHTTPMaxBodyBytes = maxBody
        logger.info("gateway ready", metadata: ["webhooks": "\(publicURL)/webhooks/<service id>", "admin-token": "\(directory)/admin-token"])
        return [ResumeDeliveries(webhooks: webhooks)]
    }
}

/// Finishes webhook deliveries recorded but not acted on: at start (the gateway stopped in
/// between), then every minute (the pipeline could not be reached).
struct ResumeDeliveries: Service {
    let webhooks: WebhookReceiver
    static let interval = Duration.seconds(60)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await webhooks.resume()
                try? await Task.sleep(for: Self.interval)
            }
        }
    }
}

/// The platform's admin token: created on first start and written to `<data>/gateway/admin-token`
/// (0600), the one place its secret is shown. A file that no longer matches a valid token (lost,
/// or the token revoked) is replaced by a new token.
enum Bootstrap {
    static func ensureAdminToken(store: GatewayStore, file: String, logger: Logger) throws {
        if let text = try? String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) {
            let auth = Authenticator(store: store, defaultRateLimit: 1, maxStreamsPerToken: 1)
            if let principal = try? auth.authenticate(token: text), principal.isPlatform, principal.role == .admin { return }
        }
        let secret = Authenticator.newSecret()
        try AtomicFile.write(secret.text + "\n", to: file, mode: 0o600)
        try store.insert(GatewayStore.TokenRecord(
            id: secret.id, name: "admin", secretHash: secret.hash, organizationID: "", projectID: "", role: Role.admin.rawValue,
            rateLimit: 0, createdAt: nowMillis(), createdBy: "slipway-gateway"))
        logger.notice("created the platform's admin token", metadata: ["file": "\(file)"])
    }
}
