import ArgumentParser
import Foundation

/// Command-line options every service takes. Flags beat environment variables, which beat defaults.
public struct ServiceOptions: ParsableArguments, Sendable {
    @Option(help: "Address to listen on, HOST:PORT (env SLIPWAY_<NAME>_LISTEN).")
    public var listen: String?

    @Option(help: "Data directory (env SLIPWAY_DATA_DIR, default ./.slipway).")
    public var dataDir: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (env SLIPWAY_LOG_LEVEL).")
    public var logLevel: String?

    @Option(help: "This service's platform identity: a directory with tls.crt, tls.key (and ca.crt), as `slipway pki init` or a Kubernetes TLS Secret makes it (env SLIPWAY_IDENTITY_DIR, default <data-dir>/pki/identities/<name>).")
    public var identityDir: String?

    @Option(help: "The platform CA certificate other services' certificates are checked against (env SLIPWAY_PLATFORM_CA, default <identity-dir>/ca.crt).")
    public var platformCA: String?

    @Option(help: "Also serve grpc.health.v1 alone, in plaintext, on HOST:PORT: for probes that cannot present a certificate (kubelet).")
    public var healthListen: String?

    @Option(help: "Where the gateway listens, HOST:PORT.") public var gatewayAddress: String?
    @Option(help: "Where the pipeline service listens, HOST:PORT.") public var pipelineAddress: String?
    @Option(help: "Where the builder service listens, HOST:PORT.") public var builderAddress: String?
    @Option(help: "Where the network service listens, HOST:PORT.") public var networkAddress: String?
    @Option(help: "Where the cluster service listens, HOST:PORT.") public var clusterAddress: String?
    @Option(help: "Where the certs service listens, HOST:PORT.") public var certsAddress: String?
    @Option(help: "Where the logs service listens, HOST:PORT.") public var logsAddress: String?

    public init() {}

    /// Resolves flags, environment and defaults for `service`.
    public func resolve(for service: ServiceName, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ServiceConfiguration {
        var directory = try ServiceDirectory(environment: environment)
        let flags: [(ServiceName, String?)] = [
            (.gateway, gatewayAddress), (.pipeline, pipelineAddress), (.builder, builderAddress), (.network, networkAddress),
            (.cluster, clusterAddress), (.certs, certsAddress), (.logs, logsAddress),
        ]
        for (name, value) in flags {
            guard let value else { continue }
            guard let address = ServiceAddress(parsing: value) else {
                throw ConfigurationError("--\(name.rawValue)-address \(value) is not HOST:PORT")
            }
            directory[name] = address
        }
        if let listen {
            guard let address = ServiceAddress(parsing: listen) else {
                throw ConfigurationError("--listen \(listen) is not HOST:PORT (for example 127.0.0.1:\(service.defaultPort))")
            }
            directory[service] = address
        }
        var dataDirectory = dataDir ?? environment["SLIPWAY_DATA_DIR"] ?? "./.slipway"
        // Absolute from here on: child processes (git, buildah) run in other directories.
        if !dataDirectory.hasPrefix("/") {
            dataDirectory = URL(fileURLWithPath: dataDirectory, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath, isDirectory: true))
                .standardizedFileURL.path
        }
        let levelText = logLevel ?? environment["SLIPWAY_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: levelText) else {
            throw ConfigurationError("log level \"\(levelText)\" is not one of trace, debug, info, notice, warning, error, critical")
        }
        var healthAddress: ServiceAddress?
        if let healthListen {
            guard let address = ServiceAddress(parsing: healthListen) else {
                throw ConfigurationError("--health-listen \(healthListen) is not HOST:PORT (for example 0.0.0.0:\(service.defaultPort + 100))")
            }
            healthAddress = address
        }
        let pki = PlatformPKI(dataDirectory: dataDirectory)
        let identityDirectory = identityDir ?? environment["SLIPWAY_IDENTITY_DIR"] ?? pki.identityDirectory(PlatformIdentity(service))
        let trust = ServiceIdentity.Paths(
            identityDirectory: identityDirectory,
            caCertificate: platformCA ?? environment["SLIPWAY_PLATFORM_CA"] ?? identityDirectory + "/ca.crt",
            revocationList: pki.revocationListPath,
            renewedDirectory: (dataDirectory as NSString).appendingPathComponent(service.rawValue) + "/identity")
        return ServiceConfiguration(
            service: service, listen: directory[service], directory: directory, dataDirectory: dataDirectory, logLevel: level, trust: trust,
            healthListen: healthAddress)
    }
}

import Logging
import SlipwayRPC

/// A service's resolved configuration.
public struct ServiceConfiguration: Sendable {
    public var service: ServiceName
    public var listen: ServiceAddress
    /// Where every service listens, for calls to the others.
    public var directory: ServiceDirectory
    /// The platform's data directory; each service keeps its state under `<dataDirectory>/<service>`.
    public var dataDirectory: String
    public var logLevel: Logger.Level
    /// Where this service's platform identity is.
    public var trust: ServiceIdentity.Paths?
    /// A plaintext health-only listener, if asked for.
    public var healthListen: ServiceAddress?
    /// The identity loaded from `trust` (set by ``ServiceRunner``): calls to other services present
    /// it; nil (tests that assemble a service by hand): plaintext calls.
    public var identity: ServiceIdentity?

    public init(
        service: ServiceName, listen: ServiceAddress, directory: ServiceDirectory, dataDirectory: String, logLevel: Logger.Level,
        trust: ServiceIdentity.Paths? = nil, healthListen: ServiceAddress? = nil, identity: ServiceIdentity? = nil
    ) {
        self.service = service
        self.listen = listen
        self.directory = directory
        self.dataDirectory = dataDirectory
        self.logLevel = logLevel
        self.trust = trust
        self.healthListen = healthListen
        self.identity = identity
    }

    /// A client of another platform service, presenting this service's identity (mutual TLS).
    public func client(for service: ServiceName, limits: RPCLimits = RPCLimits()) -> RPCClient {
        let address = directory[service]
        guard let identity else { return RPCClient(host: address.host, port: address.port, limits: limits) }
        return identity.client(for: service, at: address, limits: limits)
    }

    /// This service's own state directory, created if missing.
    public func stateDirectory() throws -> String {
        let path = (dataDirectory as NSString).appendingPathComponent(service.rawValue)
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw ConfigurationError("cannot create the data directory \(path): \(error.localizedDescription); choose another with --data-dir")
        }
        return path
    }
}

/// A limit given by flag: nil when the flag is absent, an error naming the flag when it is not > 0.
public func positiveOption<T: BinaryInteger>(_ value: T?, _ flag: String) throws -> T? {
    guard let value else { return nil }
    guard value > 0 else { throw ValidationError("--\(flag) must be greater than 0, got \(value)") }
    return value
}
