import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// `slipway-cluster`: runs releases. Local mode (the only one so far): OCI containers under runc.
public struct ClusterComponent: PlatformComponent {
    public init() {}

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let cluster = try LocalCluster(directory: try configuration.stateDirectory(), logger: logger)
        try await cluster.recover()
        router.register(ClusterService(cluster: cluster))
        logger.info("cluster ready", metadata: ["driver": "local (runc)"])
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
