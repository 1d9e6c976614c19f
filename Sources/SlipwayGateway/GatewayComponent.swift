import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// `slipway-gateway`: the public API, authentication, git webhooks, routing calls to the others.
///
/// The service's own API is registered here as its issue lands; until then it serves the
/// shared health and reflection services on its port.
public struct GatewayComponent: PlatformComponent {
    public init() {}

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        []
    }
}
