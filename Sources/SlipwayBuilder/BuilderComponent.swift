import ArgumentParser
import Foundation
import Logging
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

    public init() {}

    /// The user and password a containers-auth.json holds for `registry`.
    static func login(authFile path: String, registry: String) throws -> (String, String) {
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("--builder-registry-auth-file: cannot read \(path)") }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let auths = json["auths"] as? [String: Any],
            let entry = auths[registry] as? [String: Any], let auth = entry["auth"] as? String,
            let decoded = Data(base64Encoded: auth).map({ String(decoding: $0, as: UTF8.self) }), let colon = decoded.firstIndex(of: ":")
        else {
            throw ValidationError("--builder-registry-auth-file: \(path) has no \"auths\" entry with user:password for \(registry)")
        }
        return (String(decoded[..<colon]), String(decoded[decoded.index(after: colon)...]))
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
        let builder = try Builder(configuration: configuration, stateDirectory: try service.stateDirectory(), logsClient: logs, logger: logger)
        router.register(BuilderService(builder: builder))
        logger.info("builder ready", metadata: ["registry": "\(configuration.registry.host)", "logs": "\(logsAddress)", "max_concurrent": "\(configuration.maxConcurrentBuilds)"])
        return []
    }
}
