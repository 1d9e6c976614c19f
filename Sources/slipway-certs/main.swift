import ArgumentParser
import SlipwayServiceKit
import SlipwayCerts

/// `slipway-certs`: ACME accounts, orders, challenges, certificates, renewal, local CA.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway-certs", abstract: "Slipway certs service: ACME accounts, orders, challenges, certificates, renewal, local CA.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var certs: CertsOptions

    func run() async throws {
        try await ServiceRunner.run(.certs, options: options, component: CertsComponent(options: certs))
    }
}
