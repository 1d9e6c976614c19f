import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import NIOSSL
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit
import Synchronization

/// The gateway's own flags. Defaults are in docs/limits.md and docs/operations.md.
public struct GatewayOptions: ParsableArguments, Sendable {
    @Option(help: "PEM certificate chain for TLS on the gateway's port (ALPN h2 and http/1.1); without it the port is plaintext.")
    var gatewayTlsCert: String?
    @Option(help: "PEM private key of --gateway-tls-cert.") var gatewayTlsKey: String?
    @Option(help: """
        Serve TLS with a certificate for this name from slipway-certs (the local CA for local names, ACME \
        otherwise), renewed by slipway-certs and picked up without a restart. Instead of --gateway-tls-cert/key.
        """)
    var gatewayTlsDomain: String?
    @Option(help: "Seconds between checks for a renewed --gateway-tls-domain certificate (default 3600).")
    var gatewayTlsRefreshSeconds: Int?
    @Option(help: "The gateway's address as git hosts reach it, for webhook URLs (default http[s]://<listen>).")
    var gatewayPublicUrl: String?
    @Option(help: "Requests per second per API token unless the token sets its own (default 50; bursts up to twice that).")
    var gatewayRateLimit: UInt32?
    @Option(help: "Open streams (Watch, TailLogs, event streams) per API token (default 64).") var gatewayMaxStreamsPerToken: Int?
    @Option(help: "Open streams of all of an organization's tokens together (default 256).") var gatewayMaxStreamsPerOrganization: Int?
    @Option(help: "Largest webhook payload accepted, in bytes (default 5242880, 5 MiB).") var gatewayMaxWebhookBytes: Int?
    @Option(help: "Connections the gateway keeps open at once, gRPC and HTTP (default 4096); more are closed when accepted.")
    var gatewayMaxConnections: Int?
    @Option(help: "Refused webhook deliveries and unauthenticated event streams per second per client address (default 5, bursts of 20); beyond, 429.")
    var gatewayRefusalsPerSource: Int?

    public init() {}
}

/// `slipway-gateway`: the public API (`slipway.api.v1.Slipway`), API tokens, git webhooks and event
/// streams, forwarding to the internal services.
public struct GatewayComponent: PlatformComponent {
    let options: GatewayOptions
    /// Where a --gateway-tls-domain certificate comes from, and the server it is reloaded into.
    let tlsRenewal = TLSRenewal()

    public init(options: GatewayOptions = GatewayOptions()) {
        self.options = options
    }

    /// The gateway's port is the public API: its own TLS (or none) and token checks.
    public var servesPublicAPI: Bool { true }

    public var rpcLimits: RPCLimits {
        var limits = RPCLimits()
        if let value = options.gatewayMaxConnections, value > 0 { limits.maxConnections = value }
        return limits
    }

    public func attach(_ server: RPCServer) {
        tlsRenewal.server.withLock { $0 = server }
    }

    public func serverTLS(configuration: ServiceConfiguration, logger: Logger) async throws -> RPCServer.TLS? {
        if let domain = options.gatewayTlsDomain {
            guard options.gatewayTlsCert == nil, options.gatewayTlsKey == nil else {
                throw ConfigurationError("--gateway-tls-domain takes its certificate from slipway-certs: leave out --gateway-tls-cert/--gateway-tls-key")
            }
            let source = CertificateSource(domain: domain, client: .init(wrapping: configuration.client(for: .certs)), logger: logger)
            tlsRenewal.source.withLock { $0 = source }
            return try await source.first()
        }
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
        let organizationStreams = try positiveOption(options.gatewayMaxStreamsPerOrganization, "gateway-max-streams-per-organization") ?? 256
        let auth = Authenticator(store: store, defaultRateLimit: rate, maxStreamsPerToken: streams, maxStreamsPerOrganization: organizationStreams)
        try Bootstrap.ensureAdminToken(store: store, file: directory + "/admin-token", logger: logger)
        try store.pruneRevokedTokens(now: Int64(Date().timeIntervalSince1970 * 1000))

        let pipeline = configuration.client(for: .pipeline)
        let logs = configuration.client(for: .logs)
        let network = configuration.client(for: .network)
        let scheme = options.gatewayTlsCert == nil && options.gatewayTlsDomain == nil ? "http" : "https"
        let publicURL = options.gatewayPublicUrl ?? "\(scheme)://\(configuration.listen.host):\(configuration.listen.port)"
        let webhooks = WebhookReceiver(store: store, pipeline: pipeline, publicURL: publicURL, maxBodyBytes: maxBody, logger: logger)
        let service = GatewayService(auth: auth, ownership: Ownership(pipeline: pipeline), pipeline: .init(wrapping: pipeline), logs: .init(wrapping: logs), network: .init(wrapping: network), webhooks: webhooks, logger: logger)
        router.register(service)
        _ = try positiveOption(options.gatewayMaxConnections, "gateway-max-connections")
        let refusals = try positiveOption(options.gatewayRefusalsPerSource, "gateway-refusals-per-source") ?? 5
        let failures = SourceLimiter(rate: Double(refusals), burst: Double(refusals * 4))
        let frontend = HTTPFrontend(service: service, webhooks: webhooks, failures: failures, logger: logger)
        router.http1 = frontend.initializer
        router.plainHTTP = frontend.plainHandler
        router.plainHTTPMaxBodyBytes = maxBody
        logger.info("gateway ready", metadata: ["webhooks": "\(publicURL)/webhooks/<service id>", "admin-token": "\(directory)/admin-token"])
        var background: [any Service] = [ResumeDeliveries(webhooks: webhooks)]
        if options.gatewayTlsDomain != nil {
            let interval = try positiveOption(options.gatewayTlsRefreshSeconds, "gateway-tls-refresh-seconds") ?? 3600
            background.append(TLSRefresh(renewal: tlsRenewal, interval: .seconds(interval), logger: logger))
        }
        return background
    }
}

/// The gateway's certificate from slipway-certs: issued (or the valid one) at start, then checked
/// every interval and reloaded into the server when slipway-certs has renewed it.
final class TLSRenewal: Sendable {
    let source = Mutex<CertificateSource?>(nil)
    let server = Mutex<RPCServer?>(nil)
}

struct CertificateSource: Sendable {
    typealias Certs = Slipway_Certs_V1_Certs
    let domain: String
    let client: Slipway_Certs_V1_Certs.Client
    let logger: Logger

    /// Issues (or finds) the certificate and returns it with its key; waits up to a minute for
    /// slipway-certs to answer (the platform's services start together).
    func first() async throws -> RPCServer.TLS {
        let deadline = ContinuousClock.now + .seconds(60)
        while true {
            do {
                return try await fetch().tls
            } catch let error as RPCError where error.code == .unavailable && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(500))
            } catch let error as RPCError {
                throw ConfigurationError("no certificate for --gateway-tls-domain \(domain) from slipway-certs: \(error.message)")
            }
        }
    }

    /// The current certificate with its key, and its chain's text (what tells a renewal).
    func fetch() async throws -> (tls: RPCServer.TLS, chain: String) {
        var issue = Slipway_Certs_V1_IssueRequest()
        issue.domains = [domain]
        let certificate = try await client.issue(issue, options: CallOptions(timeout: .seconds(300)))
        guard certificate.state == .certificateIssued else {
            throw RPCError(.failedPrecondition, "the certificate for \(domain) is not issued: \(certificate.reason)")
        }
        var key = Slipway_Certs_V1_CertificateKey()
        key.id = certificate.id
        let pair = try await client.getKeyPair(key)
        let tls = RPCServer.TLS(
            certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(pair.certificateChainPem.utf8)),
            privateKey: try NIOSSLPrivateKey(bytes: Array(pair.privateKeyPem.utf8), format: .pem))
        return (tls, pair.certificateChainPem)
    }
}

struct TLSRefresh: Service {
    let renewal: TLSRenewal
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var served: String?
            while !Task.isCancelled {
                if let source = renewal.source.withLock({ $0 }), let server = renewal.server.withLock({ $0 }) {
                    do {
                        let (tls, chain) = try await source.fetch()
                        if let served, chain != served {
                            try server.reloadTLS(tls)
                            logger.notice("serving the renewed certificate", metadata: ["domain": "\(source.domain)"])
                        }
                        served = chain
                    } catch {
                        logger.warning("cannot check the gateway's certificate", metadata: ["domain": "\(source.domain)", "error": "\(error)"])
                    }
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}

/// Finishes webhook deliveries recorded but not acted on: at start (the gateway stopped in
/// between), then every 2 seconds while some wait (the pipeline could not be reached).
struct ResumeDeliveries: Service {
    let webhooks: WebhookReceiver
    static let interval = Duration.seconds(2)

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
