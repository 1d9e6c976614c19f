import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// `slipway-certs`: ACME accounts, orders, challenges, certificates, renewal, local CA.
///
/// The service's own API is registered here as its issue lands; until then it serves the
/// shared health and reflection services on its port.
public struct CertsComponent: PlatformComponent {
    public init() {}

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        []
    }
}
