import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SlipwayRPC
import SlipwayRPCServices

/// What one platform service adds to the shared runtime: its RPC methods and background services.
public protocol PlatformComponent: Sendable {
    /// Registers the service's API and returns long-running work to run beside the server.
    func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service]
    /// The RPC limits of the service's server (defaults unless the service needs others).
    var rpcLimits: RPCLimits { get }
    /// TLS for the service's port; nil: plaintext (h2c), the default inside the platform.
    func serverTLS(configuration: ServiceConfiguration, logger: Logger) async throws -> RPCServer.TLS?
    /// The server, once made (a component that renews its certificate reloads it there).
    func attach(_ server: RPCServer)
    /// Whether the port is the platform's public API (the gateway: its own TLS and token checks);
    /// every other service's port takes only mutual TLS from platform identities, per the access table.
    var servesPublicAPI: Bool { get }
    /// How this service's identity certificate is renewed; nil: through slipway-certs.
    func identitySigner(configuration: ServiceConfiguration, logger: Logger) throws -> IdentitySigner?
}

extension PlatformComponent {
    public var rpcLimits: RPCLimits { RPCLimits() }
    public func serverTLS(configuration: ServiceConfiguration, logger: Logger) async throws -> RPCServer.TLS? { nil }
    public func attach(_ server: RPCServer) {}
    public var servesPublicAPI: Bool { false }
    public func identitySigner(configuration: ServiceConfiguration, logger: Logger) throws -> IdentitySigner? { nil }
}

/// Runs one platform service: an RPC server with health and reflection, its component, and
/// graceful shutdown on SIGTERM/SIGINT.
public enum ServiceRunner {
    /// Bootstraps logging, builds the server and runs until a signal arrives.
    public static func run(_ name: ServiceName, options: ServiceOptions, component: some PlatformComponent) async throws {
        let configuration = try options.resolve(for: name)
        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in LogfmtLogHandler(label: label, level: level) }
        let logger = Logger(label: name.executable)
        try await run(configuration: configuration, component: component, logger: logger)
    }

    /// Runs a service with an already resolved configuration (tests start services this way).
    public static func run(configuration: ServiceConfiguration, component: some PlatformComponent, logger: Logger) async throws {
        _ = try configuration.stateDirectory()
        var configuration = configuration
        if let trust = configuration.trust {
            let identity = try ServiceIdentity.load(PlatformIdentity(configuration.service), paths: trust)
            configuration.identity = identity
            logger.info(
                "platform identity", metadata: ["identity": "\(identity.identity.uri)", "serial": "\(identity.certificate.serialNumber.hex)",
                "not-after": "\(identity.certificate.notValidAfter)", "ca": "\(trust.caCertificate)"])
        }
        var router = RPCRouter()
        let background = try await component.setUp(configuration: configuration, logger: logger, router: &router)
        let health = router.registerStandardServices()

        var tls = try await component.serverTLS(configuration: configuration, logger: logger)
        let isInternal = !component.servesPublicAPI
        if isInternal, let identity = configuration.identity {
            // Plain HTTP and HTTP/1.1 do not go through the access policy: an internal port serves neither.
            guard router.plainHTTP == nil, router.http1 == nil else {
                throw ConfigurationError("slipway-\(configuration.service.rawValue) serves plain HTTP on an internal port, which the access table cannot guard")
            }
            router.accessPolicy = AccessTable.policy(for: configuration.service, methods: router.methodPaths)
            tls = identity.serverTLS()
        }
        let server = RPCServer(
            host: configuration.listen.host, port: configuration.listen.port, router: router,
            tls: tls, limits: component.rpcLimits, logger: logger)
        component.attach(server)
        var services: [any Service] = [server] + background + [HealthShutdownMarker(health: health)]
        if let identity = configuration.identity {
            let settled = configuration
            let signer = try component.identitySigner(configuration: configuration, logger: logger)
                ?? IdentityRenewal.throughCerts { settled.client(for: .certs) }
            services.append(
                IdentityRenewal(
                    identity: identity, sign: signer,
                    renewed: {
                        guard isInternal else { return }
                        do { try server.reloadTLS(identity.serverTLS()) } catch { logger.error("cannot serve the renewed certificate", metadata: ["error": "\(error)"]) }
                    }, logger: logger))
        }
        if let address = configuration.healthListen {
            // Health alone, in plaintext, for probes that cannot present a certificate.
            var probes = RPCRouter()
            probes.register(health)
            services.append(RPCServer(host: address.host, port: address.port, router: probes, logger: logger))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { .init(service: $0) },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        logger.info("starting", metadata: ["listen": "\(configuration.listen)", "data-dir": "\(configuration.dataDirectory)"])
        try await group.run()
    }
}

/// Marks every service NOT_SERVING as soon as shutdown begins, so probes stop routing to us.
private struct HealthShutdownMarker: Service {
    let health: HealthService

    func run() async throws {
        try? await gracefulShutdown()
        health.enterShutdown()
    }
}
