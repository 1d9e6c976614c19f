import SlipwayProtos
import SlipwayRPC

/// Where a public workload's traffic is pointed during a rollout, a stop or a delete.
public protocol TrafficSwitch: Sendable {
    /// Sends the workload's traffic to `addresses` (none: to no instance); returns once requests in
    /// flight to the previous ones have finished, or `drain` passed.
    func route(_ workload: Workload, to addresses: [String], drain: Duration) async throws
}

/// The network service's load balancer (`slipway.network.v1.Network/SetBackends`).
public struct NetworkTrafficSwitch: TrafficSwitch {
    let client: Slipway_Network_V1_Network.Client

    public init(client: RPCClient) {
        self.client = .init(wrapping: client)
    }

    public func route(_ workload: Workload, to addresses: [String], drain: Duration) async throws {
        var key = Slipway_Network_V1_RouteKey()
        key.environmentId = workload.environmentID
        key.serviceId = workload.serviceID
        var request = Slipway_Network_V1_SetBackendsRequest()
        request.key = key
        request.addresses = addresses
        request.drainTimeoutSeconds = UInt32(max(1, min(600, drain.components.seconds)))
        _ = try await client.setBackends(request, options: CallOptions(timeout: drain + .seconds(30)))
    }
}
