import ArgumentParser
import SlipwayServiceKit
import SlipwayCluster

/// `slipway-cluster`: namespaces, workloads, rollouts, health checks, running status, app log capture.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway-cluster", abstract: "Slipway cluster service: namespaces, workloads, rollouts, health checks, running status, app log capture.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var cluster: ClusterOptions

    func run() async throws {
        try await ServiceRunner.run(.cluster, options: options, component: ClusterComponent(options: cluster))
    }
}
