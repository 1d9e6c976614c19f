import ArgumentParser
import SlipwayServiceKit
import SlipwayGateway

/// `slipway-gateway`: the public API, authentication, git webhooks, routing calls to the others.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway-gateway", abstract: "Slipway gateway service: the public API, authentication, git webhooks, routing calls to the others.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var gateway: GatewayOptions

    func run() async throws {
        try await ServiceRunner.run(.gateway, options: options, component: GatewayComponent(options: gateway))
    }
}
