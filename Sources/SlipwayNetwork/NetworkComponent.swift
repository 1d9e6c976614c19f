import ArgumentParser
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The network service's own flags. Defaults are in docs/limits.md and docs/operations.md.
public struct NetworkOptions: ParsableArguments, Sendable {
    @Option(help: "Where the load balancer takes HTTP (ACME challenges, redirects to HTTPS), HOST:PORT (default 127.0.0.1:80).")
    var networkHttpListen: String?
    @Option(help: "Where the load balancer takes HTTPS (HTTP/1.1 and HTTP/2), HOST:PORT (default 127.0.0.1:443).")
    var networkHttpsListen: String?
    @Option(help: "Default domains are <service>-<environment>.<base domain> (default localhost).") var networkBaseDomain: String?
    @Option(help: "The nginx binary (default /usr/sbin/nginx).") var networkNginx: String?
    @Option(help: "DNS resolver for custom domain checks, HOST:PORT (default: the first nameserver of /etc/resolv.conf).")
    var networkDnsResolver: String?
    @Option(help: "The load balancer's public addresses, comma-separated: a custom domain with an A/AAAA record on one of them is verified (default: the listen hosts).")
    var networkPublicAddresses: String?
    @Option(help: "Seconds between checks of custom domains that are not verified (default 60).") var networkDomainCheckInterval: Int?
    @Flag(help: "Route custom domains before their DNS check verified them (closed networks and tests; by default a custom domain is routed once verified).")
    var networkRouteUnverifiedDomains = false
    @Option(help: "Seconds old nginx workers may take to finish requests after a change (default 30).") var networkDrainTimeout: Int?
    @Flag(help: "Stop nginx when the network service stops (default: nginx keeps serving; a restarted service adopts it).")
    var networkStopNginx = false

    public init() {}
}

/// `slipway-network`: load balancer (nginx), routes, domains, DNS checks, certificates on the load balancer.
public struct NetworkComponent: PlatformComponent {
    let options: NetworkOptions

    public init(options: NetworkOptions = NetworkOptions()) {
        self.options = options
    }

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let directory = try configuration.stateDirectory() + "/nginx"
        var settings = NginxConfig.Settings(
            directory: directory,
            httpListen: options.networkHttpListen ?? "127.0.0.1:80",
            httpsListen: options.networkHttpsListen ?? "127.0.0.1:443",
            baseDomain: options.networkBaseDomain ?? "localhost")
        for (value, flag) in [(settings.httpListen, "network-http-listen"), (settings.httpsListen, "network-https-listen")] {
            do { try RouteValidation.backend(value) } catch { throw ValidationError("--\(flag): \(error)") }
        }
        if settings.baseDomain != "localhost" {
            do { try RouteValidation.domain(settings.baseDomain, field: "--network-base-domain") } catch { throw ValidationError("\(error)") }
        }
        if let drain = try positiveOption(options.networkDrainTimeout, "network-drain-timeout") { settings.drainTimeoutSeconds = drain }
        settings.routeUnverifiedDomains = options.networkRouteUnverifiedDomains
        let interval = try positiveOption(options.networkDomainCheckInterval, "network-domain-check-interval") ?? 60

        let nginx = Nginx(binary: options.networkNginx ?? "/usr/sbin/nginx", directory: directory)
        guard FileManager.default.isExecutableFile(atPath: nginx.binary) else {
            throw ValidationError("nginx not found at \(nginx.binary): install it (apt-get install nginx-light) or pass --network-nginx")
        }
        let loadBalancer = LoadBalancer(config: NginxConfig(settings: settings), nginx: nginx, logger: logger)
        try await loadBalancer.start()

        var checker: DomainChecker?
        let resolver: SocketAddress?
        if let value = options.networkDnsResolver {
            let parts = value.split(separator: ":")
            guard parts.count == 2, let port = Int(parts[1]), let address = try? SocketAddress(ipAddress: String(parts[0]), port: port) else {
                throw ValidationError("--network-dns-resolver must be IP:PORT, got \"\(value)\"")
            }
            resolver = address
        } else {
            resolver = DNSClient.systemResolver()
        }
        if let resolver {
            let addresses = options.networkPublicAddresses.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
                ?? [settings.httpListen, settings.httpsListen].compactMap { $0.split(separator: ":").dropLast().joined(separator: ":") }
            checker = DomainChecker(dns: DNSClient(resolver: resolver), addresses: Set(addresses))
        } else {
            logger.warning("no DNS resolver: custom domains stay pending (pass --network-dns-resolver)")
        }
        router.register(NetworkService(loadBalancer: loadBalancer, checker: checker))
        logger.info("network ready", metadata: [
            "http": "\(settings.httpListen)", "https": "\(settings.httpsListen)", "base_domain": "\(settings.baseDomain)",
            "resolver": "\(resolver.map { "\($0)" } ?? "none")",
        ])
        return [DomainRechecks(loadBalancer: loadBalancer, checker: checker, interval: .seconds(interval), stopNginx: options.networkStopNginx)]
    }
}

/// Checks custom domains that are not verified yet, every `interval`; stops nginx at shutdown when asked.
struct DomainRechecks: Service {
    let loadBalancer: LoadBalancer
    let checker: DomainChecker?
    let interval: Duration
    let stopNginx: Bool

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                if let checker {
                    let state = await loadBalancer.state
                    for route in state.routes.values {
                        let unverified = route.customDomains.filter { !state.isVerified($0, in: route) || state.isInGrace($0, in: route) }
                        guard !unverified.isEmpty else { continue }
                        var subset = route
                        subset.customDomains = unverified
                        try? await NetworkService.check(subset, checker: checker, loadBalancer: loadBalancer)
                    }
                }
                try? await Task.sleep(for: interval)
            }
        }
        if stopNginx { await loadBalancer.nginx.stop() }
    }
}
