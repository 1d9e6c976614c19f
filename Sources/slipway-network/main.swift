import ArgumentParser
import SlipwayServiceKit
import SlipwayNetwork

/// `slipway-network`: load balancer, routes, domains, DNS checks.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway-network", abstract: "Slipway network service: load balancer, routes, domains, DNS checks.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var network: NetworkOptions

    func run() async throws {
        try await ServiceRunner.run(.network, options: options, component: NetworkComponent(options: network))
    }
}
