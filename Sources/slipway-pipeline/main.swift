import ArgumentParser
import SlipwayServiceKit
import SlipwayPipeline

/// `slipway-pipeline`: projects, environments, services, deployments, releases, queue, stages, statuses, history, actions.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway-pipeline", abstract: "Slipway pipeline service: projects, environments, services, deployments, releases, queue, stages, statuses, history, actions.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var pipeline: PipelineOptions

    func run() async throws {
        try await ServiceRunner.run(.pipeline, options: options, component: PipelineComponent(configuration: try pipeline.configuration()))
    }
}
