import SlipwayProtos
import SlipwayRPC

/// Where a public workload's traffic is pointed during a rollout, a stop or a delete.
public protocol TrafficSwitch: Sendable {
    /// Sends the workload's traffic to `addresses` (none: to no instance); returns once requests in
    /// flight to the previous ones have finished, or `drain` passed.
    func route(_ workload: Workload, to addresses: [String], drain: Duration) async throws
}

/// The network service's load balancer (`slipway.network.v1.Network/SetBackends`). While the
/// network service cannot be reached (UNAVAILABLE: restarting), the change is tried again, pauses
/// 0.1 s doubling to 1 s, for up to ``unavailableFor``: a rollout waits out a restart of the
/// network service instead of failing (SetBackends sets the whole list: trying again is safe).
public struct NetworkTrafficSwitch: TrafficSwitch {
    let client: Slipway_Network_V1_Network.Client
    let unavailableFor: Duration

    public init(client: RPCClient, unavailableFor: Duration = .seconds(30)) {
        self.client = .init(wrapping: client)
        self.unavailableFor = unavailableFor
    }

    public func route(_ workload: Workload, to addresses: [String], drain: Duration) async throws {
        var key = Slipway_Network_V1_RouteKey()
        key.environmentId = workload.environmentID
        key.serviceId = workload.serviceID
        var request = Slipway_Network_V1_SetBackendsRequest()
        request.key = key
        request.addresses = addresses
        request.drainTimeoutSeconds = UInt32(max(1, min(600, drain.components.seconds)))
        let deadline = ContinuousClock.now + unavailableFor
        var pause = Duration.milliseconds(100)
        while true {
            do {
                _ = try await client.setBackends(request, options: CallOptions(timeout: drain + .seconds(30)))
                return
            } catch let error as RPCError where error.code == .unavailable && ContinuousClock.now + pause < deadline {
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(1))
            }
        }
    }
}
