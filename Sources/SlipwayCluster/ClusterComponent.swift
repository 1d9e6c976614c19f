import ArgumentParser
import Logging
import ServiceLifecycle
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
        let cluster = try LocalCluster(directory: try configuration.stateDirectory(), traffic: traffic, logger: logger)
        try await cluster.recover()
        router.register(ClusterService(cluster: cluster))
        logger.info("cluster ready", metadata: [
            "driver": "local (runc)", "traffic": "\(traffic == nil ? "none" : "network at \(configuration.directory[.network])")",
        ])
        return [Supervisor(cluster: cluster)]
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
