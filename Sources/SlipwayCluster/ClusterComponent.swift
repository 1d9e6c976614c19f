import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// `slipway-cluster`: namespaces, workloads, rollouts, health checks, running status, app log capture.
///
/// The service's own API is registered here as its issue lands; until then it serves the
/// shared health and reflection services on its port.
public struct ClusterComponent: PlatformComponent {
    public init() {}

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        []
    }
}
