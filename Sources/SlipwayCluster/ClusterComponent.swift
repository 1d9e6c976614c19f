import ArgumentParser
import Logging
import ServiceLifecycle
import SlipwayProcess
import SlipwayRPC
import SlipwayServiceKit

/// The cluster service's own flags.
public struct ClusterOptions: ParsableArguments, Sendable {
    @Option(help: "Where public workloads' traffic is switched: network (the network service, default) or none.")
    var clusterTraffic: String?

    public init() {}
}

/// `slipway-cluster`: runs releases. Local mode (the only one so far): OCI containers under runc.
public struct ClusterComponent: PlatformComponent {
    let options: ClusterOptions

    public init(options: ClusterOptions = ClusterOptions()) {
        self.options = options
    }

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        var traffic: (any TrafficSwitch)?
        switch options.clusterTraffic ?? "network" {
        case "network":
            let network = configuration.directory[.network]
            traffic = NetworkTrafficSwitch(client: RPCClient(host: network.host, port: network.port))
        case "none":
            traffic = nil
        case let other:
            throw ValidationError("--cluster-traffic must be network or none, got \"\(other)\"")
        }
        // The containers' init processes become ours once runc has started them and exited: their
        // exit status is read (and they are reaped) by the supervisor.
        if !ProcessTree.becomeSubreaper() { logger.warning("cannot become a child subreaper: exit statuses of instances will be unknown") }
        let logs = configuration.directory[.logs]
        let cluster = try LocalCluster(
            directory: try configuration.stateDirectory(), traffic: traffic, logs: RPCClient(host: logs.host, port: logs.port), logger: logger)
        try await cluster.recover()
        router.register(ClusterService(cluster: cluster))
        logger.info("cluster ready", metadata: [
            "driver": "local (runc)", "logs": "\(logs)", "traffic": "\(traffic == nil ? "none" : "network at \(configuration.directory[.network])")",
        ])
        var services: [any Service] = [Supervisor(cluster: cluster)]
        if let applicationLogs = cluster.applicationLogs { services.append(LogShipping(logs: applicationLogs)) }
        return services
    }
}

/// Restarts instances that exit, for the life of the service.
struct Supervisor: Service {
    let cluster: LocalCluster

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await cluster.supervise()
        }
    }
}

/// Ships the instances' output to the logs service, for the life of the service.
struct LogShipping: Service {
    let logs: ApplicationLogs

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await logs.run()
        }
    }
}
