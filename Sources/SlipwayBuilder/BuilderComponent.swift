import ArgumentParser
import Foundation
import Logging
import SlipwayIsolation
import SlipwayRegistry
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The builder's limits and where it pushes. Every limit has a flag; defaults are documented in docs/limits.md.
public struct BuilderConfiguration: Sendable {
    /// The registry images are pushed to (and mirrored into) unless a request names another.
    /// Credentials come from a containers-auth.json (--builder-registry-auth-file) or
    /// SLIPWAY_BUILDER_REGISTRY_USERNAME / _PASSWORD, never from flags.
    var registry = RegistryTarget(host: "127.0.0.1:5000", insecure: true)
    /// More registries reached over plain HTTP (base images of local registries).
    var insecureRegistries: [String] = []
    var maxConcurrentBuilds = 2
    var maxQueuedBuilds = 100
    var buildTimeout: Duration = .seconds(1800)
    var fetchTimeout: Duration = .seconds(300)
    var maxRepositoryBytes: Int64 = 2 * 1024 * 1024 * 1024
    /// How RUN steps reach the network (nil: `--builder-isolation off`, chroot on the host's network).
    var runIsolation: BuildIsolation.Network? = .nat
    /// Where the builds' bridge gets its subnet.
    var networkPool = IPv4Network("10.88.0.0/16")!
    /// Which git URLs builds may come from.
    var sources = SourcePolicy()

    public init() {}
}

/// The builder's own flags.
public struct BuilderOptions: ParsableArguments, Sendable {
    @Option(help: "Registry to push images to, HOST:PORT (default 127.0.0.1:5000).") var builderRegistry: String?
    @Flag(inversion: .prefixedNo, help: "Reach the registry over plain HTTP (default: yes for a loopback registry).") var builderRegistryInsecure: Bool?
    @Option(help: "More registries to reach over plain HTTP (repeatable), HOST:PORT.") var builderInsecureRegistry: [String] = []
    @Option(help: "The push registry's credentials: a containers-auth.json with an entry for it (env SLIPWAY_BUILDER_REGISTRY_AUTH_FILE; slipway up writes one).")
    var builderRegistryAuthFile: String?
    @Option(help: "Builds that run at once (default 2); later ones queue.") var builderMaxConcurrent: Int?
    @Option(help: "Builds that may wait for a slot (default 100); beyond, RESOURCE_EXHAUSTED.") var builderMaxQueued: Int?
    @Option(help: "Seconds a build may run (default 1800) unless the request sets its own limit.") var builderTimeout: Int?
    @Option(help: "Seconds a git fetch may take (default 300).") var builderFetchTimeout: Int?
    @Option(help: "Largest repository accepted, in bytes (default 2 GiB).") var builderMaxRepositoryBytes: Int64?
    @Option(help: "RUN steps of Dockerfiles: nat (default: a network namespace of their own with egress through NAT, a user namespace, hardened runc), none (the same without any network), off (chroot on the host's network as root: trusted Dockerfiles only).")
    var builderIsolation: String?
    @Option(help: "The IPv4 pool the builds' bridge takes its subnet from (default 10.88.0.0/16).") var builderNetworkPool: String?
    @Flag(help: "Accept plain http:// git URLs (default: https and ssh only).") var builderAllowHttpSources = false
    @Option(help: "A directory whose git repositories builds may name by path or file:// (repeatable; default: none, no local paths).")
    var builderLocalSources: [String] = []

    public init() {}

    /// The user and password a containers-auth.json holds for `registry`.
    static func login(authFile path: String, registry: String) throws -> (String, String) {
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("--builder-registry-auth-file: cannot read \(path)") }
        guard let credentials = RegistryClient.Credentials(authFile: data, host: registry) else {
            throw ValidationError("--builder-registry-auth-file: \(path) has no \"auths\" entry with user:password for \(registry)")
        }
        return (credentials.username, credentials.password)
    }

    public func configuration(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> BuilderConfiguration {
        var configuration = BuilderConfiguration()
        if let host = builderRegistry {
            guard !host.isEmpty, !host.contains("/") else { throw ValidationError("--builder-registry must be HOST:PORT, got \"\(host)\"") }
            configuration.registry.host = host
            configuration.registry.insecure = host.hasPrefix("127.") || host.hasPrefix("localhost") || host.hasPrefix("[::1]")
        }
        if let insecure = builderRegistryInsecure { configuration.registry.insecure = insecure }
        configuration.registry.username = environment["SLIPWAY_BUILDER_REGISTRY_USERNAME"] ?? ""
        configuration.registry.password = environment["SLIPWAY_BUILDER_REGISTRY_PASSWORD"] ?? ""
        if let path = builderRegistryAuthFile ?? environment["SLIPWAY_BUILDER_REGISTRY_AUTH_FILE"] {
            (configuration.registry.username, configuration.registry.password) = try Self.login(authFile: path, registry: configuration.registry.host)
        }
        configuration.insecureRegistries = builderInsecureRegistry
        if let value = try positiveOption(builderMaxConcurrent, "builder-max-concurrent") { configuration.maxConcurrentBuilds = value }
        if let value = try positiveOption(builderMaxQueued, "builder-max-queued") { configuration.maxQueuedBuilds = value }
        if let value = try positiveOption(builderTimeout, "builder-timeout") { configuration.buildTimeout = .seconds(value) }
        if let value = try positiveOption(builderFetchTimeout, "builder-fetch-timeout") { configuration.fetchTimeout = .seconds(value) }
        if let value = try positiveOption(builderMaxRepositoryBytes, "builder-max-repository-bytes") { configuration.maxRepositoryBytes = value }
        switch builderIsolation ?? "nat" {
        case "off": configuration.runIsolation = nil
        case let value:
            guard let network = BuildIsolation.Network(rawValue: value) else { throw ValidationError("--builder-isolation must be nat, none or off, got \"\(value)\"") }
            configuration.runIsolation = network
        }
        for root in builderLocalSources where !root.hasPrefix("/") {
            throw ValidationError("--builder-local-sources needs an absolute directory, got \"\(root)\"")
        }
        configuration.sources = SourcePolicy(allowHTTP: builderAllowHttpSources, localRoots: builderLocalSources)
        if let pool = builderNetworkPool {
            guard let parsed = IPv4Network(pool: pool) else {
                throw ValidationError("--builder-network-pool must be \(IPv4Network.poolRule), got \"\(pool)\"")
            }
            configuration.networkPool = parsed
        }
        return configuration
    }
}

/// `slipway-builder`: git fetch, image build, push, mirroring, build cache.
public struct BuilderComponent: PlatformComponent {
    let configuration: BuilderConfiguration

    public init(configuration: BuilderConfiguration = BuilderConfiguration()) {
        self.configuration = configuration
    }

    public func setUp(configuration service: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let logsAddress = service.directory[.logs]
        let logs = service.client(for: .logs)
        let directory = try service.stateDirectory()
        let isolation = try await Self.isolation(configuration, directory: directory, logger: logger)
        let builder = try Builder(configuration: configuration, stateDirectory: directory, logsClient: logs, isolation: isolation, logger: logger)
        router.register(BuilderService(builder: builder))
        let runSteps = configuration.runIsolation?.rawValue ?? "off (chroot, host network)"
        logger.info("builder ready", metadata: [
            "registry": "\(configuration.registry.host)", "logs": "\(logsAddress)", "max_concurrent": "\(configuration.maxConcurrentBuilds)", "isolation": "\(runSteps)",
        ])
        return []
    }

    /// The RUN steps' isolation, checked and its rules loaded (the service does not start without it).
    static func isolation(_ configuration: BuilderConfiguration, directory: String, logger: Logger) async throws -> BuildIsolation? {
        guard let network = configuration.runIsolation else {
            logger.warning("build isolation is off: Dockerfile RUN steps run as root on the host's network and reach every local service")
            return nil
        }
        do {
            // RUN steps run in a user namespace whatever their network.
            try InstanceHardening.checkUserNamespaces(alternative: "run builds unisolated (--builder-isolation off)")
        } catch {
            throw ValidationError("cannot isolate builds: \(error.description)")
        }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        try LocalDirectories.searchable(directory + "/containers", owned: 3)
        guard network == .nat else { return BuildIsolation(network: network, networks: nil, executable: executable) }
        var settings = EnvironmentNetworks.Configuration()
        settings.pool = configuration.networkPool
        settings.hostIDBase = BuildIsolation.hostIDBase
        settings.withoutIsolation = "run builds without a network (--builder-isolation none) or unisolated (--builder-isolation off)"
        let networks: EnvironmentNetworks
        do {
            networks = try await EnvironmentNetworks.prepared(directory: directory + "/network", configuration: settings, logger: logger)
        } catch {
            throw ValidationError("cannot isolate builds: \(error.description)")
        }
        return BuildIsolation(network: network, networks: networks, executable: executable)
    }
}
